"""File input and output shared by the zoo and the trainer: crash-safe writes and the one image reader.

Every file the zoo or the trainer writes goes through :func:`atomic_write_bytes` (or
:func:`save_safetensors`, built on it): readers see the old file or the new one, never a mix, and a
killed process leaves no half-written file behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from safetensors.torch import save as safetensors_bytes

__all__ = ['atomic_file', 'atomic_write_bytes', 'fsync_dir', 'replace_dir', 'save_safetensors', 'read_image']


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[io.BufferedWriter]:
    """A binary file that replaces ``path`` only once completely written: readers see the old file or the new
    one, never a mix, even after a crash (temporary file in the same folder, fsync, rename, fsync of the folder).
    For outputs written piece by piece; :func:`atomic_write_bytes` for bytes in hand."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
    os.close(fd)  # reopened by name: tifffile wants a file object whose name is a path
    try:
        with open(tmp, 'wb') as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as file:
        file.write(data)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(staging: Path, target: Path) -> None:
    """Move a completely written folder ``staging`` to ``target`` (same file system), replacing ``target`` if it
    exists: the files are made durable first, and readers see the old folder or the new one, never a mix. A
    crash between the two renames leaves the old folder as ``.<name>.old-*`` next to ``target``."""
    for path in Path(staging).rglob('*'):
        if path.is_file():
            with open(path, 'rb') as f:
                os.fsync(f.fileno())
    fsync_dir(Path(staging))
    target = Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f'.{target.name}.old-'))
        os.replace(target, old / target.name)
    os.replace(staging, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old)


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` as a safetensors file, atomically (copied to the CPU: safetensors refuses tensors that
    share storage)."""
    cpu = {k: v.detach().to('cpu', copy=True).contiguous() for k, v in tensors.items()}
    atomic_write_bytes(Path(path), safetensors_bytes(cpu, metadata=dict(metadata) if metadata else None))


def read_image(path: str | Path) -> np.ndarray:
    """An image file (png, jpg, tif) as ``H x W x 3`` uint8 RGB.

    Grey images are repeated to three channels, an alpha channel is dropped, and images with more than
    8 bits (e.g. uint16 fluorescence) are scaled by their 1st and 99.8th percentiles, as CSBDeep does.
    """
    path = Path(path)
    if path.suffix.lower() in ('.tif', '.tiff'):
        array = tifffile.imread(path)
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
            array = np.moveaxis(array, 0, -1)  # channel-first TIFF
    else:
        with Image.open(path) as file:
            # 16/32-bit grey stays as is (converting would clip it); palettes, CMYK... become RGB.
            array = np.asarray(file if file.mode.startswith(('I', 'F')) else file.convert('RGB'))
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f'{path}: expected a grey, RGB or RGBA image, got shape {array.shape}')
    array = array[..., :3]
    if array.dtype != np.uint8:
        low, high = np.percentile(array, (1.0, 99.8))
        array = np.clip((array.astype(np.float32) - low) / max(high - low, 1e-6), 0, 1) * 255
        array = np.round(array).astype(np.uint8)
    return np.ascontiguousarray(array)
