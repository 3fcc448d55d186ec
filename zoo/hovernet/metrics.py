"""Nuclear instance-segmentation metrics, defined as in HoVer-Net's ``metrics/stats_utils.py``.

All functions take two integer instance maps of the same shape (0 = background, every other
value one nucleus). HoVer-Net requires callers to ``remap_label`` first; these functions remap
internally, which is a no-op for already contiguous maps, so any integer labelling is accepted.

Definitions (Graham et al., HoVer-Net, MedIA 2019; Kumar et al., TMI 2017):

* :func:`dice` - pixel DICE of the binarised maps (``get_dice_1``).
* :func:`dice2` - ensemble DICE over all overlapping GT/prediction pairs (``get_fast_dice_2``).
* :func:`aji` - Aggregated Jaccard Index, MoNuSeg version (``get_fast_aji``): every GT is paired
  with its maximum-IoU prediction, a prediction may serve several GTs.
* :func:`aji_plus` - AJI with a one-to-one Hungarian pairing (``get_fast_aji_plus``).
* :func:`panoptic_quality` - DQ, SQ and PQ (``get_fast_pq``).
* :func:`instance_stats` / :func:`mean_instance_stats` - the six numbers of HoVer-Net's
  ``compute_stats.py --mode=instance``, averaged per image (not pooled over the dataset).

IoU is ``|g ∩ p| / (|g ∪ p| + 1e-6)`` everywhere, with HoVer-Net's epsilon, so ties and the
0.5 threshold resolve exactly as there. Pairwise overlaps come from one sparse contingency
table of the joint labels, so the cost is a sort of the overlapping pixels plus work linear in
the number of overlapping pairs; no per-instance mask is ever built.

Edge cases, where HoVer-Net divides by zero or crashes, follow one rule: when both maps are
empty every score is 1.0 (nothing to find and nothing found); when exactly one is empty every
score is 0.0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    'STAT_NAMES',
    'aji',
    'aji_plus',
    'dice',
    'dice2',
    'instance_stats',
    'mean_instance_stats',
    'panoptic_quality',
    'remap_label',
]

# HoVer-Net adds this to every IoU denominator and to the SQ denominator.
_EPS = 1e-6
# Keys of instance_stats, in HoVer-Net's reporting order.
STAT_NAMES = ('dice', 'aji', 'aji_plus', 'dq', 'sq', 'pq')


def remap_label(inst_map: np.ndarray, by_size: bool = False) -> np.ndarray:
    """Relabel instances to contiguous ids ``1..N``, keeping 0 as background.

    Ids keep their ascending order, or with ``by_size`` the largest instance becomes 1 (ties
    keep ascending id order, as HoVer-Net's stable sort does). Returns a new int32 array.
    """
    inst_map = np.asarray(inst_map)
    if not np.issubdtype(inst_map.dtype, np.integer) and not np.array_equal(inst_map, np.round(inst_map)):
        raise ValueError('instance map must hold integer ids')
    flat = inst_map.astype(np.int64, copy=False).ravel()
    if flat.size and flat.min() < 0:
        raise ValueError(f'instance ids must be >= 0, found {flat.min()}')
    max_id = int(flat.max(initial=0))
    # Counting ids is much cheaper than sorting pixels; fall back to a sort for huge sparse ids.
    dense = max_id <= flat.size
    if dense:
        areas = np.bincount(flat)
        ids = np.flatnonzero(areas[1:]) + 1
        areas = areas[ids]
    else:
        ids, areas = np.unique(flat[flat > 0], return_counts=True)
    order = np.argsort(-areas, kind='stable') if by_size else np.arange(ids.size)
    new_ids = np.zeros(ids.size, dtype=np.int32)
    new_ids[order] = np.arange(1, ids.size + 1, dtype=np.int32)
    if dense:
        lookup = np.zeros(max_id + 1, dtype=np.int32)
        lookup[ids] = new_ids
        return lookup[flat].reshape(inst_map.shape)
    remapped = np.zeros(flat.size, dtype=np.int32)
    foreground = flat > 0
    remapped[foreground] = new_ids[np.searchsorted(ids, flat[foreground])]
    return remapped.reshape(inst_map.shape)


@dataclass(frozen=True)
class _Overlaps:
    """Sparse GT x prediction contingency table of two remapped instance maps.

    Instance ``i`` (0-based) is id ``i + 1``. Pair arrays list every overlapping pair once,
    sorted by GT then prediction index.
    """

    true_areas: np.ndarray
    pred_areas: np.ndarray
    true_index: np.ndarray
    pred_index: np.ndarray
    inter: np.ndarray

    @property
    def union(self) -> np.ndarray:
        return self.true_areas[self.true_index] + self.pred_areas[self.pred_index] - self.inter

    @property
    def iou(self) -> np.ndarray:
        return self.inter / (self.union + _EPS)

    @property
    def both_empty(self) -> bool:
        return self.true_areas.size == 0 and self.pred_areas.size == 0


def _pairwise_overlaps(true: np.ndarray, pred: np.ndarray) -> _Overlaps:
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f'true and pred shapes differ: {true.shape} vs {pred.shape}')
    true, pred = remap_label(true).ravel(), remap_label(pred).ravel()
    num_true, num_pred = int(true.max(initial=0)), int(pred.max(initial=0))
    overlapping = (true > 0) & (pred > 0)
    # One code per (gt, pred) id pair; counting codes gives every intersection at once.
    codes = true[overlapping].astype(np.int64) * (num_pred + 1) + pred[overlapping]
    codes, inter = np.unique(codes, return_counts=True)
    return _Overlaps(
        true_areas=np.bincount(true, minlength=num_true + 1)[1:].astype(np.float64),
        pred_areas=np.bincount(pred, minlength=num_pred + 1)[1:].astype(np.float64),
        true_index=codes // (num_pred + 1) - 1,
        pred_index=codes % (num_pred + 1) - 1,
        inter=inter.astype(np.float64),
    )


def _hungarian_pairs(overlaps: _Overlaps) -> np.ndarray:
    """Indices into the pair arrays of the one-to-one pairing that maximises the summed IoU.

    Only instances that overlap something can be paired with positive IoU, so the assignment
    runs on that sub-matrix; the optimum equals HoVer-Net's full-matrix ``linear_sum_assignment``
    (up to tie-breaking between assignments of equal total IoU).
    """
    if overlaps.inter.size == 0:
        return np.zeros(0, dtype=np.int64)
    rows, row_of_pair = np.unique(overlaps.true_index, return_inverse=True)
    cols, col_of_pair = np.unique(overlaps.pred_index, return_inverse=True)
    iou = np.zeros((rows.size, cols.size))
    iou[row_of_pair, col_of_pair] = overlaps.iou
    pair_at = np.full((rows.size, cols.size), -1, dtype=np.int64)
    pair_at[row_of_pair, col_of_pair] = np.arange(overlaps.inter.size)
    assigned_rows, assigned_cols = linear_sum_assignment(iou, maximize=True)
    pairs = pair_at[assigned_rows, assigned_cols]
    return pairs[pairs >= 0]  # assignments with IoU 0 are not pairs


def _aji_from_pairs(overlaps: _Overlaps, pairs: np.ndarray) -> float:
    """C / U for the given pairing, with unpaired GT and never-paired predictions added to U."""
    if overlaps.both_empty:
        return 1.0
    paired_true = overlaps.true_index[pairs]
    paired_pred = np.unique(overlaps.pred_index[pairs])
    inter = overlaps.inter[pairs].sum()
    union = (
        overlaps.union[pairs].sum()
        + overlaps.true_areas.sum()
        - overlaps.true_areas[paired_true].sum()
        + overlaps.pred_areas.sum()
        - overlaps.pred_areas[paired_pred].sum()
    )
    return float(inter / union)


def _aji(overlaps: _Overlaps) -> float:
    # For each GT the pair with the highest IoU; ties go to the lowest prediction id, as
    # np.argmax does in HoVer-Net. Every listed pair has IoU > 0, so every overlapping GT pairs.
    order = np.lexsort((overlaps.pred_index, -overlaps.iou, overlaps.true_index))
    first_of_gt = np.diff(overlaps.true_index[order], prepend=-1) != 0
    return _aji_from_pairs(overlaps, order[first_of_gt])


def _panoptic_quality(overlaps: _Overlaps, match_iou: float) -> tuple[float, float, float]:
    if match_iou < 0:
        raise ValueError(f'match_iou must be >= 0, got {match_iou}')
    if overlaps.both_empty:
        return 1.0, 1.0, 1.0
    iou = overlaps.iou
    if match_iou >= 0.5:
        # IoU > 0.5 can hold for at most one partner of each instance, so pairs are unique.
        paired_iou = iou[iou > match_iou]
    else:
        paired_iou = iou[_hungarian_pairs(overlaps)]
        paired_iou = paired_iou[paired_iou > match_iou]
    true_positives = paired_iou.size
    false_positives = overlaps.pred_areas.size - true_positives
    false_negatives = overlaps.true_areas.size - true_positives
    dq = true_positives / (true_positives + 0.5 * false_positives + 0.5 * false_negatives)
    sq = float(paired_iou.sum() / (true_positives + _EPS))
    return dq, sq, dq * sq


def _dice2(overlaps: _Overlaps) -> float:
    if overlaps.both_empty:
        return 1.0
    if overlaps.inter.size == 0:
        return 0.0
    markup = overlaps.true_areas[overlaps.true_index] + overlaps.pred_areas[overlaps.pred_index]
    return float(2.0 * overlaps.inter.sum() / markup.sum())


def dice(true: np.ndarray, pred: np.ndarray) -> float:
    """Pixel DICE of the binarised maps: ``2 |T ∩ P| / (|T| + |P|)`` (HoVer-Net ``get_dice_1``).

    Both maps empty gives 1.0; one empty gives 0.0.
    """
    true, pred = np.asarray(true) > 0, np.asarray(pred) > 0
    if true.shape != pred.shape:
        raise ValueError(f'true and pred shapes differ: {true.shape} vs {pred.shape}')
    denominator = int(true.sum()) + int(pred.sum())
    if denominator == 0:
        return 1.0
    return 2.0 * int((true & pred).sum()) / denominator


def dice2(true: np.ndarray, pred: np.ndarray) -> float:
    """Ensemble DICE (CPM-17's DICE2): ``2 Σ|g ∩ p| / Σ(|g| + |p|)`` over all overlapping pairs.

    Both maps empty gives 1.0; no overlapping pair (including one map empty) gives 0.0.
    """
    return _dice2(_pairwise_overlaps(true, pred))


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index, MoNuSeg version (HoVer-Net ``get_fast_aji``).

    Each GT nucleus is paired with the prediction of maximum IoU (one prediction may be chosen
    by several GTs, its area then counts in each union). ``C`` sums the paired intersections,
    ``U`` the paired unions plus the areas of unpaired GTs and of never-chosen predictions;
    AJI = C / U. Both maps empty gives 1.0; one empty gives 0.0.
    """
    return _aji(_pairwise_overlaps(true, pred))


def aji_plus(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI+ (HoVer-Net ``get_fast_aji_plus``): AJI with a one-to-one Hungarian pairing.

    The pairing maximises the summed IoU, so no prediction is counted twice. Both maps empty
    gives 1.0; one empty gives 0.0.
    """
    overlaps = _pairwise_overlaps(true, pred)
    return _aji_from_pairs(overlaps, _hungarian_pairs(overlaps))


def panoptic_quality(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> tuple[float, float, float]:
    """Detection, segmentation and panoptic quality ``(DQ, SQ, PQ)`` (HoVer-Net ``get_fast_pq``).

    Pairs are the GT/prediction pairs with IoU > ``match_iou``; for ``match_iou >= 0.5`` these
    are unique by construction, below that a Hungarian assignment picks them. TP = pairs,
    FP = unpaired predictions, FN = unpaired GT; DQ = TP / (TP + FP/2 + FN/2),
    SQ = Σ IoU / (TP + 1e-6), PQ = DQ * SQ. Both maps empty gives (1, 1, 1); one empty (or no
    pair above the threshold) gives (0, 0, 0).
    """
    return _panoptic_quality(_pairwise_overlaps(true, pred), match_iou)


def instance_stats(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """HoVer-Net's per-image instance metrics: ``dice, aji, aji_plus, dq, sq, pq``.

    Both maps are remapped to contiguous ids first; overlaps are computed once and shared.
    """
    overlaps = _pairwise_overlaps(true, pred)
    dq, sq, pq = _panoptic_quality(overlaps, match_iou=0.5)
    return {
        'dice': dice(true, pred),
        'aji': _aji(overlaps),
        'aji_plus': _aji_from_pairs(overlaps, _hungarian_pairs(overlaps)),
        'dq': dq,
        'sq': sq,
        'pq': pq,
    }


def mean_instance_stats(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean of :func:`instance_stats` over ``(true, pred)`` image pairs.

    Like HoVer-Net's ``compute_stats.py``, each image is scored on its own and the scores are
    averaged; intersections and unions are not pooled across images.
    """
    per_image = [instance_stats(true, pred) for true, pred in pairs]
    if not per_image:
        raise ValueError('mean_instance_stats needs at least one (true, pred) pair')
    return {name: float(np.mean([stats[name] for stats in per_image])) for name in STAT_NAMES}
