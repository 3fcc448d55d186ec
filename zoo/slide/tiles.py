"""Tiling: overlapping tiles covering an image, numbered row-major."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._arguments import check_count
from .errors import SlideError

MIN_TILE = 32  # the segmenters pad a tile to a multiple of 32: a smaller one costs as much and covers less
MAX_BATCH_PIXELS = 2**28  # one batch's pixels (batch_size x tile x tile), 256 tiles of 1024 px: memory grows with it


def check_tiling(tile: int, overlap: int, batch_size: int) -> None:
    """Tiling that bounds the work: tiles of at least ``MIN_TILE`` px, an overlap of at most half a tile (beyond
    it every pixel runs through the network four times or more) and batches of at most ``MAX_BATCH_PIXELS``."""
    check_count('tile', tile, MIN_TILE, error=SlideError)
    check_count('overlap', overlap, 0, tile // 2, error=SlideError)
    check_count('batch_size', batch_size, 1, error=SlideError)
    if batch_size * tile * tile > MAX_BATCH_PIXELS:
        raise SlideError(
            f'a batch of {batch_size} tiles of {tile} px is {batch_size * tile * tile / 1e6:.0f} megapixels; '
            f'at most {MAX_BATCH_PIXELS / 1e6:.0f} go through the network at once: give a smaller batch_size or tile'
        )


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
