"""Publishing: write a hub folder (``config.json``, ``model.safetensors``, ``card.json``, ``README.md`` and the
card's figures) and, on request, register it in the hub directory's ``manifest.json``.

``config.json`` is written by timm's own exporter (the one behind ``timm.models.save_for_hf``), so timm's
``local-dir:`` / ``hf-hub:`` loading reads it as it reads any timm export, Cuttlefish ranks included (they are
recorded as model arguments); the zoo adds the weights' ``sha256`` and the facts a card states (input
domain, resolution). The folder is assembled under a temporary name and moved
into place only when complete; an existing folder is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.models import PretrainedCfg
from timm.models._hub import save_config_for_hf  # the config.json writer behind timm's save_for_hf

from ._registry import MANIFEST_NAME, base_cfg, config_args, split_tag
from .cards import ModelCard, render_card
from .hub import CARD_DATA_NAME, CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, Weights, WeightsError, check_config, sha256_file
from .io import atomic_write_bytes, replace_dir, save_safetensors
from .profile import count_macs

__all__ = ['PublishError', 'publish', 'register']

# pretrained_cfg entries a registered tag never carries over from a published config.json.
_NOT_REGISTERED = ('architecture', 'tag', 'custom_load')


class PublishError(WeightsError):
    """A folder cannot be published (it exists, or the model cannot be exported)."""


def publish(
    model: torch.nn.Module,
    folder: str | Path,
    card: ModelCard,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    register_as: str | None = None,
    macs: int | None = None,
    data_config: Mapping[str, Any] | None = None,
) -> Weights:
    """Write ``folder`` for ``model`` and return its manifest entry (registered when ``register_as`` names an
    ``'architecture.tag'``). ``dtype=torch.float16`` halves the file (floating-point tensors only); ``macs``
    default to a count at the published input size. ``data_config`` is the preprocessing the weights were
    trained with where it differs from the architecture's cfg (timm's keys: ``input_size``, ``mean``, ``std``,
    ``crop_pct``, ``interpolation``; plus ``label_names``)."""
    folder = Path(folder)
    architecture = model.pretrained_cfg['architecture']
    if register_as is not None and split_tag(register_as)[0] != architecture:
        raise PublishError(f'cannot register {architecture} weights as {register_as!r}: use "{architecture}.<tag>"')
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise PublishError(f'{folder} exists and is not empty; pass --overwrite (overwrite=True) to replace it')
    folder.parent.mkdir(parents=True, exist_ok=True)
    export = copy.deepcopy(model).to(dtype) if dtype is not None else model
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f'.{folder.name}.partial-'))
    try:
        # One metadata key only: safetensors serialises metadata from a hash map, so a second key would make the
        # bytes (and the published sha256) differ from run to run.
        save_safetensors(export.state_dict(), staging / WEIGHTS_NAME, metadata={'format': 'pt'})
        facts = dict(
            sha256=sha256_file(staging / WEIGHTS_NAME),
            input_domain=card.input_domain,
            microns_per_pixel=card.microns_per_pixel,
        )
        data_config = dict(data_config or {})
        if 'label_names' in data_config:
            facts['label_names'] = list(data_config.pop('label_names'))
        try:  # the config half of timm.models.save_for_hf: timm's own schema and model_args
            save_config_for_hf(export, staging / CONFIG_NAME, model_config=facts, data_config=data_config or None)
        except (AttributeError, ValueError, TypeError) as e:
            raise PublishError(f'{architecture}: timm cannot export this model ({e})') from e
        config = check_config(  # what is published must load
            json.loads((staging / CONFIG_NAME).read_text()), f'{architecture} config.json', config_args(architecture)
        )
        card = dataclasses.replace(
            card,
            num_params=sum(p.numel() for p in model.parameters()),
            macs=macs if macs is not None else count_macs(model, config['pretrained_cfg']['input_size']),
        )
        for figure in card.figures:
            shutil.copyfile(figure, staging / Path(figure).name)
        card = dataclasses.replace(card, figures=[Path(f).name for f in card.figures])
        (staging / CARD_DATA_NAME).write_text(card.to_json())
        size_mb = (staging / WEIGHTS_NAME).stat().st_size / 2**20
        (staging / CARD_NAME).write_text(render_card(card, config, size_mb, folder.name))
        replace_dir(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    weights = Weights(
        # A registered folder is named relative to its hub directory (the manifest's folder).
        source=f'local:{folder.name}' if register_as else f'local:{folder.resolve()}',
        sha256=config['sha256'],
        model_args=config.get('model_args', {}),
        pretrained_cfg=_cfg_changes(architecture, config['pretrained_cfg']),
        num_params=card.num_params,
        macs=card.macs,
        dataset=card.dataset,
        metrics=card.metrics,
        recipe=card.recipe,
        file_size_mb=round(size_mb, 3),
        license=card.license,
        input_domain=card.input_domain,
        microns_per_pixel=card.microns_per_pixel,
    )
    if register_as is not None:
        register(register_as, weights, folder.parent / MANIFEST_NAME)
    return weights


def _cfg_changes(architecture: str, published: Mapping[str, Any]) -> dict:
    """The published pretrained cfg's entries that differ from the architecture's own cfg (JSON values)."""
    base = json.loads(json.dumps(PretrainedCfg(**base_cfg(architecture)).to_dict()))
    return {k: v for k, v in published.items() if k not in _NOT_REGISTERED and base.get(k) != v}


def register(key: str, weights: Weights, manifest: Path) -> None:
    """Add (or replace) ``'architecture.tag'`` in a hub directory's manifest, keeping the order of its entries
    (an architecture's first tag is what ``pretrained=True`` loads)."""
    architecture, tag = split_tag(key)
    if tag is None:
        raise PublishError(f'register as "architecture.tag", got {key!r}')
    entries = json.loads(manifest.read_text()) if manifest.is_file() else {}
    entries[key] = dataclasses.asdict(weights)
    atomic_write_bytes(manifest, (json.dumps(entries, indent=2) + '\n').encode())
