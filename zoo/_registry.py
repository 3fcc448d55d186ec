"""The zoo's view of timm's registry: which models are ours, their published weights, and lookups.

Architectures register with timm through ``@register_model`` in ``zoo/models/*.py``; each family's
``default_cfgs = zoo_cfgs({...}, config_args=...)`` adds the published weights of its architectures, read
from the hub directory's ``manifest.json`` (written by ``zoo publish --register``, see ``zoo.publish``), and
records which constructor arguments a published ``config.json`` may set for them. Nothing about published
weights is written in source code.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from collections.abc import Collection, Mapping
from functools import cache
from typing import Any

import timm
import torch
from timm.models import generate_default_cfgs, get_pretrained_cfg, model_entrypoint

from .hub import WEIGHTS_NAME, Weights, hub_dir, parse_source
from .profile import count_macs

__all__ = [
    'MANIFEST_NAME',
    'UnknownModelError',
    'base_cfg',
    'check_model_name',
    'config_args',
    'get_weights',
    'list_models',
    'list_weights',
    'load_manifest',
    'model_info',
    'model_task',
    'split_tag',
    'timm_source_fields',
    'zoo_cfgs',
]

MANIFEST_NAME = 'manifest.json'
_TASK_BY_MODULE = {'hovernet': 'nuclei-segmentation'}
_CONFIG_ARGS: dict[str, frozenset[str]] = {}  # architecture -> arguments a config.json may set
_BASE_CFGS: dict[str, dict] = {}  # architecture -> its own pretrained cfg (before any published tag)


class UnknownModelError(ValueError):
    """A model name the zoo does not know; the message suggests close matches."""


def load_manifest(path=None) -> dict[str, Weights]:
    """``{'architecture.tag': Weights}`` of a hub directory's manifest (default: :func:`zoo.hub.hub_dir`'s)."""
    path = path or hub_dir() / MANIFEST_NAME
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    weights = {}
    for key, entry in entries.items():
        if '.' not in key:
            raise ValueError(f'{path}: {key!r} must be "architecture.tag"')
        weights[key] = Weights(**entry)
    return weights


_WEIGHTS: dict[str, Weights] = load_manifest()


def zoo_cfgs(cfgs: Mapping[str, dict], config_args: Collection[str]) -> dict:
    """``generate_default_cfgs`` for a zoo family, plus every published tag of its architectures.

    ``config_args`` are the constructor arguments of the family that a published ``config.json`` may set
    (its architecture, never where weights or code come from). A manifest entry's tag gets the
    architecture's cfg updated with the entry's ``pretrained_cfg`` and the timm source field of its
    ``source``, so ``timm.list_models(pretrained=True)`` and ``timm.create_model('arch.tag')`` see it.
    """
    timm_cfgs = {}
    for architecture, cfg in cfgs.items():
        _CONFIG_ARGS[architecture] = frozenset(config_args)
        _BASE_CFGS[architecture] = dict(cfg)
        tags = {k: w for k, w in _WEIGHTS.items() if split_tag(k)[0] == architecture}
        # Published weights come first: the first tag with weights is what pretrained=True loads.
        for key, weights in tags.items():
            timm_cfgs[key] = dict(cfg, **weights.pretrained_cfg, **timm_source_fields(weights.source))
        timm_cfgs[architecture] = dict(cfg)
    return generate_default_cfgs(timm_cfgs)


def timm_source_fields(text: str) -> dict:
    """The fields of timm's pretrained cfg that point at a weights ``source``."""
    source = parse_source(text)
    if source.kind == 'hf-hub':
        hub_id = source.location + (f'@{source.revision}' if source.revision else '')
        return dict(hf_hub_id=hub_id, hf_hub_filename=WEIGHTS_NAME)
    if source.kind == 'url':
        return dict(url=source.location)
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
    return _WEIGHTS.get(f'{architecture}.{tag}')


@cache
def _zoo_model_names() -> tuple[str, ...]:
    return tuple(n for n in timm.list_models() if model_entrypoint(n).__module__.startswith('zoo.'))


def list_models(pattern: str = '*', pretrained: bool = False, tags: bool = False) -> list[str]:
    """Zoo architectures matching a wildcard ``pattern``; with ``pretrained`` only those with weights,
    and with ``tags`` the ``'architecture.tag'`` names of the published weights instead."""
    names = [n for n in _zoo_model_names() if fnmatch.fnmatch(n, pattern)]
    if tags:
        return sorted(k for k in _WEIGHTS if split_tag(k)[0] in names)
    if pretrained:
        names = [n for n in names if list_weights(n)]
    return names


def list_weights(architecture: str) -> dict[str, Weights]:
    return {k: w for k, w in _WEIGHTS.items() if split_tag(k)[0] == architecture}


def model_task(name: str) -> str:
    """``'image-classification'`` or ``'nuclei-segmentation'``."""
    module = model_entrypoint(split_tag(name)[0]).__module__.rsplit('.', 1)[-1]
    return _TASK_BY_MODULE.get(module, 'image-classification')


def check_model_name(name: str) -> str:
    """Return the architecture of ``name`` or raise ``UnknownModelError`` with close matches."""
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


@cache
def _architecture_facts(name: str) -> tuple[int, int, tuple]:
    # Built on the meta device: exact parameter counts and MACs without allocating any weights.
    with torch.device('meta'):
        model = timm.create_model(name).eval()
    input_size = tuple(model.pretrained_cfg['input_size'])
    return sum(p.numel() for p in model.parameters()), count_macs(model, input_size), input_size


def model_info(name: str) -> dict[str, Any]:
    """Parameters, MACs at the default input size, task, published weights with metrics and recipe."""
    architecture = check_model_name(name)
    num_params, macs, input_size = _architecture_facts(name)
    cfg = get_pretrained_cfg(name) or get_pretrained_cfg(architecture)
    weights = {
        k: dict(
            source=w.source,
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
