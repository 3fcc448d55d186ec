"""Where weights come from, and proof that they are the bytes that were published.

A published model is a folder laid out like a Hugging Face model repo: ``config.json`` (timm's schema plus
the ``sha256`` of the weights, see :mod:`zoo.hub_config`), ``model.safetensors`` and a ``README.md`` card.
Weights are always safetensors: nothing is ever unpickled. A weights source (see :func:`parse_source`) is one of:

* ``local:NAME`` -- the folder ``NAME`` of the hub directory (:func:`hub_dir`: ``$ZOO_HUB_DIR`` or the
  checkout's ``hub/``), or an absolute folder. The folder and its files must resolve, symlinks followed,
  inside the hub directory (an absolute folder: inside itself).
* ``release:NAME@REVISION`` -- ``NAME/model.safetensors`` of the project's release at ``REVISION``:
  :data:`HUB_URL` (``$ZOO_HUB_URL`` overrides it, for mirrors and forks) with ``{revision}`` filled in.
* ``https://...``, ``http://...`` or ``file://...`` -- one file.
* ``hf-hub:ORG/NAME@REVISION`` -- a Hugging Face Hub repo (``huggingface_hub.hf_hub_download``: its cache,
  ``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1`` work as for any HF library).

A URL or release file is downloaded once into torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), under a
name that starts with its sha256, through one path (:func:`fetch`): a single request with a timeout (no
retries), written under a temporary name and renamed only once its sha256 matches, so the cache never
holds a partial or wrong file. Every load checks the hash again (:func:`read_verified`). With
``HF_HUB_OFFLINE=1`` nothing is downloaded: the caches are used, or one line says what is missing.

Published weights are listed in a manifest, ``{'architecture.tag': Weights}`` (:func:`read_manifest`); each
entry's ``sources`` are tried in order. The project's own manifest ships inside the package
(``zoo/manifest.json``, :data:`PACKAGE_MANIFEST`) for the project's hub: its folders are read from the
checkout's ``hub/`` when there is one, and downloaded from the release otherwise. Another hub directory
(``$ZOO_HUB_DIR``) has its own ``manifest.json`` (:func:`manifest_path`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from .io import atomic_file, atomic_write_bytes, refuse_special_file

__all__ = [
    'CARD_DATA_NAME',
    'CARD_NAME',
    'CONFIG_NAME',
    'ConfigError',
    'HUB_URL',
    'MANIFEST_KEY',
    'MANIFEST_NAME',
    'PACKAGE_MANIFEST',
    'Sha256',
    'Source',
    'WEIGHTS_NAME',
    'Weights',
    'WeightsError',
    'WeightsHashError',
    'WeightsShapeError',
    'document_error',
    'fetch',
    'fetch_weights',
    'hub_dir',
    'manifest_path',
    'parse_source',
    'read_manifest',
    'read_verified',
    'sha256_file',
    'write_manifest',
]

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
CARD_DATA_NAME = 'card.json'  # the structured data README.md is rendered from (zoo.cards)
MANIFEST_NAME = 'manifest.json'
# The project's own manifest, package data: a wheel lists the published weights as a checkout does.
PACKAGE_MANIFEST = Path(__file__).with_name(MANIFEST_NAME)
# The project's hub folders in a checkout (absent from an installed wheel).
_CHECKOUT_HUB = Path(__file__).resolve().parent.parent / 'hub'
# Where ``release:NAME@REVISION`` files are downloaded from: the hub/ folder of the repository at that
# revision. Set at release; $ZOO_HUB_URL overrides it (with or without the {revision} placeholder).
HUB_URL = 'https://raw.githubusercontent.com/cuttlefish-mrl-zoo/cuttlefish-mrl-zoo/{revision}/hub'
_HUB_URL_VARIABLE = 'ZOO_HUB_URL'
_DOWNLOAD_TIMEOUT_S = 30  # per network operation: an unreachable host fails in this time, not minutes
# Files a model folder may hold instead of safetensors; they are pickles and are never loaded.
_PICKLE_NAMES = ('pytorch_model.bin', 'pytorch_model.pth', 'model.pth', 'model.pt')


class WeightsError(RuntimeError):
    """A weights file could not be found, read or used."""


class WeightsHashError(WeightsError):
    """A weights file's sha256 differs from the one recorded for it (corrupt, truncated or tampered)."""


class WeightsShapeError(WeightsError):
    """A weights file does not fit the architecture it is loaded into."""


class ConfigError(WeightsError):
    """A ``config.json`` or manifest that is not valid data (or is not JSON at all)."""


