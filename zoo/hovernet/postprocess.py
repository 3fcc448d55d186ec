"""HoVer-Net post-processing (``models/hovernet/post_proc.py``): NP probabilities, HV maps and optional TP
probabilities -> nuclear instance map and one record per nucleus.

Marker-controlled watershed, as HoVer-Net's ``__proc_np_hv`` (Graham et al., MedIA 2019):

1. threshold NP at 0.5 and drop blobs of fewer than 10 px;
2. min-max normalise the H and V maps, take their Sobel derivatives (ksize 21; H along x, V along y),
   min-max normalise those and invert them (``1 - d``); the edge map ``E`` is their maximum;
3. ``E = max(E - (1 - blob), 0)`` keeps edges inside nuclei only;
4. the watershed surface is ``-GaussianBlur3x3((1 - E) * blob)``;
5. markers are ``blob`` without ``E >= 0.4``, hole-filled, opened with a 5x5 ellipse, cleared of parts of
   fewer than 10 px and labelled;
6. watershed of the surface from those markers, restricted to the blob.

Components are 4-connected, as ``scipy.ndimage.label`` gives by default in HoVer-Net, and every array has
the dtype it has there, so the surface and thresholds are the same numbers. Instances are renumbered
``1..N`` in HoVer-Net's order (its ids can have gaps where small markers were removed).

:func:`instance_info` then gives HoVer-Net's per-nucleus record (``process()``): bounding box, centroid,
contour and, with types, the majority type and its pixel fraction. Depends on numpy, scipy, OpenCV and
scikit-image only, as it runs at inference.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage
from skimage.morphology import remove_small_objects
from skimage.segmentation import relabel_sequential, watershed

__all__ = ['fill_holes', 'hovernet_postprocess', 'instance_info']

NP_THRESHOLD = 0.5
EDGE_THRESHOLD = 0.4
MIN_OBJECT_SIZE = 10
SOBEL_KSIZE = 21
# HoVer-Net divides a nucleus' type count by its pixel count plus this.
_TYPE_PROB_EPS = 1e-6


def _without_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its 4-connected components of fewer than ``min_size`` pixels (HoVer-Net's rule;
    scikit-image's ``max_size`` is the largest size removed)."""
    return remove_small_objects(mask, max_size=min_size - 1, connectivity=1)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` (a hole: background not 4-connected to outside the image), 25x
    faster: OpenCV flood-fills the background from a one-pixel frame around the image, and what it does not reach
    is the filled mask."""
    framed = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), np.uint8)
    framed[1:-1, 1:-1] = mask
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)
    return framed[1:-1, 1:-1] != 2


def _minmax(array: np.ndarray) -> np.ndarray:
    return cv2.normalize(array, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)


def _watershed(np_prob: np.ndarray, hv: np.ndarray) -> np.ndarray:
    blob = _without_small_components(np_prob >= NP_THRESHOLD, MIN_OBJECT_SIZE).astype(np.int32)

    sobel_h = cv2.Sobel(_minmax(hv[0]), cv2.CV_64F, 1, 0, ksize=SOBEL_KSIZE)
    sobel_v = cv2.Sobel(_minmax(hv[1]), cv2.CV_64F, 0, 1, ksize=SOBEL_KSIZE)
    # float32 edges minus the int32 background give float64, as in HoVer-Net.
    edges = np.maximum(1 - _minmax(sobel_h), 1 - _minmax(sobel_v)) - (1 - blob)
    edges[edges < 0] = 0

    # Nuclei are peaks of (1 - E) * blob; negate so they become the watershed basins.
    surface = -cv2.GaussianBlur((1.0 - edges) * blob, (3, 3), 0)

    markers = fill_holes((blob > 0) & (edges < EDGE_THRESHOLD)).astype(np.uint8)
    markers = cv2.morphologyEx(markers, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    # Removing small parts before labelling keeps the other markers in the same order as HoVer-Net's
    # label-then-remove, and the watershed does not depend on the marker values.
    markers, _ = ndimage.label(_without_small_components(markers > 0, MIN_OBJECT_SIZE))

    inst_map = watershed(surface, markers=markers, mask=blob > 0)
    return relabel_sequential(inst_map)[0].astype(np.int32)


def _majority_types(compact: np.ndarray, type_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Type and type fraction of instances ``1..N`` of ``compact`` by HoVer-Net's pixel vote.

    The most frequent type wins, ties going to the lower id (HoVer-Net's stable sort by count); background
    (0) wins only if no other type is present, otherwise the next most frequent type is taken. The
    fraction is the winner's pixel count over the instance's pixel count (+1e-6).
    """
    num_types = int(type_map.max(initial=0)) + 1
    num_instances = int(compact.max(initial=0))
    counts = np.bincount(
        compact.ravel().astype(np.int64) * num_types + type_map.ravel(), minlength=(num_instances + 1) * num_types
    ).reshape(num_instances + 1, num_types)[1:]
    if num_instances == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    majority = counts.argmax(axis=1)
    foreground_present = counts[:, 1:].sum(axis=1) > 0
    majority = np.where((majority == 0) & foreground_present, counts[:, 1:].argmax(axis=1) + 1, majority)
    fraction = counts[np.arange(num_instances), majority] / (counts.sum(axis=1) + _TYPE_PROB_EPS)
    return majority, fraction


def instance_info(inst_map: np.ndarray, type_map: np.ndarray | None = None) -> dict[int, dict]:
    """HoVer-Net's per-nucleus record (``process()`` in ``post_proc.py``) for every instance of ``inst_map``.

    Args:
        inst_map: ``H x W`` integer instance ids, 0 = background (any ids).
        type_map: optional ``H x W`` per-pixel type ids (>= 0), e.g. the argmax of the TP branch or a
            ground-truth type map.

    Returns:
        ``{instance id: record}`` for every id in ``inst_map``, with

        * ``bbox``: int ``[[rmin, cmin], [rmax, cmax]]``, row/column order, max exclusive;
        * ``centroid``: float ``[x, y]``, the mean pixel position (``cv2.moments``);
        * ``contour``: int32 ``N x 2`` ``[x, y]`` points, the first contour ``cv2.findContours``
          (``RETR_TREE``, ``CHAIN_APPROX_SIMPLE``) finds for the instance;
        * ``type``: int, the majority type (background only if nothing else is present), and
          ``type_prob``: float, the fraction of the instance's pixels of that type - not a softmax
          probability; both ``None`` without ``type_map``.

        HoVer-Net leaves out an instance whose contour has fewer than 3 points (only possible for a line
        of pixels, never for a watershed instance, which contains a 5x5 marker); here every instance is
        kept, with its 1- or 2-point contour, so the map and the records always describe the same nuclei.
    """
    inst_map = np.asarray(inst_map)
    compact, _, index_to_id = relabel_sequential(inst_map)
    if type_map is not None:
        type_map = np.asarray(type_map)
        if type_map.shape != inst_map.shape:
            raise ValueError(f'type_map has shape {type_map.shape}, inst_map {inst_map.shape}')
        if type_map.size and type_map.min() < 0:
            raise ValueError(f'type ids must be >= 0, found {type_map.min()}')
        types, type_probs = _majority_types(compact, type_map.astype(np.int64))
    info = {}
    for index, (rows, cols) in enumerate(ndimage.find_objects(compact), start=1):
        mask = (compact[rows, cols] == index).astype(np.uint8)
        moments = cv2.moments(mask)
        contour = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0][0].reshape(-1, 2)
        info[int(index_to_id[index])] = {
            'bbox': np.array([[rows.start, cols.start], [rows.stop, cols.stop]]),
            'centroid': np.array(
                [moments['m10'] / moments['m00'] + cols.start, moments['m01'] / moments['m00'] + rows.start]
            ),
            'contour': (contour + [cols.start, rows.start]).astype(np.int32),
            'type': None if type_map is None else int(types[index - 1]),
            'type_prob': None if type_map is None else float(type_probs[index - 1]),
        }
    return info


def hovernet_postprocess(
    np_prob: np.ndarray,
    hv: np.ndarray,
    tp_prob: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, dict]]:
    """Nuclear instances and their records from HoVer-Net's NP, HV and optional TP outputs.

    Args:
        np_prob: ``H x W`` nuclear-pixel probability (softmax channel 1).
        hv: ``2 x H x W`` horizontal (channel 0) and vertical (channel 1) maps.
        tp_prob: optional ``T x H x W`` type probabilities (or logits; only the per-pixel argmax is used,
            as HoVer-Net's inference does).

    Returns:
        ``inst_map``: ``H x W`` int32, 0 = background, instances ``1..N``;
        ``inst_info``: ``{instance id: record}`` for every instance, as :func:`instance_info` describes
        (``type`` and ``type_prob`` are ``None`` without ``tp_prob``).
    """
    np_prob = np.asarray(np_prob, dtype=np.float32)
    hv = np.asarray(hv, dtype=np.float32)
    if np_prob.ndim != 2 or hv.shape != (2, *np_prob.shape):
        raise ValueError(f'expected np_prob HxW and hv 2xHxW, got {np_prob.shape} and {hv.shape}')
    if tp_prob is not None:
        tp_prob = np.asarray(tp_prob)
        if tp_prob.ndim != 3 or tp_prob.shape[1:] != np_prob.shape:
            raise ValueError(f'expected tp_prob TxHxW with HxW = {np_prob.shape}, got {tp_prob.shape}')
    inst_map = _watershed(np_prob, hv)
    return inst_map, instance_info(inst_map, None if tp_prob is None else tp_prob.argmax(axis=0))
