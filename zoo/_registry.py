"""The zoo's view of timm's registry: which models are ours, their published weights, and lookups.

Architectures register with timm through ``@register_model`` in ``zoo/models/*.py``; each family's
``default_cfgs = zoo_cfgs({...}, config_args=...)`` adds the published weights of its architectures, read
from the manifest (``zoo.hub.manifest_path``: the package's ``zoo/manifest.json``, or that of
``$ZOO_HUB_DIR``; written by ``zoo publish --register``, see ``zoo.publish``), and records which
constructor arguments a published ``config.json`` may set for them. Nothing about published weights is
written in source code. A manifest that does not validate makes the registry unusable: every lookup raises
its one-line :class:`~zoo.hub.ConfigError`, and ``import zoo`` still works.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import os
from collections.abc import Collection, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import generate_default_cfgs, get_pretrained_cfg, model_entrypoint

from .hub import WEIGHTS_NAME, ConfigError, Weights, WeightsError, manifest_path, parse_source, read_manifest
from .hub_config import check_config, check_model_args, check_pretrained_cfg, load_config
from .io import atomic_write_bytes
from .profile import count_macs

__all__ = [
    'UnknownModelError',
    'base_cfg',
    'check_model_name',
    'config_args',
    'get_weights',
    'list_models',
    'list_weights',
    'model_info',
    'model_task',
    'published',
    'read_config',
    'split_tag',
    'timm_source_fields',
    'zoo_cfgs',
]

_TASK_BY_MODULE = {'hovernet': 'nuclei-segmentation'}
_CONFIG_ARGS: dict[str, frozenset[str]] = {}  # architecture -> arguments a config.json may set
_BASE_CFGS: dict[str, dict] = {}  # architecture -> its own pretrained cfg (before any published tag)


class UnknownModelError(ValueError):
    """A model name the zoo does not know; the message suggests close matches."""


def _read_published() -> tuple[dict[str, Weights], list[WeightsError]]:
    path = manifest_path()
    try:
        return read_manifest(path), []
    except WeightsError as e:
        return {}, [e]
    except OSError as e:  # unreadable (permissions): the registry reports it, import zoo still works
        return {}, [ConfigError(f'{path}: cannot be read ({e.strerror or e})')]


# Published weights by 'architecture.tag', and the manifest's problems (any makes the registry unusable).
_WEIGHTS, _PROBLEMS = _read_published()


def published() -> dict[str, Weights]:
    """Every published ``'architecture.tag'``; raises the manifest's :class:`~zoo.hub.ConfigError` when it
    does not validate (an entry of an architecture the zoo does not have included)."""
    # Lookups come after every family has registered (import zoo imports them all).
    unknown = sorted(k for k in _WEIGHTS if split_tag(k)[0] not in _CONFIG_ARGS)
    if unknown and not _PROBLEMS:
        _PROBLEMS.append(ConfigError(f'{manifest_path()}: {unknown[0]}: the zoo has no such architecture'))
    if _PROBLEMS:
        raise _PROBLEMS[0]
    return _WEIGHTS


def zoo_cfgs(cfgs: Mapping[str, dict], config_args: Collection[str]) -> dict:
    """``generate_default_cfgs`` for a zoo family, plus every published tag of its architectures.

    ``config_args`` are the constructor arguments of the family that a published ``config.json`` may set
    (its architecture, never where weights or code come from). A manifest entry's tag gets the
    architecture's cfg updated with the entry's ``pretrained_cfg`` and the timm source field of its first
    source, so ``timm.list_models(pretrained=True)`` and ``timm.create_model('arch.tag')`` see it. An entry
    whose arguments or cfg do not validate is not registered, and makes the registry unusable.
    """
    timm_cfgs = {}
    for architecture, cfg in cfgs.items():
        _CONFIG_ARGS[architecture] = frozenset(config_args)
        _BASE_CFGS[architecture] = dict(cfg)
        # Published weights come first: the first tag with weights is what pretrained=True loads.
        for key, weights in list_weights(architecture, check=False).items():
            where = f'{manifest_path()}: {key}'
            try:
                check_model_args(weights.model_args, where, architecture, config_args)
                check_pretrained_cfg(weights.pretrained_cfg, where)
            except ConfigError as e:
                _PROBLEMS.append(e)
                continue
            timm_cfgs[key] = dict(cfg, **weights.pretrained_cfg, **timm_source_fields(weights))
        timm_cfgs[architecture] = dict(cfg)
    return generate_default_cfgs(timm_cfgs)


def timm_source_fields(weights: Weights) -> dict:
    """The fields of timm's pretrained cfg that point at the first source of ``weights``."""
    source = parse_source(weights.sources[0])
    if source.kind == 'hf-hub':
        hub_id = source.location + (f'@{source.revision}' if source.revision else '')
        return dict(hf_hub_id=hub_id, hf_hub_filename=WEIGHTS_NAME)
    if source.kind in ('url', 'release'):
        return dict(url=source.url)
    return dict(file=str(source.folder / WEIGHTS_NAME))


