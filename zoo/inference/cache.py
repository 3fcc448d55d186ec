"""The export cache: a model is exported once per weights, architecture and input size, and reused by every
process after.

Entries live under :func:`cache_dir` (``$ZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``), in
``exports/<architecture>-<key>/``, one ``<size>.onnx`` (``256x256``, or ``dynamic``) next to ``<size>.json``, its
record: the sha256 of the ``.onnx``, its output names and how long the export took. The key hashes the weights
(:func:`model_sha256`), every submodule's class and hyper-parameters (a window size or a stride changes the
graph, not the state dict), torch's version and :data:`EXPORT_FORMAT`.

* Both files are written atomically (:func:`zoo.io.atomic_write_bytes`) under an exclusive ``flock`` on
  ``<size>.lock``, and read under a shared one: two processes exporting the same model wait for each other and
  the second reuses the first's export; a reader never sees a half-replaced entry.
* A reused export is read once and checked against its recorded sha256 before a runtime sees it: an entry that
  does not match (damaged, truncated or modified) is refused with one :class:`InferenceWarning` line and
  exported again.
* A cache folder that cannot be written (read-only, full) costs an export per process, with one warning line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..io import atomic_write_bytes
from .errors import InferenceWarning

__all__ = ['EXPORT_FORMAT', 'cache_dir', 'cached_export', 'export_folder', 'model_sha256', 'model_name']

EXPORT_FORMAT = 1  # raise when the way models are exported changes: older entries are then not reused

_log = logging.getLogger('zoo.inference')
_PLAIN = (bool, int, float, str, type(None))


def cache_dir() -> Path:
    """``$ZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``."""
    if os.environ.get('ZOO_CACHE_DIR'):
        return Path(os.environ['ZOO_CACHE_DIR'])
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'zoo'


def model_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's weights as loaded: its state dict's names and tensor bytes (whatever the file's layout),
    the same in every process."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _is_plain(value) -> bool:
    return isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(_is_plain(v) for v in value))


def _architecture(model: torch.nn.Module) -> str:
    """Every submodule's class and plain settings (sizes, strides, modes): what shapes the graph besides the
    weights."""
    lines = []
    for name, module in model.named_modules():
        settings = {k: v for k, v in sorted(vars(module).items()) if k[0] != '_' and k != 'training' and _is_plain(v)}
        lines.append(f'{name} {type(module).__module__}.{type(module).__qualname__} {settings!r}')
    return '\n'.join(lines)


def export_folder(model: torch.nn.Module, root: Path | None = None) -> Path:
    """The cache folder of ``model``'s exports: ``<root>/exports/<architecture>-<key>``."""
    key = hashlib.sha256(
        '\n'.join((model_sha256(model), _architecture(model), torch.__version__, str(EXPORT_FORMAT))).encode()
    ).hexdigest()[:16]
    name = re.sub(r'[^A-Za-z0-9_.-]', '_', model_name(model))
    return Path(root or cache_dir()) / 'exports' / f'{name}-{key}'


@contextlib.contextmanager
def _locked(path: Path, operation: int) -> Iterator[None]:
    with open(path, 'ab') as file:  # created if absent, never truncated: the lock lives on this inode
        fcntl.flock(file, operation)
        yield  # closing the file releases the lock


def _read_entry(onnx_path: Path, record_path: Path, warn: bool) -> tuple[bytes, dict] | None:
    """The export and its record when both are there and agree; ``None`` (with a warning line) otherwise."""
    if not onnx_path.exists() and not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        data = onnx_path.read_bytes()
    except (OSError, ValueError):
        problem = 'is incomplete'
    else:
        if isinstance(record, dict) and hashlib.sha256(data).hexdigest() == record.get('sha256'):
            return data, record
        problem = f'does not match the sha256 recorded in {record_path.name} (damaged or modified)'
    if warn:
        warnings.warn(f'{onnx_path}: the cached export {problem}; exporting again', InferenceWarning, stacklevel=4)
    return None


def cached_export(folder: Path, name: str, export: Callable[[], tuple[bytes, dict]]) -> tuple[bytes, dict]:
    """``folder/<name>.onnx`` and its record, exported by ``export()`` (bytes and a JSON-able record) when the
    cache has no valid copy. The bytes returned are the ones checked, read once."""
    onnx_path, record_path, lock_path = (folder / f'{name}{suffix}' for suffix in ('.onnx', '.json', '.lock'))
    exported = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(lock_path, fcntl.LOCK_SH):
            found = _read_entry(onnx_path, record_path, warn=True)
        if found is not None:
            return found
        with _locked(lock_path, fcntl.LOCK_EX):
            found = _read_entry(onnx_path, record_path, warn=False)  # another process may have exported it
            if found is not None:
                return found
            exported = _with_sha256(*export())
            atomic_write_bytes(onnx_path, exported[0])
            atomic_write_bytes(record_path, json.dumps(exported[1], indent=2).encode())
    except OSError as e:
        if e.filename is None:
            raise  # not the cache's files: the export's own failure
        warnings.warn(
            f'cannot use the export cache {folder} ({e.strerror or e}); the export serves this process only',
            InferenceWarning,
            stacklevel=3,
        )
        return exported or _with_sha256(*export())
    _log.info('exported %s (%s) in %.1f s to %s', folder.name, name, exported[1]['seconds'], onnx_path)
    return exported


def _with_sha256(data: bytes, record: dict) -> tuple[bytes, dict]:
    return data, dict(record, sha256=hashlib.sha256(data).hexdigest())


def model_name(model: torch.nn.Module) -> str:
    """The model's architecture name (timm's ``pretrained_cfg``), else its class name."""
    return getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
