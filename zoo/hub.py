"""Where weights come from, and proof that they are the bytes that were published.

A published model is a folder laid out like a Hugging Face model repo: ``config.json`` (timm's schema plus
the ``sha256`` of the weights), ``model.safetensors`` and a ``README.md`` card. Weights are always
safetensors: nothing is ever unpickled. Three kinds of source are understood (a manifest entry's
``source``, see :func:`parse_source`):

* ``hf-hub:ORG/NAME@REVISION`` -- a Hugging Face Hub repo, fetched with ``huggingface_hub.hf_hub_download``;
  its cache, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1`` work as for any HF library.
* ``https://...``, ``http://...`` or ``file://...`` -- one file, downloaded once into torch.hub's cache
  (``$TORCH_HOME/hub/checkpoints``) and verified on every load, not only on download.
* ``local:NAME`` -- a folder in the project's ``hub/`` directory (or ``$ZOO_HUB_DIR``), or an absolute path.

A ``config.json`` is data, never instructions: :func:`check_config` accepts the architecture, its
arguments (a whitelist per model family), the preprocessing timm reads (``input_size``, ``mean``...) and
facts about the weights; any key that would say where weights or code come from is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    'CARD_DATA_NAME',
    'CARD_NAME',
    'CONFIG_NAME',
    'ConfigError',
    'Source',
    'WEIGHTS_NAME',
    'Weights',
    'WeightsError',
    'WeightsHashError',
    'WeightsShapeError',
    'check_config',
    'fetch',
    'hub_dir',
    'parse_source',
    'read_config',
    'read_verified',
    'sha256_file',
]

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
CARD_DATA_NAME = 'card.json'  # the structured data README.md is rendered from (zoo.cards)
# Files a model folder may hold instead of safetensors; they are pickles and are never loaded.
_PICKLE_NAMES = ('pytorch_model.bin', 'pytorch_model.pth', 'model.pth', 'model.pt')


class WeightsError(RuntimeError):
    """A weights file could not be found, read or used."""


class WeightsHashError(WeightsError):
    """A weights file's sha256 differs from the one recorded for it (corrupt, truncated or tampered)."""


class WeightsShapeError(WeightsError):
    """A weights file does not fit the architecture it is loaded into."""


class ConfigError(WeightsError):
    """A ``config.json`` that is not plain architecture data (or is not JSON at all)."""


@dataclass(frozen=True)
class Weights:
    """One published set of weights: where it lives, its hash, and what it was measured to do.

    The metadata follows torchvision's weights ``meta``: ``num_params`` is checked against the built model
    by the test suite, ``metrics`` maps a split name to measured figures (``{'Fashion-MNIST test': {'top1':
    89.9}}``), ``recipe`` names the recipe file. ``model_args`` are the constructor arguments the weights
    were trained with (e.g. per-layer ranks), applied whenever the architecture is built for this tag, and
    ``pretrained_cfg`` the entries of timm's pretrained cfg that differ from the architecture's default
    (e.g. ``num_classes`` of a fine-tuned head). ``input_domain`` names the images the weights are meant
    for (``'fashion-mnist'``, ``'fluorescence'``, ``'he'``) and ``microns_per_pixel`` the resolution they
    were trained at, where known.
    """

    source: str
    sha256: str
    model_args: Mapping[str, Any] = field(default_factory=dict)
    pretrained_cfg: Mapping[str, Any] = field(default_factory=dict)
    num_params: int | None = None
    macs: int | None = None
    dataset: str = ''
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    recipe: str = ''
    file_size_mb: float | None = None
    license: str = 'apache-2.0'
    input_domain: str | None = None
    microns_per_pixel: float | None = None

    def __post_init__(self):
        _check_sha256(self.sha256, 'Weights.sha256')
        parse_source(self.source)


def _check_sha256(value: Any, what: str) -> None:
    if not (isinstance(value, str) and len(value) == 64 and all(c in '0123456789abcdef' for c in value)):
        raise ValueError(f'{what} must be 64 lowercase hex digits, got {value!r}')


@dataclass(frozen=True)
class Source:
    """A parsed weights source: ``kind`` is ``'hf-hub'`` (``location`` a repo id), ``'url'`` or ``'local'``
    (``location`` a folder)."""

    kind: str
    location: str
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == 'hf-hub':
            return f'hf-hub:{self.location}' + (f'@{self.revision}' if self.revision else '')
        return self.location if self.kind == 'url' else f'local:{self.location}'

    @property
    def folder(self) -> Path:
        """A local source's folder: absolute paths as given, names inside :func:`hub_dir`."""
        folder = Path(self.location)
        return folder if folder.is_absolute() else hub_dir() / folder


