"""The nuclei of one tile: HoVer-Net's post-processing of its maps, keeping the nuclei no inner tile side cuts."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..hovernet.postprocess import hovernet_postprocess
from .tiles import TileGrid


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
