"""Pretrained-weight hub: fetch, verify, load and publish safetensors weights.

Weights are always ``model.safetensors`` files whose sha256 is known before they are read.
Three kinds of source are understood (``Weights.source``):

* ``hf-hub:ORG/NAME@REVISION`` -- a Hugging Face Hub repo at a pinned revision, fetched with
  ``huggingface_hub.hf_hub_download``; the standard cache, ``HF_HOME``/``HF_HUB_CACHE`` and
  ``HF_HUB_OFFLINE=1`` work as they do for any HF library.
* ``https://...``, ``http://...`` or ``file://...`` -- a URL, downloaded once into torch.hub's cache
  (``$TORCH_HOME/hub/checkpoints``) and re-verified on every load, not only on download.
* ``local:NAME`` -- a folder in the project's ``hub/`` directory (or ``$ZOO_HUB_DIR``), or an absolute
  path to a folder laid out like a Hugging Face model repo: ``config.json``, ``model.safetensors``,
  ``README.md``.

Nothing is ever unpickled. ``publish`` writes exactly the folder layout above, with a timm-compatible
``config.json`` and a model card whose YAML metadata is generated from measured results.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    'Weights',
    'WeightsError',
    'WeightsHashError',
    'WeightsShapeError',
    'hub_dir',
    'local_folder',
    'sha256_file',
    'fetch',
    'read_config',
    'WEIGHTS_NAME',
    'CONFIG_NAME',
    'CARD_NAME',
    'WEIGHT_SOURCE_KEYS',
]

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
_HF_PREFIX = 'hf-hub:'
_LOCAL_PREFIX = 'local:'
_URL_SCHEMES = ('https://', 'http://', 'file://')


class WeightsError(RuntimeError):
    """A weights file could not be found, read or used."""


class WeightsHashError(WeightsError):
    """A weights file's sha256 differs from the one recorded for it (corrupt, truncated or tampered)."""


class WeightsShapeError(WeightsError):
    """A weights file does not fit the architecture it is loaded into."""


@dataclass(frozen=True)
class Weights:
    """One published set of weights: where it lives, its hash, and what it was measured to do.

    The metadata follows torchvision's weights ``meta``: ``num_params`` is checked against the built
    model by the test suite, ``metrics`` maps a dataset/split name to measured figures
    (``{'Fashion-MNIST test': {'top1': 93.1}}``), ``recipe`` names the recipe file and command.
    ``model_args`` are the constructor arguments the weights were trained with (e.g. per-layer ranks),
    applied whenever the architecture is built for this tag.
    """

    source: str
    sha256: str
    model_args: Mapping[str, Any] = field(default_factory=dict)
    num_params: int | None = None
    macs: int | None = None
    dataset: str = ''
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    recipe: str = ''
    file_size_mb: float | None = None
    license: str = 'apache-2.0'

    def __post_init__(self):
        if not (len(self.sha256) == 64 and all(c in '0123456789abcdef' for c in self.sha256)):
            raise ValueError(f'Weights.sha256 must be 64 lowercase hex digits, got {self.sha256!r}')
        if not self.source.startswith((_HF_PREFIX, _LOCAL_PREFIX) + _URL_SCHEMES):
            raise ValueError(
                f'Weights.source {self.source!r} must start with one of '
                f'{", ".join((_HF_PREFIX, _LOCAL_PREFIX) + _URL_SCHEMES)}'
            )


def hub_dir() -> Path:
    """The folder holding ``local:NAME`` weights: ``$ZOO_HUB_DIR`` or the checkout's ``hub/``."""
    return Path(os.environ.get('ZOO_HUB_DIR') or Path(__file__).resolve().parent.parent / 'hub')


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _split_revision(spec: str) -> tuple[str, str | None]:
    repo_id, _, revision = spec.partition('@')
    return repo_id, revision or None


def local_folder(spec: str) -> Path:
    """A ``local:`` spec as a folder: absolute paths as given, names inside ``hub_dir()``."""
    folder = Path(spec)
    return folder if folder.is_absolute() else hub_dir() / spec


def _fetch_url(url: str, sha256: str, progress: bool) -> Path:
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
    source: str,
    sha256: str | None,
    name: str = 'model',
    progress: bool = False,
    filename: str = WEIGHTS_NAME,
    cache_dir: str | Path | None = None,
) -> Path:
    """Return a local path to ``filename`` from ``source``; when ``sha256`` is given the file is verified.

    Raises ``WeightsError`` (missing file, offline cache miss) or ``WeightsHashError`` naming ``name``,
    the file and the expected vs actual hash. ``cache_dir`` overrides the Hugging Face cache.
    """
    if source.startswith(_HF_PREFIX):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_CACHE
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

        repo_id, revision = _split_revision(source[len(_HF_PREFIX) :])
        try:
            path = Path(
                hf_hub_download(
                    repo_id, filename, revision=revision, cache_dir=cache_dir, library_name='cuttlefish-mrl-zoo'
                )
            )
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
            raise WeightsError(
                f'{name}: could not get {filename} from {source}: {e} With HF_HUB_OFFLINE=1 the file must '
                f'already be in the Hugging Face cache ({cache_dir or HF_HUB_CACHE}).'
            ) from e
        except (HfHubHTTPError, OSError) as e:  # missing repo or revision, no network
            raise WeightsError(f'{name}: could not get {filename} from {source}: {e}') from e
    elif source.startswith(_URL_SCHEMES):
        if filename != WEIGHTS_NAME:
            raise WeightsError(f'{name}: a URL source points at one file; cannot fetch {filename} from {source}')
        if sha256 is None:
            raise WeightsError(f'{name}: refusing to download {source} without a sha256 to check it against')
        path = _fetch_url(source, sha256, progress)
    elif source.startswith(_LOCAL_PREFIX):
        path = local_folder(source[len(_LOCAL_PREFIX) :]) / filename
    else:
        raise WeightsError(f'{name}: unknown weights source {source!r}')
    if not path.is_file():
        raise WeightsError(
            f'{name}: {path} does not exist (source {source}); a published model folder '
            f'holds {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME}'
        )
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightsHashError(
                f'{name}: weights file {path} has sha256 {actual} but {sha256} was expected; the file is '
                f'corrupt, truncated or was modified. Delete it so it is fetched again, or restore it.'
            )
    return path


def read_config(folder: str | Path) -> dict:
    """Read a published folder's ``config.json`` (clear errors for a missing or malformed file)."""
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise WeightsError(
            f'{path} not found: a published model folder holds {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME}'
        ) from e
    except json.JSONDecodeError as e:
        raise WeightsError(f'{path} is not valid JSON: {e}') from e
    if 'architecture' not in config:
        raise WeightsError(f'{path} has no "architecture" key')
    return config


# pretrained_cfg fields that say where weights come from: a published config.json leaves them out, since
# the folder's own model.safetensors (verified by its sha256) is the only source.
WEIGHT_SOURCE_KEYS = ('url', 'file', 'state_dict', 'hf_hub_id', 'hf_hub_filename', 'source', 'tag')