_URL_SCHEMES = ('https://', 'http://', 'file://')


def parse_source(text: str) -> Source:
    """The one parser of weight sources (see the module docstring)."""
    if text.startswith('hf-hub:'):
        repo_id, _, revision = text[len('hf-hub:') :].partition('@')
        return Source('hf-hub', repo_id, revision or None)
    if text.startswith(_URL_SCHEMES):
        return Source('url', text)
    if text.startswith('local:'):
        return Source('local', text[len('local:') :])
    raise ValueError(f'weights source {text!r} must start with hf-hub:, local:, https://, http:// or file://')


def hub_dir() -> Path:
    """The folder holding ``local:NAME`` weights: ``$ZOO_HUB_DIR`` or the checkout's ``hub/``."""
    return Path(os.environ.get('ZOO_HUB_DIR') or Path(__file__).resolve().parent.parent / 'hub')


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, sha256: str, progress: bool) -> Path:
    cache = Path(torch.hub.get_dir()) / 'checkpoints'
    cache.mkdir(parents=True, exist_ok=True)
    # The hash prefix in the cached name keeps two different files with the same basename apart.
    cached = cache / f'{sha256[:12]}-{Path(url.split("?")[0]).name}'
    if not cached.exists():
        # download_url_to_file writes to a temporary file and renames it, so a killed download leaves nothing.
        try:
            torch.hub.download_url_to_file(url, str(cached), progress=progress)
        except OSError as e:  # URLError and HTTPError are OSErrors
            raise WeightsError(f'could not download {url}: {e}') from e
    return cached


