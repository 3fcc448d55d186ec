"""Publishing: write a hub folder (``config.json``, ``model.safetensors``, ``README.md`` card and figures)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .cards import ModelCard, render_card
from .hub import CARD_NAME, CONFIG_NAME, WEIGHT_SOURCE_KEYS, WEIGHTS_NAME, sha256_file
from .io import atomic_write_bytes, save_safetensors
from .profile import count_macs

__all__ = ['publish']


def _model_config(model: torch.nn.Module, architecture: str, model_args: Mapping[str, Any]) -> dict:
    """timm's config.json schema (``architecture``, ``num_classes``, ``model_args``, ``pretrained_cfg``)."""
    pretrained_cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    for key in WEIGHT_SOURCE_KEYS:
        pretrained_cfg.pop(key, None)
    pretrained_cfg['architecture'] = architecture
    pretrained_cfg['num_classes'] = getattr(model, 'num_classes', pretrained_cfg.get('num_classes'))
    config = dict(
        architecture=architecture,
        num_classes=pretrained_cfg['num_classes'],
        num_features=getattr(model, 'num_features', None),
    )
    if isinstance(getattr(model, 'global_pool', None), str):
        config['global_pool'] = model.global_pool
    if pretrained_cfg.get('label_names'):
        config['label_names'] = list(pretrained_cfg['label_names'])
    config['model_args'] = dict(model_args)
    config['pretrained_cfg'] = pretrained_cfg
    return config


def publish(
    model: torch.nn.Module,
    folder: str | Path,
    card: ModelCard,
    architecture: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    macs: int | None = None,
) -> dict:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` (plus card figures) into ``folder``.

    Each file is written atomically. ``dtype=torch.float16`` halves the file (floating-point tensors
    only). ``model_args`` default to the constructor arguments the zoo builder recorded on the model
    (``model.zoo_model_args``); ``macs`` default to a count at the model's default input size. Returns
    the fields of a ``Weights`` entry for the registry (``sha256``, ``num_params``, ``macs``,
    ``file_size_mb``, ``model_args``).
    """
    folder = Path(folder)
    architecture = architecture or model.pretrained_cfg['architecture']
    model_args = dict(model_args if model_args is not None else getattr(model, 'zoo_model_args', {}))
    if macs is None:
        macs = count_macs(model, model.pretrained_cfg['input_size'])
    state_dict = {
        k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in model.state_dict().items()
    }
    # One metadata key only: safetensors serialises metadata from a hash map, so a second key would make
    # the bytes (and the published sha256) differ from run to run. The architecture is in config.json.
    save_safetensors(state_dict, folder / WEIGHTS_NAME, metadata={'format': 'pt'})
    sha256 = sha256_file(folder / WEIGHTS_NAME)
    file_size_mb = (folder / WEIGHTS_NAME).stat().st_size / 2**20
    num_params = sum(p.numel() for p in model.parameters())
    config = _model_config(model, architecture, model_args)
    config['sha256'] = sha256
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(config, indent=2) + '\n').encode())
    for figure in card.figures:
        atomic_write_bytes(folder / Path(figure).name, Path(figure).read_bytes())
    text = render_card(card, architecture, config, num_params, macs, file_size_mb, sha256)
    atomic_write_bytes(folder / CARD_NAME, text.encode())
    return dict(
        sha256=sha256, num_params=num_params, macs=macs, file_size_mb=round(file_size_mb, 3), model_args=model_args
    )
