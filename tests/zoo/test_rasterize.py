"""Polygons back to pixels (zoo.slide.polygon_pixels): the inverse of the GeoJSON writer's outlines."""

import numpy as np
import pytest
from scipy import ndimage

from zoo.slide import Nucleus, nucleus_polygon, polygon_pixels


def _mask(rings, shape) -> np.ndarray:
    rows, cols = polygon_pixels(rings, shape)
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def test_the_writers_outline_gives_back_the_nucleus_exactly():
    """Random 4-connected shapes (what the watershed yields), holes and pinches included, placed anywhere: the
    polygon nucleus_polygon writes covers exactly the shape's hole-filled pixels."""
    rng = np.random.default_rng(0)
    tested = 0
    for _ in range(600):
        blob = rng.random(rng.integers(1, 14, 2)) < rng.uniform(0.3, 0.9)
        labels, count = ndimage.label(blob)
        if count == 0:
            continue
        shape_mask = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        rows, cols = np.nonzero(shape_mask)
        mask = shape_mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        top, left = (int(v) for v in rng.integers(0, 6, 2))
        bbox = (top, left, top + mask.shape[0], left + mask.shape[1])
        nucleus = Nucleus(tile=0, bbox=bbox, mask=mask, centroid=np.zeros(2), contour=np.zeros((1, 2)), depth=1)
        expected = np.zeros((24, 24), bool)
        expected[bbox[0] : bbox[2], bbox[1] : bbox[3]] = ndimage.binary_fill_holes(mask)
        np.testing.assert_array_equal(_mask([nucleus_polygon(nucleus)], (24, 24)), expected)
        tested += 1
    assert tested > 500


def test_centres_on_edges_belong_to_one_side_only():
    # Edges through pixel centres: x = 0.5 and 2.5, y = 0.5 and 2.5. The left and top edges take their centres,
    # the right and bottom edges do not, so the square beside it (x 2.5..4.5) takes column 2 and no pixel twice.
    left_square = np.array([[0.5, 0.5], [2.5, 0.5], [2.5, 2.5], [0.5, 2.5]])
    right_square = left_square + (2.0, 0.0)
    first, second = _mask([left_square], (4, 6)), _mask([right_square], (4, 6))
    assert np.argwhere(first).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert np.argwhere(second).tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]
    # The same square traced the other way round, and closed, is the same polygon.
    np.testing.assert_array_equal(_mask([np.vstack([left_square[::-1], left_square[-1:]])], (4, 6)), first)


def test_holes_and_clipping():
    outline = np.array([[-3.0, -3.0], [7.0, -3.0], [7.0, 7.0], [-3.0, 7.0]])  # beyond the 5x5 image on 2 sides
    hole = np.array([[1.0, 1.0], [3.0, 1.0], [3.0, 3.0], [1.0, 3.0]])
    expected = np.ones((5, 5), bool)
    expected[1:3, 1:3] = False
    np.testing.assert_array_equal(_mask([outline, hole], (5, 5)), expected)
    assert _mask([outline + 100], (5, 5)).sum() == 0  # entirely outside
    assert _mask([], (5, 5)).sum() == 0
    with pytest.raises(ValueError, match='finite'):
        polygon_pixels([np.array([[0.0, 0.0], [np.nan, 1.0], [1.0, 1.0]])], (5, 5))
