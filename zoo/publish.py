"""Publishing: write a hub folder (``config.json``, ``model.safetensors``, ``card.json``, ``README.md`` and the
card's figures) and, on request, register it in its hub directory's manifest (``zoo.hub.manifest_path``: the
package's ``zoo/manifest.json`` for the project's ``hub/``).

``config.json`` is written by timm's own exporter (the one behind ``timm.models.save_for_hf``), so timm's
``local-dir:`` / ``hf-hub:`` loading reads it as it reads any timm export, Cuttlefish ranks included (they are
recorded as model arguments); the zoo adds the weights' ``sha256`` and the facts a card states (input
domain, resolution). Nothing is replaced that the caller did not ask to replace: :func:`check_target` refuses
a target that is a file, a non-empty folder or a registered tag without ``overwrite``, and an invalid
register name, before any work. The folder is assembled under a temporary name and moved into place only
when complete.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.models import PretrainedCfg
from timm.models._hub import save_config_for_hf  # the config.json writer behind timm's save_for_hf

from ._builder import check_weight_values
from ._registry import base_cfg, config_args, split_tag
from .cards import ModelCard, render_card
from .hub import (
    CARD_DATA_NAME,
    CARD_NAME,
    CONFIG_NAME,
    MANIFEST_KEY,
    PACKAGE_MANIFEST,
    WEIGHTS_NAME,
    Weights,
    WeightsError,
    manifest_path,
    read_manifest,
    sha256_file,
    write_manifest,
)
from .hub_config import check_config
from .io import replace_dir, save_safetensors
from .profile import count_macs

__all__ = ['PublishError', 'check_target', 'publish', 'register']

# pretrained_cfg entries a registered tag never carries over from a published config.json.
_NOT_REGISTERED = ('architecture', 'tag', 'custom_load')


class PublishError(WeightsError):
    """A folder cannot be published (it exists, or the model cannot be exported)."""


def check_target(
    folder: str | Path, architecture: str | None = None, register_as: str | None = None, overwrite: bool = False
) -> None:
    """Refuse, before any work, what :func:`publish` would refuse or destroy: a target that is a file, a
    non-empty folder or an already registered ``register_as`` without ``overwrite``, a register name that is
    not ``'architecture.tag'`` (of ``architecture``, when given), a manifest that does not validate."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PublishError(f'{folder} is a file; a published model is a folder: name a folder (the file is kept)')
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise PublishError(f'{folder} exists and is not empty; pass --overwrite (overwrite=True) to replace it')
    if register_as is None:
        return
    if not re.fullmatch(MANIFEST_KEY, register_as):
        raise PublishError(
            f'cannot register as {register_as!r}: use "architecture.tag", lowercase letters, digits and _ '
            f'(e.g. "cf_resnet18_fmnist.cuttlefish")'
        )
    if architecture is not None and split_tag(register_as)[0] != architecture:
        raise PublishError(f'cannot register {architecture} weights as {register_as!r}: use "{architecture}.<tag>"')
    manifest = manifest_path(folder.parent)
    if register_as in read_manifest(manifest) and not overwrite:
        raise PublishError(
            f'{register_as} is already registered in {manifest}; pass --overwrite (overwrite=True) to replace it'
        )


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
    check_target(folder, architecture, register_as, overwrite)
    export = copy.deepcopy(model).to(dtype) if dtype is not None else model
    tensors = export.state_dict()
    check_weight_values(tensors, tensors, architecture, 'the model to publish')
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f'.{folder.name}.partial-'))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes a private folder; the published one is the user's usual
        # One metadata key only: safetensors serialises metadata from a hash map, so a second key would make the
        # bytes (and the published sha256) differ from run to run.
        save_safetensors(tensors, staging / WEIGHTS_NAME, metadata={'format': 'pt'})
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
    if register_as is None:
        sources = [f'local:{folder.resolve()}']
    else:  # a registered folder is named relative to its hub directory (the manifest's folder)
        sources = [f'local:{folder.name}']
        if manifest_path(folder.parent) == PACKAGE_MANIFEST:
            # The project's weights are also downloadable from its release, pinned at the version's tag.
            from . import __version__

            sources.append(f'release:{folder.name}@v{__version__}')
    weights = Weights(
        sources=sources,
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
        register(register_as, weights, manifest_path(folder.parent), overwrite=overwrite)
    return weights


def _cfg_changes(architecture: str, published: Mapping[str, Any]) -> dict:
    """The published pretrained cfg's entries that differ from the architecture's own cfg (JSON values)."""
    base = json.loads(json.dumps(PretrainedCfg(**base_cfg(architecture)).to_dict()))
    return {k: v for k, v in published.items() if k not in _NOT_REGISTERED and base.get(k) != v}


def register(key: str, weights: Weights, manifest: Path, overwrite: bool = False) -> None:
    """Add ``'architecture.tag'`` to a manifest (replace it only with ``overwrite``), keeping the order of its
    entries (an architecture's first tag is what ``pretrained=True`` loads)."""
    if not re.fullmatch(MANIFEST_KEY, key):
        raise PublishError(f'register as "architecture.tag", got {key!r}')
    entries = read_manifest(manifest)
    if key in entries and not overwrite:
        raise PublishError(
            f'{key} is already registered in {manifest}; pass --overwrite (overwrite=True) to replace it'
        )
    write_manifest(manifest, {**entries, key: weights})
