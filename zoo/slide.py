"""Whole-slide nuclei segmentation: a slide in, QuPath-ready nuclei out, with memory bounded by the batch.

:func:`segment_slide` runs a segmentation net (``mrl_seg_*``) over a pyramidal slide:

1. :func:`open_slide` reads SVS, NDPI, MRXS, SCN, tiled TIFF... through OpenSlide, OME-TIFF and plain TIFF
   through tifffile, and PNG/JPEG images into memory.
2. :func:`choose_resolution` picks the pyramid level that matches the model's microns per pixel and
   resamples when no level matches.
3. :func:`tissue_mask` thresholds the saturation of a thumbnail (Otsu), so tiles of bare glass are skipped.
4. Tiles of ``tile`` pixels overlapping by ``overlap`` stream through the network in batches (read ahead by
   ``workers`` threads); each tile is post-processed on its own (HoVer-Net's watershed) and its nuclei are
   stored in an SQLite file, one transaction per batch: a rerun after a kill skips the finished batches.
5. Nuclei are merged across tile borders exactly once (:func:`resolve_duplicates`): a nucleus that touches an
   inner tile border is cut there and dropped (the overlap guarantees a neighbour sees it whole); a nucleus seen
   whole by several tiles is kept from the tile where it lies deepest inside, away from the margin, as
   HoVer-Net keeps each nucleus from the tile where it is not cut.
6. Outputs, each written atomically: GeoJSON that QuPath imports (one detection per nucleus), a per-nucleus CSV
   and optionally a pyramidal OME-TIFF label image.

Nothing proportional to the slide's area is held in memory: per tile, the maps and instance map of one batch;
per slide, the list of tissue tiles and the few nuclei seen twice where tiles overlap.
``zoo.segment.predict_instances`` runs the same tiling and merging on an in-memory image.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import tifffile
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import find_contours
from tqdm import tqdm

from .hovernet.postprocess import hovernet_postprocess
from .io import atomic_file, read_image

__all__ = [
    'Slide',
    'SlideError',
    'SlideWarning',
    'SlideResult',
    'Resolution',
    'TileGrid',
    'open_slide',
    'choose_resolution',
    'tissue_mask',
    'segment_slide',
    'resolve_duplicates',
    'tile_starts',
    'forward_tiles',
]

RESOLUTION_TOLERANCE = 0.1  # a level within 10 % of the target microns per pixel is used as it is
MAX_TISSUE_SATURATION_THRESHOLD = 20  # of 255: bare glass stays below it; Otsu alone splits pale from dark tissue
THUMBNAIL_SIZE = 1024
DUPLICATE_OVERLAP = 0.5  # two views are one nucleus when they share over half of the smaller one's pixels
TYPE_COLOURS = [(128, 128, 128), (255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (255, 128, 0), (0, 200, 200)]
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


class SlideError(ValueError):
    """A slide that cannot be read or processed; the message is one line saying what to do."""


class SlideWarning(UserWarning):
    """Something the user should know about a run (e.g. resolution unknown), which does not stop it."""


# ---------------------------------------------------------------------------------------------------------
# Reading slides


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

    def read(self, level: int, left: int, top: int, width: int, height: int) -> np.ndarray:
        image = self._read_raw(level, left, top, width, height)
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
    path = Path(path)
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


# ---------------------------------------------------------------------------------------------------------
# Resolution and tissue


@dataclass(frozen=True)
class Resolution:
    """Where the network runs: a pyramid level, resampled by ``scale`` level pixels per working pixel.

    ``downsample`` is level-0 pixels per working pixel; ``mpp`` microns per working pixel (``None`` when
    unknown); ``size`` the ``(width, height)`` of the working image.
    """

    level: int
    scale: float
    downsample: float
    mpp: float | None
    size: tuple[int, int]


def choose_resolution(slide: Slide, target_mpp: float | None) -> Resolution:
    """The resolution to run a model trained at ``target_mpp`` microns per pixel on ``slide``.

    The coarsest level no coarser than the target (within 10 %) is read; when its resolution is off by more
    than 10 %, it is resampled to the target (down, or up from level 0 for a target finer than the slide).
    When the model's or the slide's resolution is unknown, level 0 is used as it is, with a
    :class:`SlideWarning` naming the option that fixes it.
    """
    if target_mpp is None or slide.mpp is None:
        level0_mpp = f'{slide.mpp:.3g} µm/px' if slide.mpp else 'unknown µm/px'
        if target_mpp is None:
            reason = "the model's training resolution is unknown; pass the microns per pixel it expects with --mpp"
        else:
            reason = "the slide's resolution is unknown; pass it with --slide-mpp"
        warnings.warn(f'{reason}; running at level 0 ({level0_mpp}) without resampling', SlideWarning, stacklevel=2)
        return Resolution(0, 1.0, 1.0, slide.mpp, slide.level_dimensions[0])
    wanted = target_mpp / slide.mpp  # level-0 pixels per working pixel
    levels = [k for k, d in enumerate(slide.level_downsamples) if d <= wanted * (1 + RESOLUTION_TOLERANCE)]
    level = levels[-1] if levels else 0
    scale = wanted / slide.level_downsamples[level]
    if abs(scale - 1) <= RESOLUTION_TOLERANCE:
        scale = 1.0
    downsample = slide.level_downsamples[level] * scale
    width, height = slide.level_dimensions[level]
    return Resolution(level, scale, downsample, slide.mpp * downsample, (int(width / scale), int(height / scale)))


def read_working(slide: Slide, resolution: Resolution, left: int, top: int, width: int, height: int) -> np.ndarray:
    """``height x width x 3`` RGB of the working image (the level resampled by ``resolution.scale``).

    Resampling maps working pixel centres exactly onto the level (bilinear, after a Gaussian low-pass when
    shrinking, so that fine texture does not alias).
    """
    if resolution.scale == 1.0:
        return slide.read(resolution.level, left, top, width, height)
    scale = resolution.scale
    level_width, level_height = slide.level_dimensions[resolution.level]
    sigma = 0.5 * math.sqrt(scale**2 - 1) if scale > 1 else 0.0
    margin = 2 + math.ceil(4 * sigma)  # the blur's reach: tile borders see real neighbours, not reflections
    x0, y0 = max(math.floor(left * scale) - margin, 0), max(math.floor(top * scale) - margin, 0)
    x1 = min(math.ceil((left + width) * scale) + margin, level_width)
    y1 = min(math.ceil((top + height) * scale) + margin, level_height)
    region = slide.read(resolution.level, x0, y0, x1 - x0, y1 - y0)
    if sigma:
        region = cv2.GaussianBlur(region, (0, 0), sigmaX=sigma)
    to_level = np.array([[scale, 0, (left + 0.5) * scale - 0.5 - x0], [0, scale, (top + 0.5) * scale - 0.5 - y0]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(region, to_level, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def tissue_mask(thumbnail: np.ndarray) -> np.ndarray | None:
    """Tissue pixels of an RGB thumbnail: saturation above its Otsu threshold (at most 20 of 255), closed,
    cleared of specks and dilated by 2 pixels. ``None`` for grey images (fluorescence, greyscale): without
    colour there is no glass to tell apart, and everything is processed."""
    saturation = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV)[..., 1]
    if int(saturation.max()) - int(saturation.min()) < 16:
        return None
    threshold = min(threshold_otsu(saturation), MAX_TISSUE_SATURATION_THRESHOLD)
    mask = ndimage.binary_closing(saturation > threshold, iterations=2)
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    mask = (sizes >= 16)[labels] & (labels > 0)
    return ndimage.binary_dilation(mask, iterations=2)


# ---------------------------------------------------------------------------------------------------------
# Tiles and the network


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: stride ``tile - overlap``, the last tile flush with the far edge."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles covering a ``width x height`` image, numbered row-major."""

    width: int
    height: int
    tile: int
    overlap: int
    lefts: tuple[int, ...] = field(init=False)
    tops: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f'need 0 <= overlap < tile, got overlap {self.overlap}, tile {self.tile}')
        object.__setattr__(self, 'lefts', tuple(tile_starts(self.width, self.tile, self.overlap)))
        object.__setattr__(self, 'tops', tuple(tile_starts(self.height, self.tile, self.overlap)))

    @property
    def tile_size(self) -> tuple[int, int]:
        """``(height, width)`` of every tile (smaller than ``tile`` only for images smaller than a tile)."""
        return min(self.tile, self.height), min(self.tile, self.width)

    def __len__(self) -> int:
        return len(self.lefts) * len(self.tops)

    def origin(self, index: int) -> tuple[int, int]:
        """``(top, left)`` of tile ``index``."""
        row, col = divmod(index, len(self.lefts))
        return self.tops[row], self.lefts[col]

    def inner_sides(self, index: int) -> tuple[bool, bool, bool, bool]:
        """Which of the tile's top, left, bottom, right sides lie inside the image (where nuclei get cut)."""
        row, col = divmod(index, len(self.lefts))
        return row > 0, col > 0, row < len(self.tops) - 1, col < len(self.lefts) - 1

    def overlapping(self, index: int) -> list[int]:
        """Tiles sharing pixels with tile ``index``, itself excluded."""
        (top, left), (tile_h, tile_w) = self.origin(index), self.tile_size
        rows = [r for r, t in enumerate(self.tops) if t < top + tile_h and top < t + tile_h]
        cols = [c for c, x in enumerate(self.lefts) if x < left + tile_w and left < x + tile_w]
        return [r * len(self.lefts) + c for r in rows for c in cols if r * len(self.lefts) + c != index]


