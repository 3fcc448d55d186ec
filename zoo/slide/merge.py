"""Merging across tile borders: each nucleus seen by several overlapping tiles is kept exactly once."""

from __future__ import annotations

import functools

import numpy as np

from .nuclei import Nucleus
from .store import NucleusStore
from .tiles import TileGrid

DUPLICATE_OVERLAP = 0.5  # two views are one nucleus when they share over half of the smaller one's pixels


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
    # Tiles are visited in order and compared with later neighbours, at most a row of tiles (and one) ahead.
    nuclei = functools.lru_cache(maxsize=2 * len(grid.lefts) + 2)(
        lambda index: store.nuclei(index, include_duplicates=True)
    )
    for index in store.tiles_with_nuclei():
        others = [other for other in grid.overlapping(index) if other > index]
        if not others:
            continue
        mine = nuclei(index)
        for other in others:
            top, left = grid.origin(other)
            near = [
                a
                for a in mine
                if a.bbox[0] < top + tile_h and top < a.bbox[2] and a.bbox[1] < left + tile_w and left < a.bbox[3]
            ]
            if not near:
                continue
            near_top, near_left, near_bottom, near_right = np.array([a.bbox for a in near]).T
            for b in nuclei(other):
                top_b, left_b, bottom_b, right_b = b.bbox
                boxes_meet = (
                    (near_top < bottom_b) & (top_b < near_bottom) & (near_left < right_b) & (left_b < near_right)
                )
                for a in (near[i] for i in np.flatnonzero(boxes_meet)):
                    if _shared_pixels(a, b) > DUPLICATE_OVERLAP * min(a.area, b.area):
                        edges.setdefault(a.id, set()).add(b.id)
                        edges.setdefault(b.id, set()).add(a.id)
                        rank[a.id], rank[b.id] = (-a.depth, a.tile, a.id), (-b.depth, b.tile, b.id)
    taken, dropped = set(), set()
    for nucleus_id in sorted(edges, key=rank.__getitem__):
        (dropped if edges[nucleus_id] & taken else taken).add(nucleus_id)
    store.mark_duplicates(dropped)
    return len(dropped)
