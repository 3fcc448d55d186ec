"""Recipes: YAML files describing a training run, validated against ``DEFAULTS`` with clear errors.

A recipe names the model (any ``zoo`` architecture and its arguments), the task and its data, the
schedule (epochs, optimizer, learning rate, batch-size control), the distributed settings (2D-torus
or ring all-reduce, grid, timeouts) and the optional Cuttlefish switch. ``zoo train --recipe R
key.path=value ...`` overrides single values; values are parsed as YAML (``optim.lr=0.05``,
``batch.stages=[[0,128],[10,256]]``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ['DEFAULTS', 'load_recipe', 'apply_overrides', 'bundled_recipes', 'RecipeError']


class RecipeError(ValueError):
    """A recipe file or override that cannot be used; the message names the key."""


# Sections whose contents are free-form (passed to constructors that validate them themselves).
_FREE_FORM = {'model.args', 'task.args', 'cuttlefish'}

DEFAULTS: dict[str, Any] = {
    'name': None,
    'description': '',
    'seed': 0,
    'epochs': 10,
    'model': {'name': None, 'args': {}},
    'task': {'name': 'classification', 'args': {}},
    'batch': {
        'stages': [[0, 128]],  # [start_epoch, global batch]; growing it is Sony's batch-size control
        'base': 128,  # the global batch at which optim.lr is given
        'rule': 'linear',  # 'linear' (lr ∝ batch) or 'smith' (grow batch instead of decaying lr)
        'max_per_rank': None,  # cap per-rank micro-batch; the rest becomes gradient accumulation
    },
    'optim': {
        'name': 'sgd',
        'lr': 0.1,
        'momentum': 0.9,
        'nesterov': False,
        'weight_decay': 5e-4,
        'betas': [0.9, 0.999],
        'clip_grad_norm': None,
    },
    'schedule': {
        'decay': 'step',
        'milestones': [],
        'gamma': 0.1,
        'min_factor': 0.0,
        'warmup_epochs': 0,
        'warmup_start': 0.1,
    },
    'amp': 'auto',  # 'auto' (fp16/bf16 on CUDA, off on CPU), 'off', 'fp16', 'bf16'
    'distributed': {
        'allreduce': 'torus',  # 'torus' (2D-torus DDP hook) or 'ring' (DDP's default all-reduce)
        'grid': None,  # [X, Y]; null chooses from the world size and ranks per node
        'bucket_cap_mb': 25,
        'timeout_s': 300,
    },
    'cuttlefish': None,  # a mapping enables the stable-rank switch (see training.cuttlefish)
    'data': {'workers': 0, 'eval_batch': 256},
    'log': {'tensorboard': True, 'progress': True},
    'checkpoint': {'keep': 2},
}


def bundled_recipes() -> dict[str, Path]:
    folder = resources.files('training') / 'recipes'
    return {p.stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith('.yaml')}


def _resolve(path_or_name: str) -> Path:
    path = Path(path_or_name)
    if path.is_file():
        return path
    bundled = bundled_recipes()
    if path.stem in bundled:
        return bundled[path.stem]
    raise RecipeError(f'recipe {path_or_name!r} not found; bundled recipes: {", ".join(sorted(bundled))}')


def _merge(defaults: Any, given: Any, where: str) -> Any:
    if not isinstance(defaults, dict) or where in _FREE_FORM:
        return copy.deepcopy(given)
    if not isinstance(given, Mapping):
        raise RecipeError(f'{where or "recipe"} must be a mapping, got {given!r}')
    unknown = set(given) - set(defaults)
    if unknown:
        raise RecipeError(f'unknown key(s) {sorted(unknown)} in {where or "recipe"}; known: {sorted(defaults)}')
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        path = f'{where}.{key}' if where else key
        _check_type(defaults[key], value, path)
        merged[key] = _merge(defaults[key], value, path) if value is not None else None
    return merged


def _check_type(default: Any, value: Any, path: str) -> None:
    """A value must have its default's type (ints pass for floats); ``None`` only where that is the default."""
    if default is None or path in _FREE_FORM:
        return
    if value is None:
        if isinstance(default, dict):
            raise RecipeError(f'{path} must be a mapping, got null')
        return
    expected = (int, float) if isinstance(default, float) else type(default)
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
        raise RecipeError(f'{path} must be {type(default).__name__}, got {value!r}')


def apply_overrides(recipe: dict, overrides: Sequence[str]) -> dict:
    """Apply ``key.path=value`` strings; a path must exist unless it is inside a free-form section."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        key, sep, text = item.partition('=')
        if not sep:
            raise RecipeError(f'override {item!r} must look like key.path=value')
        parts = key.split('.')
        node = recipe
        for i, part in enumerate(parts[:-1]):
            free = '.'.join(parts[: i + 1]) in _FREE_FORM
            if node.get(part) is None and free:
                node[part] = {}
            if not isinstance(node.get(part), dict):
                raise RecipeError(f'override {key!r}: {".".join(parts[: i + 1])} is not a section')
            node = node[part]
        inside_free = any(key.startswith(f + '.') for f in _FREE_FORM)
        if parts[-1] not in node and not inside_free:
            raise RecipeError(f'override {key!r}: unknown key; known here: {sorted(node)}')
        node[parts[-1]] = yaml.safe_load(text)
    return recipe


def load_recipe(path_or_name: str, overrides: Sequence[str] = ()) -> dict:
    """Read a recipe (a path, or the name of a bundled one), merge it over ``DEFAULTS``, apply overrides."""
    path = _resolve(path_or_name)
    try:
        given = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f'{path} is not valid YAML: {e}') from e
    given.pop('source', None)  # a run's saved recipe.yaml records where it came from
    recipe = _merge(DEFAULTS, given, '')
    recipe = apply_overrides(recipe, overrides)
    recipe = _merge(DEFAULTS, recipe, '')  # validate the overridden values too
    if not recipe['model']['name']:
        raise RecipeError(f'{path}: model.name is required')
    recipe['name'] = recipe['name'] or path.stem
    recipe['source'] = str(path)
    return recipe