def forward_tiles(model: torch.nn.Module, tiles: np.ndarray, device: torch.device) -> dict[str, np.ndarray | None]:
    """Run a segmentation net on ``B x h x w x 3`` uint8 tiles (the model in eval mode, no grad).

    Returns ``np``: ``B x h x w`` nuclear probability, ``hv``: ``B x 2 x h x w``, ``tp``: ``B x T x h x w``
    type probabilities or ``None``, all float32.
    """
    batch = torch.from_numpy(tiles.transpose(0, 3, 1, 2).copy()).to(device).float().div_(255)
    with torch.inference_mode():
        outputs = model(batch)
        maps = {'np': outputs['np'].float().softmax(1)[:, 1], 'hv': outputs['hv'].float()}
        maps['tp'] = outputs['tp'].float().softmax(1) if 'tp' in outputs else None
    return {name: None if value is None else value.cpu().numpy() for name, value in maps.items()}


# ---------------------------------------------------------------------------------------------------------
# Nuclei of one tile, and their store


@dataclass
class Nucleus:
    """One nucleus as one tile saw it, in working-image pixels.

    ``bbox`` is ``(rmin, cmin, rmax, cmax)`` (max exclusive), ``mask`` its pixels inside the box, ``centroid``
    and ``contour`` ``[x, y]`` (the contour as ``cv2.findContours`` traces it), ``depth`` the distance from
    the box to the nearest inner side of the tile (how far from being cut).
    """

    tile: int
    bbox: tuple[int, int, int, int]
    mask: np.ndarray
    centroid: np.ndarray
    contour: np.ndarray
    depth: int
    type: int | None = None
    type_prob: float | None = None
    id: int | None = None

    @cached_property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


