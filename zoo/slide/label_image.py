"""Writing nucleus ids as a pyramidal OME-TIFF label image, tile by tile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from ..io import atomic_file
from .resolution import Resolution
from .store import NucleusStore
from .tiles import TileGrid


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


def write_label_image(store: NucleusStore, grid: TileGrid, resolution: Resolution, path: Path, tile: int = 256) -> None:
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