class SourceError(WeightsError, ValueError):
    """A weights source that cannot be parsed (a ``ValueError`` too: it is a bad argument)."""


class _Unavailable(WeightsError):
    """A source that cannot provide its file here (not in this checkout, offline, unreachable): the next
    source of a manifest entry is tried."""


def document_error(error: ValidationError, where: str) -> ConfigError:
    """One line for a pydantic error of a JSON document: the file, the key path and what is wrong."""
    first = error.errors(include_url=False)[0]
    if first['type'] == 'json_invalid':
        return ConfigError(f'{where} is not valid JSON: {first["ctx"]["error"]}')
    # A manifest key holds a dot itself: ['cf_resnet18_fmnist.cuttlefish'].sha256
    loc = [p for p in first['loc'] if p != '[key]']  # pydantic's marker of an invalid mapping key
    key = ''.join(f'[{p}]' if isinstance(p, int) else f'[{p!r}]' if '.' in p else f'.{p}' for p in loc).lstrip('.')
    if first['type'] in ('extra_forbidden', 'unexpected_keyword_argument'):
        message = 'unknown key'
    elif first['type'] == 'missing':
        message = 'missing (required)'
    else:
        message = first['msg'].removeprefix('Value error, ').replace('Input should be', 'must be')
        if first['type'] != 'value_error':
            message += f', got {first["input"]!r}'
    return ConfigError(f'{where}: {key}: {message}' if key else f'{where}: {message}')


# ----------------------------------------------------------------------------------------------------------
# sources


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed weights source: ``kind`` is ``'local'`` (``location`` a folder), ``'release'`` (a folder of
    the release at ``revision``), ``'url'`` or ``'hf-hub'`` (``location`` a repo id)."""

    kind: str
    location: str
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == 'url':
            return self.location
        return f'{self.kind}:{self.location}' + (f'@{self.revision}' if self.revision else '')

    @property
    def folder(self) -> Path:
        """A local source's folder: absolute paths as given, names inside :func:`hub_dir`."""
        folder = Path(self.location)
        return folder if folder.is_absolute() else hub_dir() / folder

    @property
    def url(self) -> str:
        """Where a ``release`` or ``url`` source's file is downloaded from."""
        if self.kind == 'url':
            return self.location
        base = os.environ.get(_HUB_URL_VARIABLE) or HUB_URL
        return f'{base.replace("{revision}", self.revision).rstrip("/")}/{self.location}/{WEIGHTS_NAME}'


_URL_SCHEMES = ('https://', 'http://', 'file://')


def _is_folder_name(name: str) -> bool:
    return bool(name) and Path(name).name == name and name not in ('.', '..')


def parse_source(text: str) -> Source:
    """The one parser of weight sources (see the module docstring); raises :class:`SourceError`."""
    if not isinstance(text, str):
        raise SourceError(f'a weights source is a string, got {text!r}')
    if text.startswith('hf-hub:'):
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        repo_id, _, revision = text[len('hf-hub:') :].partition('@')
        try:  # here, not inside huggingface_hub, so that a bad id is one line before any request
            validate_repo_id(repo_id)
        except HFValidationError as e:
            raise SourceError(f'weights source {text!r}: {e}') from None
        return Source('hf-hub', repo_id, revision or None)
    if text.startswith(_URL_SCHEMES):
        return Source('url', text)
    if text.startswith('local:') and text != 'local:':
        return Source('local', text[len('local:') :])
    if text.startswith('release:'):
        folder, _, revision = text[len('release:') :].partition('@')
        if not (_is_folder_name(folder) and revision):
            raise SourceError(f'weights source {text!r} must be release:FOLDER@REVISION')
        return Source('release', folder, revision)
    raise SourceError(
        f'weights source {text!r} must start with local:, release:, hf-hub:, https://, http:// or file://'
    )


def hub_dir() -> Path:
    """The folder holding ``local:NAME`` weights: ``$ZOO_HUB_DIR`` or the checkout's ``hub/``."""
    return Path(os.environ.get('ZOO_HUB_DIR') or _CHECKOUT_HUB)


def manifest_path(hub: Path | None = None) -> Path:
    """The manifest of a hub directory (default :func:`hub_dir`): the package's own for the project's
    ``hub/``, ``HUB/manifest.json`` for any other."""
    hub = Path(hub or hub_dir())
    return PACKAGE_MANIFEST if hub.resolve() == _CHECKOUT_HUB else hub / MANIFEST_NAME


# ----------------------------------------------------------------------------------------------------------
# manifest entries


