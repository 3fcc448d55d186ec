"""HoVer-Net post-processing: NP probabilities + HV maps -> nuclear instance map.

Marker-controlled watershed as in HoVer-Net's ``models/hovernet/post_proc.py``
(Graham et al., MedIA 2019):

1. threshold NP at 0.5, label the blobs, drop objects under 10 px;
2. min-max normalise the H and V maps, take their Sobel derivatives (ksize 21), min-max
   normalise those and invert them (``1 - d``); the edge map ``E`` is their maximum;
3. ``E = max(E - (1 - blob), 0)`` keeps edges inside nuclei only;
4. the watershed surface is ``-GaussianBlur3x3((1 - E) * blob)``;
5. markers are ``blob - (E >= 0.4)``, hole-filled, opened with a 5x5 ellipse, labelled, and
   cleared of objects under 10 px;
6. watershed of the surface from those markers, restricted to the blob.

Labelling uses 4-connectivity, as ``scipy.ndimage.label`` does by default in HoVer-Net. Used at
inference as well as for validation, so it depends only on numpy, scipy, OpenCV and skimage.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

__all__ = ['hovernet_postprocess']

NP_THRESHOLD = 0.5
EDGE_THRESHOLD = 0.4
MIN_OBJECT_SIZE = 10
SOBEL_KSIZE = 21


def _remove_small_labels(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero every label with fewer than ``min_size`` pixels (skimage ``remove_small_objects``)."""
    areas = np.bincount(labels.ravel())
    too_small = areas < min_size
    too_small[0] = False
    labels[too_small[labels]] = 0
    return labels


def _minmax(array: np.ndarray) -> np.ndarray:
    return cv2.normalize(array, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)


def _instance_types(
    inst_map: np.ndarray, num_instances: int, type_map: np.ndarray, num_types: int
) -> tuple[np.ndarray, np.ndarray]:
    """Majority type of each instance and the fraction of its pixels of that type (HoVer-Net's
    ``type_prob``); background (0) wins only if nothing else is present.

    Ties go to the lower type id, as in HoVer-Net's stable sort by pixel count.
    """
    counts = np.bincount(
        inst_map.ravel().astype(np.int64) * num_types + type_map.ravel(),
        minlength=(num_instances + 1) * num_types,
    ).reshape(num_instances + 1, num_types)[1:]
    majority = counts.argmax(axis=1)
    has_foreground_type = counts[:, 1:].sum(axis=1) > 0
    majority_foreground = counts[:, 1:].argmax(axis=1) + 1
    majority = np.where((majority == 0) & has_foreground_type, majority_foreground, majority)
    chosen = np.take_along_axis(counts, majority[:, None], axis=1)[:, 0]
    return majority, chosen / np.maximum(counts.sum(axis=1), 1)


def _instance_info(inst_map: np.ndarray, types: np.ndarray | None, type_probs: np.ndarray | None) -> dict[int, dict]:
    """Bounding box, centroid and contour of every instance, as HoVer-Net's ``process`` reports them.

    The contour is the first outer contour of ``cv2.findContours`` (``CHAIN_APPROX_SIMPLE``) as ``[x, y]``
    points and the centroid the ``cv2.moments`` centre of the instance's pixels, both in image coordinates.
    """
    info = {}
    for inst_id, window in enumerate(ndimage.find_objects(inst_map), start=1):
        if window is None:
            continue
        mask = (inst_map[window] == inst_id).astype(np.uint8)
        offset = np.array([window[1].start, window[0].start])  # x, y
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        moments = cv2.moments(mask, binaryImage=True)
        info[inst_id] = {
            'bbox': np.array([[window[0].start, window[1].start], [window[0].stop, window[1].stop]]),
            'centroid': np.array([moments['m10'] / moments['m00'], moments['m01'] / moments['m00']]) + offset,
            'contour': contours[0][:, 0].astype(np.int64) + offset,
            'type': None if types is None else int(types[inst_id - 1]),
            'type_prob': None if type_probs is None else float(type_probs[inst_id - 1]),
        }
    return info


def hovernet_postprocess(
    np_prob: np.ndarray,
    hv: np.ndarray,
    tp_prob: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, dict]]:
    """Instance map and per-instance information from HoVer-Net's NP, HV and optional TP outputs.

    Args:
        np_prob: ``H x W`` nuclear-pixel probability (softmax channel 1).
        hv: ``2 x H x W`` horizontal (channel 0) and vertical (channel 1) maps.
        tp_prob: optional ``T x H x W`` type probabilities (or logits; only the argmax is used).

    Returns:
        ``inst_map``: ``H x W`` int32, 0 = background, instances numbered ``1..N``;
        ``inst_info``: ``{instance id: {'bbox': [[rmin, cmin], [rmax, cmax]] (max exclusive),
        'centroid': [x, y], 'contour': N x 2 [x, y] points, 'type': int, 'type_prob': float}}``; the type is
        the majority vote of the per-pixel TP argmax and ``type_prob`` its share of the instance's pixels,
        both ``None`` without ``tp_prob``.
    """
    np_prob = np.asarray(np_prob, dtype=np.float32)
    hv = np.asarray(hv, dtype=np.float32)
    if np_prob.ndim != 2 or hv.shape != (2, *np_prob.shape):
        raise ValueError(f'expected np_prob HxW and hv 2xHxW, got {np_prob.shape} and {hv.shape}')
    tp_prob = None if tp_prob is None else np.asarray(tp_prob)
    if tp_prob is not None and (tp_prob.ndim != 3 or tp_prob.shape[1:] != np_prob.shape):
        raise ValueError(f'expected tp_prob TxHxW with HxW = {np_prob.shape}, got {tp_prob.shape}')

    blobs, _ = ndimage.label(np_prob >= NP_THRESHOLD)
    blob = (_remove_small_labels(blobs, MIN_OBJECT_SIZE) > 0).astype(np.float32)

    sobel_h = cv2.Sobel(_minmax(hv[0]), cv2.CV_64F, 1, 0, ksize=SOBEL_KSIZE)
    sobel_v = cv2.Sobel(_minmax(hv[1]), cv2.CV_64F, 0, 1, ksize=SOBEL_KSIZE)
    edges = np.maximum(1.0 - _minmax(sobel_h), 1.0 - _minmax(sobel_v))
    edges = np.maximum(edges - (1.0 - blob), 0.0)

    # Nuclei are peaks of (1 - E) * blob; negate so they become the watershed basins.
    surface = -cv2.GaussianBlur((1.0 - edges) * blob, (3, 3), 0)

    markers = np.maximum(blob - (edges >= EDGE_THRESHOLD), 0.0)
    markers = ndimage.binary_fill_holes(markers).astype(np.uint8)
    ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    markers = cv2.morphologyEx(markers, cv2.MORPH_OPEN, ellipse)
    markers, _ = ndimage.label(markers)
    markers = _remove_small_labels(markers, MIN_OBJECT_SIZE)

    inst_map = watershed(surface, markers=markers, mask=blob > 0)
    # Removed markers leave gaps in the ids; renumber 1..N in ascending order.
    kept_ids = np.union1d(0, inst_map)
    inst_map = np.searchsorted(kept_ids, inst_map).astype(np.int32)
    num_instances = int(inst_map.max(initial=0))

    types = type_probs = None
    if tp_prob is not None:
        types, type_probs = _instance_types(inst_map, num_instances, tp_prob.argmax(axis=0), tp_prob.shape[0])
    return inst_map, _instance_info(inst_map, types, type_probs)