def tile_nuclei(grid: TileGrid, index: int, maps: dict[str, np.ndarray | None]) -> list[Nucleus]:
    """Post-process one tile's maps; keep the nuclei not cut by an inner side of the tile."""
    inst_map, inst_info = hovernet_postprocess(maps['np'], maps['hv'], maps['tp'])
    (top, left), (tile_h, tile_w) = grid.origin(index), grid.tile_size
    inner_top, inner_left, inner_bottom, inner_right = grid.inner_sides(index)
    nuclei = []
    for inst_id, info in inst_info.items():
        (rmin, cmin), (rmax, cmax) = info['bbox']
        gaps = [
            gap
            for gap, inner in (
                (rmin, inner_top),
                (cmin, inner_left),
                (tile_h - rmax, inner_bottom),
                (tile_w - cmax, inner_right),
            )
            if inner
        ]
        depth = min(gaps, default=max(tile_h, tile_w))
        if depth == 0:  # touches an inner side: cut there, a neighbouring tile sees it whole
            continue
        nuclei.append(
            Nucleus(
                tile=index,
                bbox=(top + int(rmin), left + int(cmin), top + int(rmax), left + int(cmax)),
                mask=inst_map[rmin:rmax, cmin:cmax] == inst_id,
                centroid=np.asarray(info['centroid'], np.float64) + (left, top),
                contour=np.asarray(info['contour'], np.int64) + (left, top),
                depth=int(depth),
                type=info['type'],
                type_prob=info['type_prob'],
            )
        )
    return nuclei


