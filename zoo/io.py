"""File input and output shared by the zoo and the trainer: crash-safe writes and the one image reader.

:func:`read_image` is how every image file enters the zoo (``zoo predict``, :mod:`zoo.segment`, the dataset
readers): it decodes deliberately (16-bit and float scaled by stated rules, NaN refused, pixel limit) and
raises :class:`ImageReadError` with one line naming the file for anything it cannot read faithfully.

Every file the zoo or the trainer writes goes through :func:`atomic_write_bytes` (or
:func:`save_safetensors`, built on it): readers see the old file or the new one, never a mix, and a
killed process leaves no half-written file behind.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import save as safetensors_bytes

from ._arguments import check_count

__all__ = [
    'atomic_file',
    'atomic_write_bytes',
    'fsync_dir',
    'replace_dir',
    'save_safetensors',
    'read_image',
    'refuse_special_file',
    'to_grey',
    'max_image_pixels',
    'ImageReadError',
]


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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a full disk shows at write or fsync: say which file
            e.filename = str(path)
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


_SPECIAL_FILES = (
    (stat.S_ISFIFO, 'a named pipe (FIFO)'),
    (stat.S_ISSOCK, 'a socket'),
    (stat.S_ISCHR, 'a character device'),
    (stat.S_ISBLK, 'a block device'),
)


def refuse_special_file(path: str | Path) -> None:
    """Raise ``OSError`` naming ``path`` if it is a named pipe, a socket or a device, before anything opens it:
    reading one can block forever or never end. A missing path or a folder passes (its reader says what it
    expected)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing, unreadable, a NUL in the name: opening it reports that
        return
    kind = next((kind for is_kind, kind in _SPECIAL_FILES if is_kind(mode)), None)
    if kind is not None:
        raise OSError(errno.EINVAL, f'is {kind}, not a regular file; give a file', str(path))


class ImageReadError(ValueError):
    """An image file that cannot be used as input; the one-line message names the file and what to do."""


DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # 10,000 x 10,000: 300 MB as RGB, a few GB of segmentation maps
_MAX_PIXELS_VARIABLE = 'ZOO_MAX_IMAGE_PIXELS'
_TIFF_MAGIC = (b'II*\x00', b'MM\x00*', b'II+\x00', b'MM\x00+')  # classic and BigTIFF, both byte orders
_PIL_LIMIT = threading.Lock()
# What decoders raise for damaged files: truncated data, broken chunks, bad headers.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


def max_image_pixels() -> int:
    """The largest image :func:`read_image` decodes: ``$ZOO_MAX_IMAGE_PIXELS`` or 100,000,000 pixels."""
    text = os.environ.get(_MAX_PIXELS_VARIABLE)
    if text is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text.replace('_', ''))
    except ValueError:
        value = 0
    if value < 1:
        raise ImageReadError(f'{_MAX_PIXELS_VARIABLE} must be a positive number of pixels, got {text!r}')
    return value


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """An image file (PNG, JPEG, TIFF, or anything else Pillow reads) as ``H x W x 3`` uint8 RGB.

    Decoding is deliberate; anything it cannot do faithfully raises :class:`ImageReadError` naming the file:

    * 8-bit images are used as stored (palettes, CMYK, YCbCr converted to RGB by Pillow). Grey is repeated
      to three channels; an alpha channel is dropped (the colour under transparent pixels is kept).
    * Integer images with more than 8 bits (16-bit microscopy) are scaled by their 1st and 99.8th
      percentiles to 0-255, as CSBDeep/StarDist normalise fluorescence: such data rarely fills its
      container (a 12-bit camera uses 1/16 of uint16), so dividing by 65535 would give a near-black image,
      and clipping at 255 (Pillow's ``convert``) a white one. Float images with every value in [0, 1] are
      multiplied by 255 (scikit-image's convention); other floats are percentile-scaled like 16-bit data.
      Such an image with a single value everywhere is refused (there is nothing to scale).
    * NaN or infinite pixels are refused (scaling cannot place them; they would become black).
    * Multi-page TIFFs and multi-frame files (stacks, pyramids, whole slides, animations) are refused:
      save the page to use as its own file (whole slides go through ``zoo.slide``).
    * Empty, truncated or corrupt files, directories and non-images are refused.
    * Images above ``max_pixels`` pixels are refused before decoding (a guard against decompression bombs
      and out-of-memory): default :func:`max_image_pixels`, i.e. ``$ZOO_MAX_IMAGE_PIXELS`` or 100,000,000.
    """
    path = Path(path)
    if max_pixels is not None:
        check_count('max_pixels', max_pixels, error=ImageReadError)
    limit = max_pixels or max_image_pixels()
    if path.is_dir():
        raise ImageReadError(f'{path}: is a directory, not an image file')
    refuse_special_file(path)
    try:
        with open(path, 'rb') as file:
            magic = file.read(4)
    except FileNotFoundError:
        raise ImageReadError(f'{path}: no such file') from None
    if not magic:
        raise ImageReadError(f'{path}: the file is empty (0 bytes)')
    array = _read_tiff(path, limit) if magic in _TIFF_MAGIC else _read_with_pillow(path, limit)
    return _to_rgb_uint8(array, path)


