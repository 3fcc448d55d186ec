"""Polygons back to pixels: the inverse of ``geojson.py``'s outlines, in the same convention.

A polygon is a list of rings (``N x 2`` ``[x, y]`` arrays, the first the outline, any others holes) on pixel edges:
pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``, as :func:`~zoo.slide.geojson.nucleus_polygon` writes them and
as QuPath places its objects. A pixel belongs to the polygon when its centre ``(c + 0.5, r + 0.5)`` is inside, by
the even-odd rule over all rings (so holes are left out); a centre exactly on an edge is inside when the interior
lies immediately to its right, or below it on a horizontal edge (the rule of ``java.awt.Shape.contains``), so
polygons that share an edge never share a pixel. ``nucleus_polygon``'s outlines run through the midpoints of pixel
edges and never through a pixel centre, so a nucleus' polygon gives back its hole-filled mask exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ['polygon_pixels']


def polygon_pixels(rings: Sequence[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``rows, cols`` of the pixels of an image of ``shape`` whose centres the polygon covers (see the module).

    Rings may be closed (last point = first) or not; parts outside the image are clipped. Like
    ``skimage.draw.polygon``, the result indexes an array directly: ``labels[rows, cols] = nucleus_id``.
    """
    rings = [np.asarray(ring, dtype=np.float64).reshape(-1, 2) for ring in rings]
    points = np.concatenate(rings) if rings else np.zeros((0, 2))
    if len(points) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    if not np.isfinite(points).all():
        raise ValueError('polygon coordinates must be finite numbers')
    # Only centres within the polygon's extent can be inside: rows r with ymin <= r + 0.5 < ymax, likewise columns.
    (xmin, ymin), (xmax, ymax) = points.min(axis=0), points.max(axis=0)
    top, bottom = max(math.ceil(ymin - 0.5), 0), min(math.ceil(ymax - 0.5), shape[0])
    left, right = max(math.ceil(xmin - 0.5), 0), min(math.ceil(xmax - 0.5), shape[1])
    if top >= bottom or left >= right:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    starts = points
    ends = np.concatenate([np.roll(ring, -1, axis=0) for ring in rings])  # every ring closed on itself
    centres_y = np.arange(top, bottom) + 0.5
    # An edge crosses the row when its ends lie on either side, the lower end (larger y) excluded: half-open.
    above_start, above_end = starts[:, 1:2] > centres_y, ends[:, 1:2] > centres_y
    edge, row = np.nonzero(above_start != above_end)
    x0, y0, x1, y1 = starts[edge, 0], starts[edge, 1], ends[edge, 0], ends[edge, 1]
    crossing_x = x0 + (centres_y[row] - y0) * (x1 - x0) / (y1 - y0)
    # A crossing at x flips every centre strictly left of it: columns c with c + 0.5 < x, i.e. c < ceil(x - 0.5).
    flips_before = np.clip(np.ceil(crossing_x - 0.5).astype(np.int64) - left, 0, right - left)
    # Only the parity of the count matters, so uint8 (wrapping mod 256) keeps a large region's arrays small.
    counts = np.zeros((bottom - top, right - left + 1), np.uint8)
    np.add.at(counts, (row, flips_before), 1)
    crossings_right = np.cumsum(counts[:, ::-1], axis=1, dtype=np.uint8)[:, ::-1][:, 1:]  # crossings right of each
    rows, cols = np.nonzero(crossings_right % 2 == 1)
    return rows + top, cols + left