class NucleusStore:
    """Nuclei per tile in SQLite: on disk for resumable slides, in memory for images.

    Each batch of tiles is one transaction, so a killed run leaves whole batches only.
    """

    def __init__(self, path: str | Path = ':memory:'):
        self.db = sqlite3.connect(str(path))
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY);
            CREATE TABLE IF NOT EXISTS nuclei (
                id INTEGER PRIMARY KEY, tile INTEGER, rmin INTEGER, cmin INTEGER, rmax INTEGER, cmax INTEGER,
                depth INTEGER, cx REAL, cy REAL, type INTEGER, type_prob REAL, mask BLOB, contour BLOB,
                duplicate INTEGER DEFAULT 0);
            CREATE INDEX IF NOT EXISTS nuclei_tile ON nuclei (tile);
            """
        )

    def check_meta(self, meta: dict[str, str], where: str) -> None:
        """Record the run's parameters, or check that those recorded match (a resumed run must be the same)."""
        stored = dict(self.db.execute('SELECT key, value FROM meta'))
        if not stored:
            with self.db:
                self.db.executemany('INSERT INTO meta VALUES (?, ?)', meta.items())
            return
        for key, value in meta.items():
            if stored.get(key) != value:
                raise SlideError(
                    f'{where} holds the tiles of a different run ({key} was {stored.get(key)}, now {value}); '
                    'delete it or choose another output folder'
                )

    def done_batches(self) -> set[int]:
        return {row[0] for row in self.db.execute('SELECT id FROM batches')}

    def add_batch(self, batch: int, nuclei: Sequence[Nucleus]) -> None:
        rows = [
            (
                n.tile,
                *n.bbox,
                n.depth,
                *n.centroid.tolist(),
                n.type,
                n.type_prob,
                np.packbits(n.mask).tobytes(),
                n.contour.astype(np.int32).tobytes(),
            )
            for n in nuclei
        ]
        with self.db:
            self.db.executemany(
                'INSERT INTO nuclei (tile, rmin, cmin, rmax, cmax, depth, cx, cy, type, type_prob, mask, contour) '
                'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                rows,
            )
            self.db.execute('INSERT INTO batches VALUES (?)', (batch,))

    def nuclei(self, tile: int, include_duplicates: bool = False) -> list[Nucleus]:
        query = 'SELECT id, tile, rmin, cmin, rmax, cmax, depth, cx, cy, type, type_prob, mask, contour FROM nuclei '
        query += 'WHERE tile = ?' + ('' if include_duplicates else ' AND duplicate = 0') + ' ORDER BY id'
        return [_nucleus_from_row(row) for row in self.db.execute(query, (tile,))]

    def tiles_with_nuclei(self) -> list[int]:
        return [row[0] for row in self.db.execute('SELECT DISTINCT tile FROM nuclei ORDER BY tile')]

    def mark_duplicates(self, ids: set[int]) -> None:
        with self.db:
            self.db.execute('UPDATE nuclei SET duplicate = 0')
            self.db.executemany('UPDATE nuclei SET duplicate = 1 WHERE id = ?', [(i,) for i in sorted(ids)])

    def close(self) -> None:
        self.db.close()


def _nucleus_from_row(row) -> Nucleus:
    nucleus_id, tile, rmin, cmin, rmax, cmax, depth, cx, cy, inst_type, type_prob, mask, contour = row
    shape = (rmax - rmin, cmax - cmin)
    bits = np.unpackbits(np.frombuffer(mask, np.uint8), count=shape[0] * shape[1])
    return Nucleus(
        tile=tile,
        bbox=(rmin, cmin, rmax, cmax),
        mask=bits.reshape(shape).astype(bool),
        centroid=np.array([cx, cy]),
        contour=np.frombuffer(contour, np.int32).reshape(-1, 2).astype(np.int64),
        depth=depth,
        type=inst_type,
        type_prob=type_prob,
        id=nucleus_id,
    )


def _shared_pixels(a: Nucleus, b: Nucleus) -> int:
    top, left = max(a.bbox[0], b.bbox[0]), max(a.bbox[1], b.bbox[1])
    bottom, right = min(a.bbox[2], b.bbox[2]), min(a.bbox[3], b.bbox[3])
    if top >= bottom or left >= right:
        return 0
    window_a = a.mask[top - a.bbox[0] : bottom - a.bbox[0], left - a.bbox[1] : right - a.bbox[1]]
    window_b = b.mask[top - b.bbox[0] : bottom - b.bbox[0], left - b.bbox[1] : right - b.bbox[1]]
    return int(np.count_nonzero(window_a & window_b))


def resolve_duplicates(store: NucleusStore, grid: TileGrid) -> int:
    """Mark the nuclei seen by more than one tile so that each is kept exactly once; returns how many.

    Two nuclei from overlapping tiles are views of one nucleus when they share over half of the smaller
    one's pixels. Views are taken greedily from the deepest inside its tile (ties: lower tile, then
    lower id); a view is dropped when it duplicates one already taken. Only tile pairs that overlap are
    compared, two tiles' nuclei at a time.
    """
    edges: dict[int, set[int]] = {}
    rank: dict[int, tuple[int, int, int]] = {}
    tile_h, tile_w = grid.tile_size
    for index in store.tiles_with_nuclei():
        others = [other for other in grid.overlapping(index) if other > index]
        if not others:
            continue
        mine = store.nuclei(index, include_duplicates=True)
        for other in others:
            top, left = grid.origin(other)
            near = [
                a
                for a in mine
                if a.bbox[0] < top + tile_h and top < a.bbox[2] and a.bbox[1] < left + tile_w and left < a.bbox[3]
            ]
            if not near:
                continue
            for b in store.nuclei(other, include_duplicates=True):
                for a in near:
                    if _shared_pixels(a, b) > DUPLICATE_OVERLAP * min(a.area, b.area):
                        edges.setdefault(a.id, set()).add(b.id)
                        edges.setdefault(b.id, set()).add(a.id)
                        rank[a.id], rank[b.id] = (-a.depth, a.tile, a.id), (-b.depth, b.tile, b.id)
    taken, dropped = set(), set()
    for nucleus_id in sorted(edges, key=rank.__getitem__):
        (dropped if edges[nucleus_id] & taken else taken).add(nucleus_id)
    store.mark_duplicates(dropped)
    return len(dropped)


