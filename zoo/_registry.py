"""The zoo's view of timm's registry: which models are ours, their published weights, and lookups.

Architectures register with timm through ``@register_model`` in ``zoo/models/*.py``; this module adds
what timm's ``PretrainedCfg`` has no room for: each published weight's sha256, measured metrics and the
constructor arguments it was trained with (``Weights``).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping
from functools import cache
from typing import Any

import timm
import torch
from timm.models import generate_default_cfgs, get_pretrained_cfg, model_entrypoint

from .hub import WEIGHTS_NAME, Weights, local_folder
from .profile import count_macs

__all__ = [
    'zoo_cfgs',
    'get_weights',
    'list_models',
    'list_weights',
    'model_info',
    'model_task',
    'UnknownModelError',
    'split_tag',
]

_WEIGHTS: dict[str, Weights] = {}  # 'architecture.tag' -> Weights
_TASK_BY_MODULE = {'mrl_seg': 'nuclei-segmentation'}


class UnknownModelError(ValueError):
    """A model name the zoo does not know; the message suggests close matches."""


def zoo_cfgs(cfgs: Mapping[str, dict]):
    """``generate_default_cfgs`` for a zoo family; a cfg may carry ``weights=Weights(...)``.

    The ``Weights`` are recorded in the zoo registry under the cfg's ``'architecture.tag'`` key and the
    timm source field is filled from ``Weights.source`` so ``timm.list_models(pretrained=True)`` sees it.
    """
    timm_cfgs = {}
    for key, cfg in cfgs.items():
        cfg = dict(cfg)
        weights: Weights | None = cfg.pop('weights', None)
        if weights is not None:
            if '.' not in key:
                raise ValueError(f'{key}: published weights need an "architecture.tag" key')
            _WEIGHTS[key] = weights
            if weights.source.startswith('hf-hub:'):
                cfg['hf_hub_id'] = weights.source[len('hf-hub:') :]
            elif weights.source.startswith('local:'):
                cfg['file'] = str(local_folder(weights.source[len('local:') :]) / WEIGHTS_NAME)
            else:
                cfg['url'] = weights.source
        timm_cfgs[key] = cfg
    return generate_default_cfgs(timm_cfgs)


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
        return sorted(k for k in _WEIGHTS if k.split('.')[0] in names)
    if pretrained:
        names = [n for n in names if any(k.startswith(n + '.') for k in _WEIGHTS)]
    return names


def list_weights(architecture: str) -> dict[str, Weights]:
    return {k: w for k, w in _WEIGHTS.items() if k.startswith(architecture + '.')}


def model_task(name: str) -> str:
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
