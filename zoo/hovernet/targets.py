"""HoVer-Net training targets (Graham et al., MedIA 2019), as HoVer-Net's ``models/hovernet/targets.py``
computes them (``tests/zoo/hovernet/test_oracles.py`` checks every value against the reference code).

* NP: the binary nuclear-pixel mask.
* HV: for every nuclear pixel, its horizontal (channel 0) and vertical (channel 1) offset to the centre
  of mass of its instance. HoVer-Net rounds the centre of mass to a pixel (``int(c + 0.5)``) and counts
  pixels from 1, so a pixel's offset is ``index + 1 - rounded centre``: the zero lands one pixel left of
  (above) the rounded centre, up to 1.5 px from the exact one. Per instance and per direction, negative
  offsets are divided by the largest negative magnitude and positive ones by the largest positive offset,
  so the extremes of each nucleus read -1 and +1 and background is 0.

:func:`hovernet_targets` reproduces HoVer-Net's crop-level rules: ids shared by disconnected parts (e.g.
copies made by mirror padding) are split first, and instances with fewer than ``min_size`` pixels inside
the output window get no HV target but stay in the NP mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import relabel_sequential

__all__ = ['center_window', 'hovernet_targets', 'hv_map', 'np_map', 'split_disconnected_instances']


def center_window(height: int, width: int, size: int | tuple[int, int]) -> tuple[slice, slice]:
    """Row and column slices of the centred ``size`` window of an ``height x width`` array.

    Uses HoVer-Net's ``cropping_center`` rounding: the offset is half the difference, rounded down.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if out_h > height or out_w > width:
        raise ValueError(f'crop {out_h}x{out_w} is larger than the {height}x{width} input')
    top, left = (height - out_h) // 2, (width - out_w) // 2
    return slice(top, top + out_h), slice(left, left + out_w)


def np_map(inst_map: np.ndarray) -> np.ndarray:
    """Binary nuclear-pixel mask (int64, 1 = nucleus), ready to be a cross-entropy target."""
    return (np.asarray(inst_map) > 0).astype(np.int64)


def split_disconnected_instances(inst_map: np.ndarray) -> np.ndarray:
    """Give every 4-connected part of an instance its own id (HoVer-Net ``fix_mirror_padding``).

    Mirror padding copies a nucleus near the border to a disconnected place with the same id, and
    HoVer-Net splits such copies before building targets. Ids are visited in ascending order; the first
    part keeps its id, part ``k > 1`` gets ``k + m``, where ``m`` is the largest id in the map so far
    (updated after each id). Returns int32.
    """
    split = np.array(inst_map, dtype=np.int32)
    largest_id = int(split.max(initial=0))
    compact = relabel_sequential(split)[0]  # ascending order kept; find_objects needs small ids
    for index, box in enumerate(ndimage.find_objects(compact), start=1):
        parts, num_parts = ndimage.label(compact[box] == index)
        if num_parts > 1:
            extra = parts > 1
            split[box][extra] = parts[extra] + largest_id
            largest_id += num_parts
    return split


def _normalise_sides(offsets: np.ndarray) -> None:
    """Divide negative offsets by the largest negative magnitude and positive ones by the largest, in place."""
    negative, positive = offsets < 0, offsets > 0
    if negative.any():
        offsets[negative] /= -offsets[negative].min()
    if positive.any():
        offsets[positive] /= offsets[positive].max()


def _centre_offsets(coords: np.ndarray, exact_centre: bool) -> np.ndarray:
    if exact_centre:
        return coords - coords.mean()
    # HoVer-Net: int(c + 0.5) of the centre of mass, on a pixel grid that starts at 1.
    return (coords + 1 - np.floor(coords.mean() + 0.5)).astype(np.float32)


def hv_map(
    inst_map: np.ndarray,
    min_size: int = 0,
    count_window: tuple[slice, slice] | None = None,
    exact_centre: bool = False,
) -> np.ndarray:
    """HoVer-Net horizontal/vertical distance maps, shape ``(2, H, W)`` float32.

    Args:
        inst_map: ``H x W`` instance ids, 0 = background.
        min_size: instances with fewer than this many pixels get no HV target (zeros).
        count_window: where pixels are counted for ``min_size`` (default: the whole map). HoVer-Net
            counts inside the output crop, so an instance that is mostly cut away there is skipped even
            though its HV values are computed on the full input.
        exact_centre: measure offsets from the exact centre of mass instead of HoVer-Net's rounded,
            one-pixel-shifted one (symmetric targets; not HoVer-Net's definition, off by default).
    """
    inst_map = relabel_sequential(np.asarray(inst_map))[0]  # small ids for bincount and find_objects
    hv = np.zeros((2, *inst_map.shape), dtype=np.float32)
    counted = inst_map if count_window is None else inst_map[count_window]
    areas = np.bincount(counted.ravel(), minlength=int(inst_map.max(initial=0)) + 1)
    for inst_id, box in enumerate(ndimage.find_objects(inst_map), start=1):
        if areas[inst_id] < max(min_size, 1):
            continue
        rows, cols = np.nonzero(inst_map[box] == inst_id)
        rows, cols = rows + box[0].start, cols + box[1].start
        for channel, coords in enumerate((cols, rows)):  # x, then y: each normalised on its own
            offsets = _centre_offsets(coords, exact_centre)
            _normalise_sides(offsets)
            hv[channel, rows, cols] = offsets
    return hv


def hovernet_targets(
    inst_map: np.ndarray,
    type_map: np.ndarray | None = None,
    output_size: int | tuple[int, int] | None = None,
    min_size: int = 30,
    exact_centre: bool = False,
) -> dict[str, np.ndarray]:
    """NP, HV (and TP) targets of one input crop, centre-cropped to ``output_size``.

    HV is computed on the whole input crop and cropped afterwards, so nuclei cut by the output
    window keep the offsets of their visible extent in the input. Returns ``np`` (int64 HxW),
    ``hv`` (float32 2xHxW), ``inst`` (int32 HxW, disconnected parts split, for validation
    metrics) and, with ``type_map``, ``tp`` (int64 HxW). ``exact_centre`` is :func:`hv_map`'s option.
    """
    inst_map = split_disconnected_instances(inst_map)
    height, width = inst_map.shape
    window = center_window(height, width, output_size) if output_size else (slice(None), slice(None))
    targets = {
        'np': np_map(inst_map[window]),
        'hv': hv_map(inst_map, min_size, window, exact_centre)[:, window[0], window[1]],
        'inst': inst_map[window],
    }
    if type_map is not None:
        targets['tp'] = np.asarray(type_map, dtype=np.int64)[window]
    return targets