def fetch(
    source: str | Source,
    filename: str = WEIGHTS_NAME,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> Path:
    """A local path to ``filename`` of ``source`` (downloaded or taken from a cache). Nothing is verified
    here (see :func:`read_verified`); a URL is only downloaded when its ``sha256`` is known."""
    source = parse_source(source) if isinstance(source, str) else source
    if source.kind == 'hf-hub':
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_CACHE
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

        try:
            path = Path(hf_hub_download(source.location, filename, revision=source.revision, cache_dir=cache_dir))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
            raise WeightsError(
                f'could not get {filename} from {source}: {e} With HF_HUB_OFFLINE=1 the file must already be '
                f'in the Hugging Face cache ({cache_dir or HF_HUB_CACHE}).'
            ) from e
        except (HfHubHTTPError, OSError) as e:  # missing repo, file or revision; no network
            raise WeightsError(f'could not get {filename} from {source}: {e}') from e
    elif source.kind == 'url':
        if filename != WEIGHTS_NAME:
            raise WeightsError(f'a URL source points at one file; cannot fetch {filename} from {source}')
        if sha256 is None:
            raise WeightsError(f'refusing to download {source} without a sha256 to check it against')
        path = _download(source.location, sha256, progress)
    else:
        path = source.folder / filename
    if not path.is_file():
        pickles = [name for name in _PICKLE_NAMES if (path.parent / name).is_file()]
        hint = (
            f'; it holds {", ".join(pickles)}, a pickle, which the zoo never loads: re-save the weights with '
            f'safetensors (e.g. timm.models.save_for_hf(model, folder, safe_serialization=True))'
            if pickles
            else f'; a published model folder holds {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME}'
        )
        raise WeightsError(f'{path} does not exist (source {source}){hint}')
    return path


def read_verified(path: Path, sha256: str | None, name: str) -> bytes:
    """The bytes of ``path``, read once, after checking them against ``sha256`` (``None``: unchecked)."""
    data = Path(path).read_bytes()
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise WeightsHashError(
                f'{name}: weights file {path} has sha256 {actual} but {sha256} was expected; the file is '
                f'corrupt, truncated or was modified. Delete it so it is fetched again, or restore it.'
            )
    return data


# ----------------------------------------------------------------------------------------------------------
# config.json

# Top-level keys of a published config.json: timm's (save_config_for_hf) plus facts about the weights.
_CONFIG_KEYS = {
    'architecture',
    'num_classes',
    'num_features',
    'global_pool',
    'label_names',
    'label_descriptions',
    'model_args',
    'pretrained_cfg',
    'sha256',
    'input_domain',
    'microns_per_pixel',
}
# pretrained_cfg entries that say where weights or code come from: a config.json may not set them.
WEIGHT_SOURCE_KEYS = ('url', 'file', 'state_dict', 'hf_hub_id', 'hf_hub_filename', 'source', 'custom_load')
# Bounds that keep a config from asking for absurd allocations (a 1e9-class head, a 6000x6000 input).
_MAX_CHANNELS, _MAX_SIDE, _MAX_CLASSES = 16, 2048, 1_000_000  # whole slides are streamed in tiles (zoo.slide)


def check_config(config: Any, where: str, allowed_args: Collection[str]) -> dict:
    """Validate a config.json's content; ``allowed_args`` are the architecture arguments of its family.

    Raises :class:`ConfigError` naming the first offending key; returns the config unchanged.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f'{where} must hold a JSON object, got {type(config).__name__}')
    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise ConfigError(f'{where}: unknown key {unknown[0]!r}; a config.json holds only {sorted(_CONFIG_KEYS)}')
    if not isinstance(config.get('architecture'), str):
        raise ConfigError(f'{where} has no "architecture" string')
    if 'sha256' in config:
        try:
            _check_sha256(config['sha256'], f'{where} "sha256"')
        except ValueError as e:
            raise ConfigError(str(e)) from None
    args = config.get('model_args', {})
    if not isinstance(args, Mapping):
        raise ConfigError(f'{where}: "model_args" must be an object')
    for key in args:
        if key not in allowed_args:
            raise ConfigError(
                f'{where}: model_args.{key} is not an architecture argument of {config["architecture"]} '
                f'(allowed: {", ".join(sorted(allowed_args))})'
            )
    cfg = config.get('pretrained_cfg', {})
    if not isinstance(cfg, Mapping):
        raise ConfigError(f'{where}: "pretrained_cfg" must be an object')
    for key in WEIGHT_SOURCE_KEYS:
        if cfg.get(key):
            raise ConfigError(
                f'{where}: pretrained_cfg.{key} would say where weights or code come from; a published '
                f'config.json may not (the folder\'s own {WEIGHTS_NAME}, verified by "sha256", is the only source)'
            )
    _check_bounds(config, cfg, args, where)
    return dict(config)


def _check_bounds(config: Mapping, cfg: Mapping, args: Mapping, where: str) -> None:
    def bad(key: str, value: Any, rule: str) -> ConfigError:
        return ConfigError(f'{where}: {key} = {value!r} {rule}')

    input_size = cfg.get('input_size')
    if input_size is not None:
        if not (isinstance(input_size, list) and len(input_size) == 3 and all(_is_int(v) for v in input_size)):
            raise bad('pretrained_cfg.input_size', input_size, 'must be [channels, height, width] integers')
        channels, *sides = input_size
        if not 1 <= channels <= _MAX_CHANNELS or not all(1 <= s <= _MAX_SIDE for s in sides):
            raise bad(
                'pretrained_cfg.input_size',
                input_size,
                f'must have 1-{_MAX_CHANNELS} channels and sides of 1-{_MAX_SIDE} pixels',
            )
        for key in ('mean', 'std'):
            value = cfg.get(key)
            if value is not None and (
                not isinstance(value, list)
                or len(value) != channels
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
            ):
                raise bad(f'pretrained_cfg.{key}', value, f'must be {channels} finite numbers')
    for key, value in (
        ('num_classes', config.get('num_classes')),
        ('pretrained_cfg.num_classes', cfg.get('num_classes')),
        ('model_args.num_classes', args.get('num_classes')),
    ):
        if value is not None and not (_is_int(value) and 0 <= value <= _MAX_CLASSES):
            raise bad(key, value, f'must be an integer in [0, {_MAX_CLASSES}]')
    in_chans = args.get('in_chans')
    if in_chans is not None and not (_is_int(in_chans) and 1 <= in_chans <= _MAX_CHANNELS):
        raise bad('model_args.in_chans', in_chans, f'must be an integer in [1, {_MAX_CHANNELS}]')
    mpp = config.get('microns_per_pixel')
    if mpp is not None and not (isinstance(mpp, (int, float)) and 0 < mpp < 1000):
        raise bad('microns_per_pixel', mpp, 'must be a positive number')


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_config(path: str | Path, allowed_args: Collection[str] | None = None) -> dict:
    """Read and validate a ``config.json`` (``path`` is the file or its folder). ``allowed_args`` defaults to
    the architecture arguments the zoo's registry lists for the config's architecture."""
    path = Path(path)
    if path.is_dir() or path.name != CONFIG_NAME:
        path = path / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(
            f'{path} does not exist: a published model folder holds {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME}'
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f'{path} is not valid JSON: {e}') from None
    if allowed_args is None:
        from ._registry import check_model_name, config_args

        architecture = config.get('architecture') if isinstance(config, Mapping) else None
        if isinstance(architecture, str):
            check_model_name(architecture)  # an unknown name fails with suggestions, not as a bad argument
        allowed_args = config_args(architecture) if isinstance(architecture, str) else ()
    return check_config(config, str(path), allowed_args)
