"""Tissue detection: which tiles of a slide hold tissue, from a thumbnail's saturation."""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from .reading import Slide
from .resolution import Resolution
from .tiles import TileGrid

MAX_TISSUE_SATURATION_THRESHOLD = 20  # of 255: bare glass stays below it; Otsu alone splits pale from dark tissue
THUMBNAIL_SIZE = 1024


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


def tissue_tiles(slide: Slide, grid: TileGrid, resolution: Resolution) -> list[int]:
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