def to_grey(image: np.ndarray) -> np.ndarray:
    """``H x W`` uint8 luma of an ``H x W x 3`` uint8 RGB image, exactly as Pillow's ``convert('L')`` (ITU-R
    601-2); an image whose channels are equal (grey read by :func:`read_image`) gives that channel back."""
    weights = np.array([19595, 38470, 7471], dtype=np.uint32)  # 0.299, 0.587, 0.114 in 1/65536
    return ((image.astype(np.uint32) @ weights + 0x8000) >> 16).astype(np.uint8)


def _too_large(path: Path, width: int, height: int, limit: int) -> ImageReadError:
    return ImageReadError(
        f'{path}: {width:,} x {height:,} = {width * height:,} pixels is above the limit of {limit:,} '
        f'(a guard against decompression bombs); set {_MAX_PIXELS_VARIABLE} to a larger number to read it'
    )


def _read_tiff(path: Path, limit: int) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) != 1:
                raise ImageReadError(
                    f'{path}: a TIFF with {len(tif.pages)} pages (a stack, pyramid or slide); '
                    'save the page to use as its own file'
                )
            page = tif.pages[0]
            if page.imagewidth * page.imagelength > limit:
                raise _too_large(path, page.imagewidth, page.imagelength, limit)
            if page.photometric in (tifffile.PHOTOMETRIC.SEPARATED, tifffile.PHOTOMETRIC.PALETTE):
                raise ImageReadError(f'{path}: a {page.photometric.name} TIFF; save it as RGB or grey')
            array = page.asarray()
            if 'S' in page.axes and page.axes.index('S') == 0:  # planar configuration: samples first
                array = np.moveaxis(array, 0, -1)
            if page.photometric == tifffile.PHOTOMETRIC.MINISWHITE:  # 0 is white: invert to the usual sense
                array = ~array if array.dtype == bool else _invert(array)
            return array
    except ImageReadError:
        raise
    except (tifffile.TiffFileError, *_DECODE_ERRORS) as e:
        if 'imagecodecs' in str(e):  # tifffile decodes LZW, JPEG, ... through that optional package
            raise ImageReadError(f'{path}: {_one_line(e)} to decode this TIFF: pip install imagecodecs') from None
        raise ImageReadError(
            f'{path}: cannot decode this TIFF ({_one_line(e)}); the file is damaged or incomplete'
        ) from None


def _invert(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.integer):
        return np.iinfo(array.dtype).max - array
    return array.max() - array


def _read_with_pillow(path: Path, limit: int) -> np.ndarray:
    try:
        with _PIL_LIMIT:  # this function applies its own limit, to every format; Pillow's is lifted meanwhile
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                file = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise ImageReadError(f'{path}: not an image file (neither Pillow nor tifffile can read it)') from None
    except _DECODE_ERRORS as e:
        raise ImageReadError(
            f'{path}: cannot decode this image ({_one_line(e)}); the file is damaged or incomplete'
        ) from None
    with file:
        if getattr(file, 'n_frames', 1) > 1:
            raise ImageReadError(
                f'{path}: a {file.format} file with {file.n_frames} frames; save the frame to use as its own file'
            )
        if file.width * file.height > limit:
            raise _too_large(path, file.width, file.height, limit)
        try:
            file.load()
            if file.mode.startswith(('I', 'F')):  # 16/32-bit grey: scaled below (convert() would clip it)
                return np.asarray(file)
            return np.asarray(file.convert('L' if file.mode in ('1', 'L', 'LA', 'La') else 'RGB'))
        except _DECODE_ERRORS as e:
            raise ImageReadError(
                f'{path}: cannot decode this {file.format} image ({_one_line(e)}); the file is damaged or incomplete'
            ) from None


def _one_line(error: BaseException) -> str:
    return ' '.join(str(error).split()) or type(error).__name__


def _to_rgb_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageReadError(
            f'{path}: expected a grey, RGB or RGBA image, got an array of shape {array.shape} '
            '(several channels or planes); save it as one grey or RGB image'
        )
    array = array[..., :3]  # drop alpha
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = _scale_to_uint8(array, path)
    return np.ascontiguousarray(np.broadcast_to(array, (*array.shape[:2], 3)))


def _scale_to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """More than 8 bits to 0-255 (see :func:`read_image` for the rules and why)."""
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageReadError(f'{path}: pixels of type {array.dtype} are not an image; expected integers or floats')
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ImageReadError(
                f'{path}: {bad:,} of {array.size:,} values are NaN or infinite; replace them (e.g. with 0) and '
                'save it again'
            )
        if array.min() >= 0 and array.max() <= 1:
            return np.round(array.astype(np.float64) * 255).astype(np.uint8)
    low, high = np.percentile(array, (1.0, 99.8))
    if high <= low:
        low, high = array.min(), array.max()
        if high <= low:
            raise ImageReadError(f'{path}: every pixel is {low}: an empty {array.dtype} image, nothing to scale')
    scaled = np.clip((array.astype(np.float32) - low) / (high - low), 0, 1) * 255
    return np.round(scaled).astype(np.uint8)