# ---------------------------------------------------------------------------------------------------------
# Running the network over tiles


@dataclass
class Timings:
    """Seconds spent per stage. ``read`` is summed over reader threads (it overlaps the network when
    ``workers > 0``); ``read_wait`` is how long the network waited for tiles."""

    read: float = 0.0
    read_wait: float = 0.0
    network: float = 0.0
    postprocess: float = 0.0
    merge: float = 0.0
    write: float = 0.0
    total: float = 0.0

    def add(self, name: str, seconds: float) -> None:
        setattr(self, name, getattr(self, name) + seconds)


def _timed(timings: Timings, name: str, function: Callable, *args):
    start = time.perf_counter()
    try:
        return function(*args)
    finally:
        timings.add(name, time.perf_counter() - start)


def run_tiles(
    model: torch.nn.Module,
    read_tile: Callable[[int, int, int, int], np.ndarray],
    grid: TileGrid,
    tiles: Sequence[int],
    store: NucleusStore,
    *,
    batch_size: int,
    workers: int = 0,
    device: torch.device | None = None,
    progress: bool | str = False,
    timings: Timings | None = None,
) -> int:
    """Segment ``tiles`` of ``grid`` batch by batch into ``store``, skipping the batches it already holds.

    ``read_tile(left, top, width, height)`` returns a tile's RGB; with ``workers`` threads the next batches
    are read while the network runs. ``progress`` shows a bar (a string sets its label). Returns the number of
    tiles processed now.
    """
    timings = timings if timings is not None else Timings()
    device = device or next(model.parameters()).device
    batches = [tiles[first : first + batch_size] for first in range(0, len(tiles), batch_size)]
    done = store.done_batches()
    todo = [b for b in range(len(batches)) if b not in done]
    tile_h, tile_w = grid.tile_size

    def read_batch(batch: int) -> np.ndarray:
        def read_one(index):
            top, left = grid.origin(index)
            return read_tile(left, top, tile_w, tile_h)

        return np.stack([_timed(timings, 'read', read_one, index) for index in batches[batch]])

    bar = tqdm(
        total=len(tiles),
        initial=len(tiles) - sum(len(batches[b]) for b in todo),
        unit='tile',
        desc=progress if isinstance(progress, str) else None,
        disable=not progress,
        dynamic_ncols=True,
    )
    was_training = model.training
    model.eval()
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    try:
        pending, found = {}, 0
        for position, batch in enumerate(todo):
            for ahead in todo[position : position + 1 + workers] if pool else ():  # `workers` batches ahead
                if ahead not in pending:
                    pending[ahead] = pool.submit(read_batch, ahead)
            images = _timed(timings, 'read_wait', pending.pop(batch).result) if pool else read_batch(batch)
            maps = _timed(timings, 'network', forward_tiles, model, images, device)
            nuclei = []
            for i, index in enumerate(batches[batch]):
                tile_maps = {name: None if value is None else value[i] for name, value in maps.items()}
                nuclei += _timed(timings, 'postprocess', tile_nuclei, grid, index, tile_maps)
            _timed(timings, 'postprocess', store.add_batch, batch, nuclei)
            found += len(nuclei)
            bar.set_postfix_str(f'{found} nuclei', refresh=False)
            bar.update(len(batches[batch]))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        model.train(was_training)
        bar.close()
    return sum(len(batches[b]) for b in todo)


# ---------------------------------------------------------------------------------------------------------
# Outputs


def nucleus_polygon(nucleus: Nucleus) -> np.ndarray:
    """The nucleus outline as a closed ``N x 2`` ``[x, y]`` ring on pixel edges (working-image pixels,
    pixel ``(r, c)`` covering ``[c, c + 1) x [r, r + 1)``), counter-clockwise on screen.

    Marching squares on the hole-filled mask never crosses itself, so the ring is a valid polygon;
    collinear points are dropped.
    """
    mask = np.pad(ndimage.binary_fill_holes(nucleus.mask), 1).astype(np.float32)
    contours = find_contours(mask, 0.5)
    ring = max(contours, key=len)[:, ::-1] + (nucleus.bbox[1] - 0.5, nucleus.bbox[0] - 0.5)  # [x, y]
    previous, following = np.roll(ring[:-1], 1, axis=0), np.roll(ring[:-1], -1, axis=0)
    cross = (ring[:-1, 0] - previous[:, 0]) * (following[:, 1] - ring[:-1, 1]) - (ring[:-1, 1] - previous[:, 1]) * (
        following[:, 0] - ring[:-1, 0]
    )
    ring = ring[:-1][np.abs(cross) > 1e-9]
    ring = np.vstack([ring, ring[:1]])
    signed_area = np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
    return ring if signed_area < 0 else ring[::-1]  # y points down: negative shoelace is counter-clockwise