def _sha256_text(value: str) -> str:
    if not (len(value) == 64 and all(c in '0123456789abcdef' for c in value)):
        raise ValueError('must be 64 lowercase hex digits')
    return value


def _source_text(value: str) -> str:
    parse_source(value)
    return value


Sha256 = Annotated[str, AfterValidator(_sha256_text)]
_SourceText = Annotated[str, AfterValidator(_source_text)]
MANIFEST_KEY = r'[a-z0-9_]+\.[a-z0-9_]+'  # 'architecture.tag'


def _manifest_key(key: str) -> str:
    if not re.fullmatch(MANIFEST_KEY, key):
        raise ValueError('must be "architecture.tag" (lowercase letters, digits and _)')
    return key


_Key = Annotated[str, AfterValidator(_manifest_key)]


def _as_tuple(value: Any) -> Any:
    return (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else value


@pydantic_dataclass(frozen=True, config=ConfigDict(strict=True, extra='forbid', allow_inf_nan=False))
class Weights:
    """One published set of weights: where it can come from, its hash, and what it was measured to do.

    ``sources`` are tried in order (one source may be given as a string, e.g.
    ``Weights(sources='https://host/model.safetensors', sha256=...)``). The metadata follows torchvision's
    weights ``meta``: ``num_params`` and ``macs`` (at the published input size) of the model built for
    these weights, ``metrics`` maps a split name to measured figures (``{'Fashion-MNIST test': {'top1':
    89.9}}``), ``recipe`` names the recipe file. ``model_args`` are the constructor arguments the weights
    were trained with (e.g. per-layer ranks), applied whenever the architecture is built for this tag, and
    ``pretrained_cfg`` the entries of timm's pretrained cfg that differ from the architecture's default
    (e.g. ``num_classes`` of a fine-tuned head). ``input_domain`` names the images the weights are meant
    for (``'fashion-mnist'``, ``'fluorescence'``, ``'he'``) and ``microns_per_pixel`` the resolution they
    were trained at, where known. Every field is validated on construction.
    """

    sources: Annotated[tuple[_SourceText, ...], BeforeValidator(_as_tuple), Field(min_length=1)]
    sha256: Sha256
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrained_cfg: dict[str, Any] = dataclasses.field(default_factory=dict)
    num_params: Annotated[int, Field(ge=0)] | None = None
    macs: Annotated[int, Field(ge=0)] | None = None
    dataset: str = ''
    metrics: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    recipe: str = ''
    file_size_mb: Annotated[float, Field(ge=0)] | None = None
    license: str = 'apache-2.0'
    input_domain: str | None = None
    microns_per_pixel: Annotated[float, Field(gt=0, lt=1000)] | None = None


_MANIFEST = TypeAdapter(dict[_Key, Weights])


def read_manifest(path: Path) -> dict[str, Weights]:
    """``{'architecture.tag': Weights}`` of a manifest file (none: empty), validated as a whole document.

    A ``local:`` source of a manifest names a folder of its hub directory, not a path."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        return {}
    try:
        weights = _MANIFEST.validate_json(text)
    except ValidationError as e:
        raise document_error(e, str(path)) from None
    for key, entry in weights.items():
        for i, source in enumerate(entry.sources):
            if source.startswith('local:') and not _is_folder_name(parse_source(source).location):
                raise ConfigError(f'{path}: [{key!r}].sources[{i}]: {source!r} must name a folder of the hub directory')
    return weights


def write_manifest(path: Path, weights: Mapping[str, Weights]) -> None:
    """Write a manifest atomically, in the order given (an architecture's first tag is its default)."""
    entries = {key: dataclasses.asdict(w) for key, w in weights.items()}
    atomic_write_bytes(Path(path), (json.dumps(entries, indent=2) + '\n').encode())


# ----------------------------------------------------------------------------------------------------------
# getting the file


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE  # one switch for every download, as for the Hugging Face cache


def _inside(path: Path, root: Path, what: str) -> Path:
    resolved, root = path.resolve(), root.resolve()
    if not resolved.is_relative_to(root):
        raise WeightsError(
            f'{path} resolves to {resolved}, outside {root}: {what} must stay inside it (symlinks included)'
        )
    return path


def _local_file(source: Source, filename: str) -> Path:
    folder = source.folder
    if not Path(source.location).is_absolute():  # a hub folder stays inside the hub directory
        if not folder.is_dir():
            raise _Unavailable(f'{folder} is not here (a checkout of the zoo holds it in hub/)')
        _inside(folder, hub_dir(), 'a hub folder')
    path = folder / filename
    refuse_special_file(path)
    if not path.is_file():
        pickles = [name for name in _PICKLE_NAMES if (folder / name).is_file()]
        hint = (
            f'; it holds {", ".join(pickles)}, a pickle, which the zoo never loads: re-save the weights with '
            f'safetensors (e.g. timm.models.save_for_hf(model, folder, safe_serialization=True))'
            if pickles
            else f'; a published model folder holds {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME}'
        )
        raise WeightsError(f'{path} does not exist (source {source}){hint}')
    return _inside(path, folder, "a model folder's files")


def _download(url: str, sha256: str) -> Path:
    """A URL's file in torch.hub's cache, downloaded (once, checked before it is kept) if it is not there."""
    cached = Path(torch.hub.get_dir()) / 'checkpoints' / f'{sha256[:12]}-{Path(urllib.parse.urlparse(url).path).name}'
    if cached.is_file():
        return cached
    if _offline():
        raise _Unavailable(f'{url} is not in the cache ({cached}) and HF_HUB_OFFLINE=1 forbids downloading it')
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, atomic_file(cached) as file:
            digest = hashlib.sha256()
            for chunk in iter(lambda: response.read(1 << 20), b''):
                digest.update(chunk)
                file.write(chunk)
            if digest.hexdigest() != sha256:  # raised inside atomic_file: nothing is kept
                raise WeightsHashError(
                    f'{url} served a file with sha256 {digest.hexdigest()} but {sha256} was expected: it is '
                    f'corrupt or was modified, and was not kept'
                )
    except OSError as e:  # URLError, HTTPError, timeouts, a full disk
        reason = getattr(e, 'reason', None) or e.strerror or e
        raise _Unavailable(f'could not download {url} to {cached} ({reason})') from None
    return cached


def _hf_file(source: Source, filename: str, cache_dir) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    where = f'{filename} of {source}'
    cache_only = _offline()
    if not cache_only:
        # One request without retries first: hf_hub_download retries a failed connection for ~30 s.
        try:
            get_hf_file_metadata(hf_hub_url(source.location, filename, revision=source.revision), timeout=10)
        except HfHubHTTPError as e:  # the Hub answered: no such repo, file or revision, or no access
            raise WeightsError(f'could not get {where}: {" ".join(str(e).split())}') from None
        except Exception:  # the transport's errors (requests, httpx) differ between huggingface_hub versions
            cache_only = True
    try:
        return Path(
            hf_hub_download(
                source.location, filename, revision=source.revision, cache_dir=cache_dir, local_files_only=cache_only
            )
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        why = 'HF_HUB_OFFLINE=1 is set' if _offline() else 'the Hugging Face Hub cannot be reached'
        raise _Unavailable(
            f'{where} is not in the Hugging Face cache ({cache_dir or HF_HUB_CACHE}) and {why}'
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise WeightsError(f'could not get {where}: {" ".join(str(e).split())}') from None


def fetch(
    source: str | Source, filename: str = WEIGHTS_NAME, sha256: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A local path to ``filename`` of one ``source`` (taken from a folder or a cache, or downloaded). A URL
    or release file is only downloaded when its ``sha256`` is known, and kept only when it matches; the
    bytes are checked again by :func:`read_verified` when they are read."""
    source = parse_source(source) if isinstance(source, str) else source
    if source.kind == 'local':
        return _local_file(source, filename)
    if source.kind == 'hf-hub':
        return _hf_file(source, filename, cache_dir)
    if filename != WEIGHTS_NAME:
        raise WeightsError(f'a URL source points at one file; cannot fetch {filename} from {source}')
    if sha256 is None:
        raise WeightsError(f'refusing to download {source.url} without a sha256 to check it against')
    return _download(source.url, sha256)


def fetch_weights(weights: Weights, name: str, cache_dir: str | Path | None = None) -> Path:
    """The file of a manifest entry, from the first of its ``sources`` that has it; one line naming
    every place tried when none has."""
    tried = []
    for text in weights.sources:
        try:
            return fetch(text, sha256=weights.sha256, cache_dir=cache_dir)
        except _Unavailable as e:
            tried.append(str(e))
    kinds = {parse_source(text).kind for text in weights.sources}
    advice = ['unset HF_HUB_OFFLINE' if _offline() else 'connect to the network']
    advice[0] += f' (or set {_HUB_URL_VARIABLE} to a mirror)' if 'release' in kinds else ''
    advice += ['load from a checkout of the zoo'] if 'local' in kinds else []
    raise WeightsError(
        f'{name}: its weights cannot be found here: {"; ".join(tried)}. To get them, {", or ".join(advice)}'
    )


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