def base_cfg(architecture: str) -> dict:
    """The pretrained cfg an architecture is registered with, before any published tag changes it."""
    return dict(_BASE_CFGS[architecture])


def config_args(architecture: str) -> frozenset[str]:
    """The constructor arguments a published ``config.json`` of ``architecture`` may set."""
    return _CONFIG_ARGS.get(architecture, frozenset())


def split_tag(name: str) -> tuple[str, str | None]:
    architecture, _, tag = name.partition('.')
    return architecture, tag or None


def get_weights(name: str) -> Weights | None:
    """Weights for ``'architecture[.tag]'``; a bare architecture resolves to its default tag."""
    architecture, tag = split_tag(name)
    if tag is None:
        cfg = get_pretrained_cfg(architecture)
        tag = cfg.tag if cfg is not None else None
    return published().get(f'{architecture}.{tag}')


def read_config(path: str | Path) -> dict:
    """Read and validate a ``config.json`` (``path`` is the file or its folder) as data of its architecture:
    a name the zoo does not know fails with suggestions, arguments are checked against its family's."""
    path, config = load_config(path)
    architecture = config.get('architecture') if isinstance(config, Mapping) else None
    if isinstance(architecture, str):
        check_model_name(architecture)
    return check_config(config, str(path), config_args(architecture) if isinstance(architecture, str) else ())


@cache
def _zoo_model_names() -> tuple[str, ...]:
    return tuple(n for n in timm.list_models() if model_entrypoint(n).__module__.startswith('zoo.'))


def list_models(pattern: str = '*', pretrained: bool = False, tags: bool = False) -> list[str]:
    """Zoo architectures matching a wildcard ``pattern``; with ``pretrained`` only those with weights,
    and with ``tags`` the ``'architecture.tag'`` names of the published weights instead."""
    weights = published()
    names = [n for n in _zoo_model_names() if fnmatch.fnmatch(n, pattern)]
    if tags:
        return sorted(k for k in weights if split_tag(k)[0] in names)
    if pretrained:
        names = [n for n in names if list_weights(n)]
    return names


def list_weights(architecture: str, check: bool = True) -> dict[str, Weights]:
    weights = published() if check else _WEIGHTS
    return {k: w for k, w in weights.items() if split_tag(k)[0] == architecture}


def model_task(name: str) -> str:
    """``'image-classification'`` or ``'nuclei-segmentation'``."""
    module = model_entrypoint(split_tag(name)[0]).__module__.rsplit('.', 1)[-1]
    return _TASK_BY_MODULE.get(module, 'image-classification')