@dataclass
class SlideResult:
    """What :func:`segment_slide` did: counts, the resolution used, output paths and time per stage."""

    num_nuclei: int
    tiles: int
    tissue_tiles: int
    tiles_run: int
    duplicates: int
    resolution: Resolution
    megapixels: float
    geojson: Path
    csv: Path
    label_image: Path | None
    store: Path
    timings: Timings


def _file_size(path: str) -> int | None:
    return os.path.getsize(path) if os.path.isfile(path) else None


def _model_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _type_names(model: torch.nn.Module, type_names: Sequence[str] | None) -> list[str] | None:
    num_types = getattr(model, 'num_types', 0) or 0
    if not num_types:
        return None
    names = list(type_names or getattr(model, 'pretrained_cfg', {}).get('label_names') or [])
    return names if len(names) == num_types else [f'Type {k}' for k in range(num_types)]


def _write_tables(
    store: NucleusStore,
    grid: TileGrid,
    resolution: Resolution,
    slide: Slide,
    type_names: list[str] | None,
    geojson_path: Path,
    csv_path: Path,
) -> int:
    """Stream the kept nuclei, tile by tile, into the GeoJSON and CSV files; returns their number."""
    factor, (origin_x, origin_y) = resolution.downsample, slide.origin
    area_unit = (resolution.mpp or 1.0) ** 2
    area_name = 'Area µm^2' if resolution.mpp else 'Area px^2'
    count = 0
    with atomic_file(geojson_path) as geo, atomic_file(csv_path) as table_file:
        table_text = io.TextIOWrapper(table_file, encoding='utf-8', newline='')
        table = csv.writer(table_text)
        table.writerow(
            [
                'id',
                'centroid_x',
                'centroid_y',
                'area_um2' if resolution.mpp else 'area_px',
                'type',
                'type_name',
                'type_prob',
            ]
        )
        geo.write(b'{"type": "FeatureCollection", "features": [')
        for index in range(len(grid)):
            for nucleus in store.nuclei(index):
                count += 1
                ring = nucleus_polygon(nucleus) * factor - (origin_x, origin_y)
                centroid = (nucleus.centroid + 0.5) * factor - (origin_x, origin_y)  # pixel centre, level 0
                area = nucleus.area * area_unit
                measurements = {
                    area_name: round(area, 3),
                    'Centroid X px': round(centroid[0], 2),
                    'Centroid Y px': round(centroid[1], 2),
                }
                properties = {'objectType': 'detection', 'name': f'Nucleus {count}'}
                name = None
                if type_names is not None and nucleus.type is not None:
                    name = type_names[nucleus.type]
                    colour = TYPE_COLOURS[nucleus.type % len(TYPE_COLOURS)]
                    properties['classification'] = {'name': name, 'color': list(colour)}
                    measurements['Type probability'] = round(float(nucleus.type_prob), 4)
                properties['measurements'] = measurements
                feature = {
                    'type': 'Feature',
                    'id': str(uuid.uuid5(uuid.NAMESPACE_URL, f'{Path(slide.path).name}#{count}')),  # QuPath reads UUIDs
                    'geometry': {'type': 'Polygon', 'coordinates': [np.round(ring, 2).tolist()]},
                    'properties': properties,
                }
                geo.write((',\n' if count > 1 else '\n').encode() + json.dumps(feature, allow_nan=False).encode())
                table.writerow(
                    [
                        count,
                        f'{centroid[0]:.2f}',
                        f'{centroid[1]:.2f}',
                        f'{area:.3f}',
                        '' if nucleus.type is None else nucleus.type,
                        name or '',
                        '' if nucleus.type_prob is None else f'{nucleus.type_prob:.4f}',
                    ]
                )
        geo.write(b'\n]}\n')
        table_text.flush()
        table_text.detach()
    return count


