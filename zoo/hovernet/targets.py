"""HoVer-Net training targets (Graham et al., MedIA 2019).

* NP: the binary nuclear-pixel mask.
* HV: for every nuclear pixel, its horizontal (channel 0) and vertical (channel 1) offset to
  the centre of mass of its instance. Per instance and per direction, negative offsets are
  divided by the largest negative magnitude and positive ones by the largest positive offset,
  so the two extremes of each nucleus read -1 and +1 and background is 0.

Two differences from HoVer-Net's ``targets.py``, both sub-pixel: offsets are measured from the
exact centre of mass (HoVer-Net rounds it to a pixel and its index grid starts at 1, which
shifts the zero crossing by up to one pixel), and the work is done on each instance's pixels
inside its bounding box rather than on a padded box crop.

:func:`hovernet_targets` reproduces HoVer-Net's crop-level rules: ids shared by disconnected
parts (e.g. copies made by mirror padding) are split first, and instances with fewer than
``min_size`` pixels inside the output window get no HV target but stay in the NP mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

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
    """Give every 4-connected part of an instance its own id.

    Mirror padding copies a nucleus near the border to a disconnected place with the same id,
    and HoVer-Net splits such copies before building targets (``fix_mirror_padding``). The first
    part keeps its id; the others get new ids above the current maximum. Returns int32.
    """
    inst_map = np.asarray(inst_map, dtype=np.int32).copy()
    next_id = int(inst_map.max(initial=0)) + 1
    for inst_id, box in enumerate(ndimage.find_objects(inst_map), start=1):
        if box is None:
            continue
        parts, num_parts = ndimage.label(inst_map[box] == inst_id)
        box_view = inst_map[box]
        for part in range(2, num_parts + 1):
            box_view[parts == part] = next_id
            next_id += 1
    return inst_map


def hv_map(
    inst_map: np.ndarray,
    min_size: int = 0,
    count_window: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """HoVer-Net horizontal/vertical distance maps, shape ``(2, H, W)`` float32.

    Args:
        inst_map: ``H x W`` instance ids, 0 = background.
        min_size: instances with fewer than this many pixels get no HV target (zeros).
        count_window: where pixels are counted for ``min_size`` (default: the whole map).
            HoVer-Net counts inside the output crop, so an instance that is mostly cut away
            there is skipped even though its HV values are computed on the full input.
    """
    inst_map = np.asarray(inst_map)
    hv = np.zeros((2, *inst_map.shape), dtype=np.float32)
    counted = inst_map if count_window is None else inst_map[count_window]
    areas = np.bincount(counted.ravel(), minlength=int(inst_map.max(initial=0)) + 1)
    for inst_id, box in enumerate(ndimage.find_objects(inst_map), start=1):
        if box is None or areas[inst_id] < max(min_size, 1):
            continue
        rows, cols = np.nonzero(inst_map[box] == inst_id)
        offsets = np.stack([cols - cols.mean(), rows - rows.mean()])
        for direction in offsets:  # x, then y: each normalised on its own
            negative, positive = direction < 0, direction > 0
            if negative.any():
                direction[negative] /= -direction[negative].min()
            if positive.any():
                direction[positive] /= direction[positive].max()
        hv[:, rows + box[0].start, cols + box[1].start] = offsets
    return hv


def hovernet_targets(
    inst_map: np.ndarray,
    type_map: np.ndarray | None = None,
    output_size: int | tuple[int, int] | None = None,
    min_size: int = 30,
) -> dict[str, np.ndarray]:
    """NP, HV (and TP) targets of one input crop, centre-cropped to ``output_size``.

    HV is computed on the whole input crop and cropped afterwards, so nuclei cut by the output
    window keep the offsets of their visible extent in the input. Returns ``np`` (int64 HxW),
    ``hv`` (float32 2xHxW), ``inst`` (int32 HxW, disconnected parts split, for validation
    metrics) and, with ``type_map``, ``tp`` (int64 HxW).
    """
    inst_map = split_disconnected_instances(inst_map)
    height, width = inst_map.shape
    window = center_window(height, width, output_size) if output_size else (slice(None), slice(None))
    targets = {
        'np': np_map(inst_map[window]),
        'hv': hv_map(inst_map, min_size=min_size, count_window=window)[:, window[0], window[1]],
        'inst': inst_map[window],
    }
    if type_map is not None:
        targets['tp'] = np.asarray(type_map, dtype=np.int64)[window]
    return targets