def check_model_name(name: str) -> str:
    """Return the architecture of ``name`` or raise ``UnknownModelError`` with close matches."""
    published()  # a manifest that does not validate is reported before anything else
    architecture, tag = split_tag(name)
    known = _zoo_model_names()
    if architecture not in known:
        close = difflib.get_close_matches(architecture, known, n=5, cutoff=0.5)
        hint = f' Did you mean: {", ".join(close)}?' if close else ''
        raise UnknownModelError(f'Unknown model {name!r}.{hint} See `zoo list` or zoo.list_models().')
    if tag is not None:
        tags = [t.split('.', 1)[1] for t in timm.list_models(architecture, include_tags=True) if '.' in t]
        if tag not in tags:
            raise UnknownModelError(f'Model {architecture!r} has no tag {tag!r}; known tags: {tags or "none"}')
    return architecture


# ----------------------------------------------------------------------------------------------------------
# Parameters and MACs: a published tag's from its manifest entry; an architecture's (by its arguments)
# counted once on the meta device, then kept in a file, because counting every architecture takes seconds
# (zoo list). The file holds a fingerprint of the code that decides the counts: an edited model is recounted.

_FACTS_FILE = 'architecture_facts.json'


def _facts_path() -> Path:
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'cuttlefish-mrl-zoo' / _FACTS_FILE


@cache
def _code_fingerprint() -> str:
    package = Path(__file__).parent
    digest = hashlib.sha256(f'{torch.__version__} {timm.__version__}'.encode())
    for path in sorted([*package.glob('models/*.py'), *package.glob('layers/*.py'), package / 'profile.py']):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@cache
def _stored_facts() -> dict[str, list]:
    try:
        stored = json.loads(_facts_path().read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(stored, dict) and stored.get('fingerprint') == _code_fingerprint()
    return stored['facts'] if ok and isinstance(stored.get('facts'), dict) else {}


def _architecture_facts(name: str) -> tuple[int, int, tuple]:
    """Parameters, MACs at the default input size, and that size, of ``'architecture[.tag]'`` built as
    ``timm.create_model(name)`` builds it (a tag with its manifest entry's arguments)."""
    architecture, tag = split_tag(name)
    weights = get_weights(name) if tag else None
    if weights is not None and weights.num_params is not None and weights.macs is not None:
        return weights.num_params, weights.macs, tuple(get_pretrained_cfg(name).input_size)
    key = json.dumps([architecture, weights.model_args if weights else {}], sort_keys=True)
    facts = _stored_facts().get(key)
    if not (isinstance(facts, list) and len(facts) == 3):
        with torch.device('meta'):  # exact counts without allocating any weights
            model = timm.create_model(name).eval()
        input_size = list(model.pretrained_cfg['input_size'])
        facts = [sum(p.numel() for p in model.parameters()), count_macs(model, input_size), input_size]
        _stored_facts()[key] = facts
        document = dict(fingerprint=_code_fingerprint(), facts=_stored_facts())
        try:
            atomic_write_bytes(_facts_path(), json.dumps(document, indent=1).encode())
        except OSError:  # a read-only home: counted again next time
            pass
    return facts[0], facts[1], tuple(facts[2])


def model_info(name: str) -> dict[str, Any]:
    """Parameters, MACs at the default input size, task, published weights with metrics and recipe (a
    published tag's parameters and MACs are those its manifest entry records)."""
    architecture = check_model_name(name)
    num_params, macs, input_size = _architecture_facts(name)
    cfg = get_pretrained_cfg(name) or get_pretrained_cfg(architecture)
    weights = {
        k: dict(
            sources=list(w.sources),
            sha256=w.sha256,
            dataset=w.dataset,
            metrics=dict(w.metrics),
            recipe=w.recipe,
            num_params=w.num_params,
            file_size_mb=w.file_size_mb,
            input_domain=w.input_domain,
            microns_per_pixel=w.microns_per_pixel,
        )
        for k, w in list_weights(architecture).items()
    }
    return dict(
        name=name,
        architecture=architecture,
        task=model_task(architecture),
        num_params=num_params,
        macs=macs,
        input_size=input_size,
        mean=cfg.mean,
        std=cfg.std,
        num_classes=cfg.num_classes,
        license=cfg.license,
        paper_ids=cfg.paper_ids,
        weights=weights,
    )