def paint_labels(
    store: NucleusStore, grid: TileGrid, ids: dict[int, int], top: int, left: int, shape: tuple[int, int], step: int = 1
) -> np.ndarray:
    """int32 labels of the working image sampled at ``(top + i * step, left + j * step)``; nuclei carry ``ids``."""
    height, width = shape
    labels = np.zeros(shape, np.int32)
    bottom, right = top + height * step, left + width * step
    rows = [r for r, t in enumerate(grid.tops) if t < bottom and top < t + grid.tile_size[0]]
    cols = [c for c, x in enumerate(grid.lefts) if x < right and left < x + grid.tile_size[1]]
    for index in (r * len(grid.lefts) + c for r in rows for c in cols):
        for nucleus in store.nuclei(index):
            rmin, cmin, rmax, cmax = nucleus.bbox
            i0, i1 = max(-(-(rmin - top) // step), 0), min(-(-(rmax - top) // step), height)
            j0, j1 = max(-(-(cmin - left) // step), 0), min(-(-(cmax - left) // step), width)
            if i0 >= i1 or j0 >= j1:
                continue
            sampled = nucleus.mask[top + i0 * step - rmin :: step, left + j0 * step - cmin :: step][
                : i1 - i0, : j1 - j0
            ]
            labels[i0:i1, j0:j1][sampled] = ids[nucleus.id]
    return labels


def _write_label_image(
    store: NucleusStore, grid: TileGrid, resolution: Resolution, path: Path, tile: int = 256
) -> None:
    """Pyramidal OME-TIFF of the nucleus ids (int32, zlib), written tile by tile; levels halve (nearest)."""
    ids = {}
    for index in range(len(grid)):
        for nucleus in store.nuclei(index):
            ids[nucleus.id] = len(ids) + 1
    width, height = grid.width, grid.height
    levels = 1
    while max(width, height) >> levels >= 2 * tile:
        levels += 1

    def tiles(step: int) -> Iterator[np.ndarray]:
        level_h, level_w = -(-height // step), -(-width // step)
        for i in range(0, level_h, tile):
            for j in range(0, level_w, tile):
                shape = (min(tile, level_h - i), min(tile, level_w - j))
                out = np.zeros((tile, tile), np.int32)
                out[: shape[0], : shape[1]] = paint_labels(store, grid, ids, i * step, j * step, shape, step)
                yield out

    options = dict(tile=(tile, tile), compression='zlib', photometric='minisblack', dtype=np.int32)
    resolution_options = {}
    metadata = {'axes': 'YX', 'Name': 'nuclei'}
    if resolution.mpp:
        metadata.update(
            PhysicalSizeX=resolution.mpp, PhysicalSizeXUnit='µm', PhysicalSizeY=resolution.mpp, PhysicalSizeYUnit='µm'
        )
        resolution_options = dict(resolution=(1e4 / resolution.mpp, 1e4 / resolution.mpp), resolutionunit='CENTIMETER')
    with atomic_file(path) as file, tifffile.TiffWriter(file, bigtiff=True, ome=True) as writer:
        writer.write(
            tiles(1), shape=(height, width), subifds=levels - 1, metadata=metadata, **resolution_options, **options
        )
        for level in range(1, levels):
            step = 2**level
            level_resolution = {}
            if resolution.mpp:
                level_resolution = dict(resolution=(1e4 / resolution.mpp / step,) * 2, resolutionunit='CENTIMETER')
            shape = (-(-height // step), -(-width // step))
            writer.write(tiles(step), shape=shape, subfiletype=1, metadata=None, **level_resolution, **options)


# ---------------------------------------------------------------------------------------------------------
# The whole slide


def segment_slide(
    model: torch.nn.Module | str,
    slide: str | Path | Slide,
    out_dir: str | Path,
    *,
    mpp: float | None = None,
    slide_mpp: float | None = None,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    workers: int = 2,
    detect_tissue: bool = True,
    label_image: bool = False,
    type_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SlideResult:
    """Segment the nuclei of a whole slide; write ``<stem>.geojson``, ``<stem>.csv`` (and ``<stem>_labels.ome.tif``).

    Args:
        model: a segmentation net (``mrl_seg_*``) or the name of published weights, e.g.
            ``'mrl_seg_nano.stardist'``.
        slide: a slide path (see :func:`open_slide`) or an open :class:`Slide`.
        out_dir: where outputs go; ``<stem>.tiles.sqlite`` there holds finished tiles, so rerunning the same
            call after a kill continues where it stopped.
        mpp: microns per pixel to run the model at; default ``model.microns_per_pixel``. When neither is
            known, level 0 is used as it is (with a :class:`SlideWarning`).
        slide_mpp: microns per pixel of the slide's level 0, overriding the file's.
        tile, overlap: network tile side and the pixels neighbouring tiles share; a nucleus is found whole
            when it is smaller than ``overlap``.
        batch_size: tiles per forward pass (memory grows with it, not with the slide).
        workers: threads reading and decoding tiles ahead of the network (0: read in turn).
        detect_tissue: skip tiles without tissue (:func:`tissue_mask`).
        label_image: also write a pyramidal OME-TIFF of nucleus ids at the working resolution.
        type_names: names of the model's nuclear types (default: its ``label_names``, else ``Type k``).
        device: where to run; the model is moved there.
        progress: show a progress bar with ETA on stderr.
    """
    owned = not isinstance(slide, Slide)
    slide = open_slide(slide) if owned else slide  # a bad slide fails before the model loads
    if slide_mpp is not None:
        slide.mpp = float(slide_mpp)
    try:
        if isinstance(model, str):
            import zoo  # the package, for create_model (zoo does not import zoo.slide)

            model = zoo.create_model(model, pretrained=True)
        if device is not None:
            model.to(device)
        device = next(model.parameters()).device
        return _segment_open_slide(
            model,
            slide,
            Path(out_dir),
            mpp=mpp if mpp is not None else getattr(model, 'microns_per_pixel', None),
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            workers=workers,
            detect_tissue=detect_tissue,
            label_image=label_image,
            type_names=_type_names(model, type_names),
            device=device,
            progress=progress,
        )
    finally:
        if owned:
            slide.close()


def _segment_open_slide(
    model,
    slide: Slide,
    out_dir: Path,
    *,
    mpp,
    tile,
    overlap,
    batch_size,
    workers,
    detect_tissue,
    label_image,
    type_names,
    device,
    progress,
) -> SlideResult:
    start = time.perf_counter()
    timings = Timings()
    resolution = choose_resolution(slide, mpp)
    width, height = resolution.size
    grid = TileGrid(width, height, tile, overlap)
    tiles = list(range(len(grid)))
    if detect_tissue:
        tiles = _tissue_tiles(slide, grid, resolution)
    stem = Path(slide.path).stem
    out_dir.mkdir(parents=True, exist_ok=True)
    store_path = out_dir / f'{stem}.tiles.sqlite'
    store = NucleusStore(store_path)
    try:
        store.check_meta(
            {
                'slide': f'{Path(slide.path).name} {slide.level_dimensions[0]} {_file_size(slide.path)}',
                'model': _model_fingerprint(model),
                'resolution': f'level {resolution.level} x{resolution.scale:.6g} {resolution.size}',
                'tiles': f'{tile}/{overlap} batch {batch_size} tissue {detect_tissue} {len(tiles)}',
            },
            str(store_path),
        )
        tiles_run = run_tiles(
            model,
            lambda left, top, w, h: read_working(slide, resolution, left, top, w, h),
            grid,
            tiles,
            store,
            batch_size=batch_size,
            workers=workers,
            device=device,
            progress=stem if progress else False,
            timings=timings,
        )
        duplicates = _timed(timings, 'merge', resolve_duplicates, store, grid)
        write_start = time.perf_counter()
        geojson_path, csv_path = out_dir / f'{stem}.geojson', out_dir / f'{stem}.csv'
        count = _write_tables(store, grid, resolution, slide, type_names, geojson_path, csv_path)
        label_path = None
        if label_image:
            label_path = out_dir / f'{stem}_labels.ome.tif'
            _write_label_image(store, grid, resolution, label_path)
        timings.add('write', time.perf_counter() - write_start)
    finally:
        store.close()
    timings.total = time.perf_counter() - start
    tile_h, tile_w = grid.tile_size
    return SlideResult(
        num_nuclei=count,
        tiles=len(grid),
        tissue_tiles=len(tiles),
        tiles_run=tiles_run,
        duplicates=duplicates,
        resolution=resolution,
        megapixels=len(tiles) * tile_h * tile_w / 1e6,
        geojson=geojson_path,
        csv=csv_path,
        label_image=label_path,
        store=store_path,
        timings=timings,
    )


def _tissue_tiles(slide: Slide, grid: TileGrid, resolution: Resolution) -> list[int]:
    """Tiles with any tissue pixel of the thumbnail's mask under them (all tiles for grey slides)."""
    thumbnail = slide.thumbnail(THUMBNAIL_SIZE)
    mask = tissue_mask(thumbnail)
    if mask is None:
        return list(range(len(grid)))
    level0_width, level0_height = slide.level_dimensions[0]
    per_working_x = mask.shape[1] / level0_width * resolution.downsample
    per_working_y = mask.shape[0] / level0_height * resolution.downsample
    tile_h, tile_w = grid.tile_size
    kept = []
    for index in range(len(grid)):
        top, left = grid.origin(index)
        rows = slice(int(top * per_working_y), math.ceil((top + tile_h) * per_working_y))
        cols = slice(int(left * per_working_x), math.ceil((left + tile_w) * per_working_x))
        if mask[rows, cols].any():
            kept.append(index)
    return kept
