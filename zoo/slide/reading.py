"""Reading slides: SVS, NDPI, MRXS... through OpenSlide, plain and OME-TIFF through tifffile, PNG/JPEG whole."""

from __future__ import annotations

import errno
import math
import threading
from pathlib import Path

import numpy as np
import tifffile

from .._arguments import check_positive
from ..io import read_image, refuse_special_file
from .errors import SlideError

_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')
# What a folder of slides is searched for (a file named explicitly is opened whatever its name).
SLIDE_SUFFIXES = ('.svs', '.ndpi', '.mrxs', '.scn', '.vms', '.vmu', '.bif', '.tif', '.tiff') + _IMAGE_SUFFIXES


class Slide:
    """A pyramidal RGB image: level sizes, microns per pixel of level 0 and region reads.

    Attributes:
        level_dimensions: ``(width, height)`` of every level, level 0 the largest.
        level_downsamples: level-0 pixels per pixel of every level.
        mpp: microns per pixel of level 0, or ``None`` when the file does not say.
        origin: level-0 position of the image's pixel (0, 0) as viewers show it (QuPath crops OpenSlide
            images to their ``openslide.bounds-*``); output coordinates are relative to it.
    """

    path: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None = None
    origin: tuple[int, int] = (0, 0)

    def read(self, level: int, left: int, top: int, width: int, height: int) -> np.ndarray:
        """``height x width x 3`` uint8 RGB of ``level``, the box given in that level's pixels (inside it)."""
        raise NotImplementedError

    def thumbnail(self, max_side: int) -> np.ndarray:
        """The whole slide as RGB, its longer side at most ``max_side`` pixels: means of ``f x f`` blocks of the
        smallest level, read in bands of rows so that a slide without a pyramid is never held whole."""
        level = len(self.level_dimensions) - 1
        width, height = self.level_dimensions[level]
        factor = max(1, math.ceil(max(width, height) / max_side))
        band = factor * max(1, 64 // factor)
        rows = []
        for top in range(0, height - factor + 1, band):
            image = self.read(level, 0, top, width - width % factor, min(band, height - top) // factor * factor)
            blocks = image.reshape(image.shape[0] // factor, factor, image.shape[1] // factor, factor, 3)
            rows.append(blocks.mean(axis=(1, 3), dtype=np.float32).round().astype(np.uint8))
        return np.concatenate(rows)

    def close(self) -> None:
        pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArraySlide(Slide):
    """An in-memory ``H x W x 3`` uint8 image as a one-level slide."""

    def __init__(self, image: np.ndarray, mpp: float | None = None, path: str = '<array>'):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f'expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}')
        self.image, self.mpp, self.path = image, mpp, path
        self.level_dimensions = ((image.shape[1], image.shape[0]),)
        self.level_downsamples = (1.0,)

    def read(self, level: int, left: int, top: int, width: int, height: int) -> np.ndarray:
        return np.ascontiguousarray(self.image[top : top + height, left : left + width])


class OpenSlideSlide(Slide):
    """A slide read by OpenSlide (SVS, NDPI, MRXS, SCN, Philips TIFF, generic tiled TIFF...)."""

    def __init__(self, path: Path, openslide_module):
        try:
            self._slide = openslide_module.OpenSlide(str(path))
        except openslide_module.OpenSlideError as e:
            raise SlideError(f'{path}: OpenSlide cannot read this slide: {e}') from None
        properties = self._slide.properties
        self.path = str(path)
        self.level_dimensions = tuple(self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp = _positive_float(properties.get('openslide.mpp-x') or properties.get('aperio.MPP'))
        self.origin = (int(properties.get('openslide.bounds-x', 0)), int(properties.get('openslide.bounds-y', 0)))
        background = properties.get('openslide.background-color', 'FFFFFF')
        self._background = np.array([int(background[i : i + 2], 16) for i in (0, 2, 4)], np.uint8)

    def read(self, level: int, left: int, top: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        location = (round(left * downsample), round(top * downsample))  # OpenSlide wants level-0 coordinates
        rgba = np.asarray(self._slide.read_region(location, level, (width, height)))
        rgb = np.array(rgba[..., :3])
        rgb[rgba[..., 3] == 0] = self._background  # regions without data come back transparent
        return rgb

    def thumbnail(self, max_side: int) -> np.ndarray:
        return np.asarray(self._slide.get_thumbnail((max_side, max_side)).convert('RGB'))

    def close(self) -> None:
        self._slide.close()


class TiffSlide(Slide):
    """A plain or OME-TIFF (pyramidal or not) read by tifffile, region by region.

    Only the tiles or strips a region needs are read and decoded. Grey images become RGB; images of more
    than 8 bits are scaled by the 1st and 99.8th percentiles of the smallest level, as ``zoo.io.read_image``
    scales whole images.
    """

    def __init__(self, path: Path, tif: tifffile.TiffFile):
        self.path, self._tif, self._lock = str(path), tif, threading.Lock()
        series = tif.series[0]
        if series.axes not in ('YX', 'YXS'):
            raise SlideError(f'{path}: TIFF axes {series.axes!r} are not supported; expected YX (grey) or YXS (RGB)')
        self._pages = [level.keyframe for level in series.levels]
        self.level_dimensions = tuple((page.imagewidth, page.imagelength) for page in self._pages)
        self.level_downsamples = tuple(self.level_dimensions[0][0] / width for width, _ in self.level_dimensions)
        self.mpp = _tiff_mpp(tif)
        self._scale = None
        if self._pages[0].dtype != np.uint8:
            smallest = self._read_raw(len(self._pages) - 1, 0, 0, *self.level_dimensions[-1])
            self._check_finite(smallest, len(self._pages) - 1, 0, 0)
            self._scale = tuple(np.percentile(smallest, (1.0, 99.8)))

    def _read_raw(self, level: int, left: int, top: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]
        if page.is_tiled:
            segment_height, segment_width = page.tilelength, page.tilewidth
        else:
            segment_height, segment_width = page.rowsperstrip, page.imagewidth
        segments_per_row = math.ceil(page.imagewidth / segment_width)
        out = np.zeros((height, width, page.samplesperpixel), page.dtype)
        filehandle = self._tif.filehandle
        for row in range(top // segment_height, (top + height - 1) // segment_height + 1):
            for col in range(left // segment_width, (left + width - 1) // segment_width + 1):
                index = row * segments_per_row + col
                with self._lock:
                    filehandle.seek(page.dataoffsets[index])
                    data = filehandle.read(page.databytecounts[index])
                try:
                    segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
                except (ValueError, KeyError, NotImplementedError) as e:
                    raise SlideError(f'{self.path}: cannot decode its {page.compression.name} data ({e})') from None
                segment = segment.reshape(segment.shape[-3:])
                seg_top, seg_left = row * segment_height, col * segment_width
                src = np.s_[
                    max(top - seg_top, 0) : top + height - seg_top, max(left - seg_left, 0) : left + width - seg_left
                ]
                part = segment[src]
                out_top, out_left = max(seg_top - top, 0), max(seg_left - left, 0)
                out[out_top : out_top + part.shape[0], out_left : out_left + part.shape[1]] = part
        return out

    def _check_finite(self, image: np.ndarray, level: int, left: int, top: int) -> None:
        """Refuse NaN or infinite pixels, which no scaling maps to a colour (cast to 8 bits, a NaN becomes 0 and
        a whole slide can turn black), as ``zoo.io.read_image`` refuses them in images."""
        if np.issubdtype(image.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(image)))
            if bad:
                height, width = image.shape[:2]
                raise SlideError(
                    f'{self.path}: {bad:,} values of level {level} at x {left}-{left + width}, y {top}-{top + height} '
                    'are NaN or infinite; replace them (e.g. with 0) and save it again'
                )

    def read(self, level: int, left: int, top: int, width: int, height: int) -> np.ndarray:
        image = self._read_raw(level, left, top, width, height)
        self._check_finite(image, level, left, top)
        if self._scale is not None:
            low, high = self._scale
            image = np.round(np.clip((image.astype(np.float32) - low) / max(high - low, 1e-6), 0, 1) * 255)
            image = image.astype(np.uint8)
        if image.shape[2] == 1:
            return np.repeat(image, 3, axis=2)
        return np.ascontiguousarray(image[..., :3])

    def close(self) -> None:
        self._tif.close()


def _positive_float(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


_MICRONS_PER_UNIT = {'µm': 1.0, 'um': 1.0, 'micron': 1.0, 'nm': 1e-3, 'mm': 1e3, 'cm': 1e4, 'm': 1e6}


def _tiff_mpp(tif: tifffile.TiffFile) -> float | None:
    """Microns per pixel from OME ``PhysicalSizeX`` or the X resolution tag; implausible values (e.g. the
    72 dpi many programs write by default) mean unknown."""
    mpp = None
    if tif.is_ome:
        image = tifffile.xml2dict(tif.ome_metadata)['OME']['Image']
        pixels = (image[0] if isinstance(image, list) else image)['Pixels']
        size = _positive_float(pixels.get('PhysicalSizeX'))
        unit = _MICRONS_PER_UNIT.get(pixels.get('PhysicalSizeXUnit', 'µm'))
        mpp = size * unit if size and unit else None
    else:
        page = tif.pages[0]
        unit = {2: 25400.0, 3: 10000.0}.get(int(page.resolutionunit))  # inch, centimetre
        resolution = page.tags.get('XResolution')
        if unit and resolution:
            numerator, denominator = resolution.value
            mpp = _positive_float(unit * denominator / numerator) if numerator else None
    return mpp if mpp is not None and 0.01 <= mpp <= 100 else None


def _is_tiff(path: Path) -> bool:
    with open(path, 'rb') as file:
        return file.read(4) in (b'II*\0', b'MM\0*', b'II+\0', b'MM\0+')


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a slide: vendor formats through OpenSlide, OME or plain TIFF through tifffile, PNG/JPEG in memory.

    Args:
        path: the slide file (for MRXS, the ``.mrxs`` next to its data folder).
        mpp: microns per pixel of level 0, overriding what the file says (or does not say).

    Raises:
        FileNotFoundError: no such file.
        SlideError: unknown format, unreadable file, or OpenSlide missing for a format only it reads.
    """
    if mpp is not None:
        check_positive('mpp', mpp, error=SlideError)
    path = Path(path)
    refuse_special_file(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, 'no such slide file', str(path))
    slide = _open(path)
    if mpp is not None:
        slide.mpp = float(mpp)
    return slide


def _open(path: Path) -> Slide:
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        try:
            return ArraySlide(read_image(path), path=str(path))
        except OSError as e:
            raise SlideError(f'{path}: unreadable image ({e})') from None
    if _is_tiff(path):
        try:
            tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, ValueError) as e:
            raise SlideError(f'{path}: unreadable TIFF ({e})') from None
        if not tif.series:
            tif.close()
            raise SlideError(f'{path}: unreadable TIFF (no image in it)')
        vendor_tiff = any(getattr(tif, f'is_{vendor}') for vendor in ('svs', 'ndpi', 'scn', 'bif', 'philips'))
        if tif.is_ome or (_openslide_vendor(path) is None and not vendor_tiff):
            return TiffSlide(path, tif)
        tif.close()
    openslide = _import_openslide(path)
    if openslide.OpenSlide.detect_format(str(path)) is None:
        raise SlideError(
            f'{path}: unknown slide format; OpenSlide reads SVS, NDPI, MRXS, SCN, VMS, BIF and tiled TIFF, '
            'tifffile plain and OME-TIFF, and PNG/JPEG images are read whole'
        )
    return OpenSlideSlide(path, openslide)


def _import_openslide(path: Path):
    try:
        import openslide
    except (ImportError, OSError) as e:
        raise SlideError(
            f'{path}: reading this slide needs OpenSlide ({e}); '
            'install it with pip install openslide-python openslide-bin'
        ) from None
    return openslide


def _openslide_vendor(path: Path) -> str | None:
    """OpenSlide's name for the file's format; ``None`` when OpenSlide is missing or does not read it."""
    try:
        import openslide
    except (ImportError, OSError):
        return None
    return openslide.OpenSlide.detect_format(str(path))
