"""Nuclear instance and type metrics with the definitions of HoVer-Net's ``metrics/stats_utils.py`` and
``compute_stats.py`` (github:vqdang/hover_net); ``tests/zoo/hovernet/test_oracles.py`` checks every
instance metric against the values the reference code gives.

Instance metrics take two integer instance maps of the same shape (0 = background, every other value one
nucleus), ground truth first. HoVer-Net requires callers to ``remap_label`` first; these functions do it
internally, so any integer labelling is accepted.

* :func:`dice` - pixel DICE of the binarised maps (``get_dice_1``).
* :func:`dice2` - ensemble DICE over all overlapping GT/prediction pairs (``get_fast_dice_2``).
* :func:`aji` - Aggregated Jaccard Index, MoNuSeg version (``get_fast_aji``): every GT is paired with its
  maximum-IoU prediction, a prediction may serve several GTs.
* :func:`aji_plus` - AJI with a one-to-one Hungarian pairing (``get_fast_aji_plus``).
* :func:`panoptic_quality` - DQ, SQ and PQ (``get_fast_pq``).
* :func:`instance_stats` / :func:`mean_instance_stats` - the six numbers of ``compute_stats.py
  --mode=instance``, averaged per image (not pooled over the dataset).

IoU is HoVer-Net's in each place: PQ uses ``|g ∩ p| / |g ∪ p|``; AJI and AJI+ choose partners by
``|g ∩ p| / (|g ∪ p| + 1e-6)`` and score ``Σ|g ∩ p| / Σ|g ∪ p|``. Hungarian pairings run on the full
GT x prediction matrix, as there, so ties between equally good pairings resolve the same way. Overlaps
come from one sparse contingency table of the joint labels (``skimage.metrics.contingency_table``); no
per-instance mask is ever built.

Where HoVer-Net divides by zero or crashes (an empty map), one rule applies: both maps empty gives 1.0
for every score (nothing to find, nothing found); exactly one empty gives 0.0.

Type metrics (``compute_stats.py --mode=type``): :func:`match_types` pairs the GT and predicted nucleus
centroids of one image, :func:`type_stats` scores the matches pooled over all images: detection F1
``F_d``, type accuracy over paired nuclei and a per-type ``F_c``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from skimage.metrics import contingency_table
from skimage.segmentation import relabel_sequential

__all__ = [
    'STAT_NAMES',
    'TypeMatches',
    'aji',
    'aji_plus',
    'dice',
    'dice2',
    'instance_stats',
    'match_types',
    'mean_instance_stats',
    'pair_centroids',
    'panoptic_quality',
    'remap_label',
    'type_stats',
]

# HoVer-Net adds this to the IoU denominators that choose AJI partners and to the SQ denominator.
_EPS = 1e-6
# Keys of instance_stats, in HoVer-Net's reporting order.
STAT_NAMES = ('dice', 'aji', 'aji_plus', 'dq', 'sq', 'pq')


def remap_label(inst_map: np.ndarray, by_size: bool = False) -> np.ndarray:
    """Relabel instances to contiguous ids ``1..N``, keeping 0 as background (HoVer-Net ``remap_label``).

    Ids keep their ascending order (``skimage.segmentation.relabel_sequential``), or with ``by_size``
    the largest instance becomes 1 (ties keep ascending id order, as HoVer-Net's stable sort does).
    Returns a new int32 array.
    """
    inst_map = np.asarray(inst_map)
    if inst_map.dtype == bool:
        inst_map = inst_map.astype(np.uint8)
    elif not np.issubdtype(inst_map.dtype, np.integer):
        if not np.array_equal(inst_map, np.round(inst_map)):
            raise ValueError('instance map must hold integer ids')
        inst_map = inst_map.astype(np.int64)
    if inst_map.size and inst_map.min() < 0:
        raise ValueError(f'instance ids must be >= 0, found {inst_map.min()}')
    relabelled = relabel_sequential(inst_map)[0].astype(np.int32, copy=False)
    if not by_size:
        return relabelled
    areas = np.bincount(relabelled.ravel())[1:]
    new_ids = np.zeros(areas.size + 1, dtype=np.int32)
    new_ids[np.argsort(-areas, kind='stable') + 1] = np.arange(1, areas.size + 1, dtype=np.int32)
    return new_ids[relabelled]


@dataclass(frozen=True)
class _Overlaps:
    """Sparse GT x prediction contingency table of two remapped instance maps.

    Instance ``i`` (0-based) is id ``i + 1``. Pair arrays list every overlapping pair once, sorted by GT
    then prediction index.
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
    def both_empty(self) -> bool:
        return self.true_areas.size == 0 and self.pred_areas.size == 0

    def hungarian_pairs(self, score: np.ndarray) -> np.ndarray:
        """Indices into the pair arrays of the one-to-one pairing that maximises the summed ``score``.

        Solved on the full GT x prediction matrix with ``linear_sum_assignment(-score)``, exactly as
        HoVer-Net does, so that ties between optimal pairings resolve as there. Assignments of a GT to a
        prediction it does not overlap are not pairs.
        """
        matrix = np.zeros((self.true_areas.size, self.pred_areas.size))
        matrix[self.true_index, self.pred_index] = score
        pair_at = np.full(matrix.shape, -1, dtype=np.int64)
        pair_at[self.true_index, self.pred_index] = np.arange(self.inter.size)
        pairs = pair_at[linear_sum_assignment(-matrix)]
        return pairs[pairs >= 0]


def _pairwise_overlaps(true: np.ndarray, pred: np.ndarray) -> _Overlaps:
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f'true and pred shapes differ: {true.shape} vs {pred.shape}')
    true, pred = remap_label(true).ravel(), remap_label(pred).ravel()
    # Pixel counts of every (gt id, pred id) pair, row-major; background rows and columns are dropped.
    table = contingency_table(true, pred, ignore_labels=[0], sparse_type='array').tocoo()
    overlapping = (table.row > 0) & (table.col > 0) & (table.data > 0)
    return _Overlaps(
        true_areas=np.bincount(true)[1:].astype(np.float64),
        pred_areas=np.bincount(pred)[1:].astype(np.float64),
        true_index=table.row[overlapping].astype(np.int64) - 1,
        pred_index=table.col[overlapping].astype(np.int64) - 1,
        inter=table.data[overlapping],
    )


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


def _aji_pairing_iou(overlaps: _Overlaps) -> np.ndarray:
    return overlaps.inter / (overlaps.union + _EPS)


def _aji(overlaps: _Overlaps) -> float:
    # For each GT the pair with the highest IoU; ties go to the lowest prediction id, as np.argmax does
    # in HoVer-Net. Every listed pair has IoU > 0, so every overlapping GT is paired.
    order = np.lexsort((overlaps.pred_index, -_aji_pairing_iou(overlaps), overlaps.true_index))
    first_of_gt = np.diff(overlaps.true_index[order], prepend=-1) != 0
    return _aji_from_pairs(overlaps, order[first_of_gt])


def _aji_plus(overlaps: _Overlaps) -> float:
    return _aji_from_pairs(overlaps, overlaps.hungarian_pairs(_aji_pairing_iou(overlaps)))


def _panoptic_quality(overlaps: _Overlaps, match_iou: float) -> tuple[float, float, float]:
    if not 0 <= match_iou < 1:  # NaN too: no pair would ever match
        raise ValueError(f'match_iou must be in [0, 1), got {match_iou}')
    if overlaps.both_empty:
        return 1.0, 1.0, 1.0
    iou = overlaps.inter / overlaps.union
    if match_iou >= 0.5:
        # IoU > 0.5 can hold for at most one partner of each instance, so these pairs are unique.
        paired_iou = iou[iou > match_iou]
    else:
        paired_iou = iou[overlaps.hungarian_pairs(iou)]
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

    Each GT nucleus is paired with the prediction of maximum IoU (one prediction may be chosen by several
    GTs, its area then counts in each union). ``C`` sums the paired intersections, ``U`` the paired unions
    plus the areas of unpaired GTs and of never-chosen predictions; AJI = C / U. Both maps empty gives
    1.0; one empty gives 0.0.
    """
    return _aji(_pairwise_overlaps(true, pred))


def aji_plus(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI+ (HoVer-Net ``get_fast_aji_plus``): AJI with a one-to-one Hungarian pairing.

    The pairing maximises the summed IoU, so no prediction is counted twice. Both maps empty gives 1.0;
    one empty gives 0.0.
    """
    return _aji_plus(_pairwise_overlaps(true, pred))


def panoptic_quality(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> tuple[float, float, float]:
    """Detection, segmentation and panoptic quality ``(DQ, SQ, PQ)`` (HoVer-Net ``get_fast_pq``).

    Pairs are the GT/prediction pairs with IoU ``|g ∩ p| / |g ∪ p|`` > ``match_iou``; for
    ``match_iou >= 0.5`` these are unique by construction, below that a Hungarian assignment picks them.
    TP = pairs, FP = unpaired predictions, FN = unpaired GT; DQ = TP / (TP + FP/2 + FN/2),
    SQ = Σ IoU / (TP + 1e-6), PQ = DQ * SQ. Both maps empty gives (1, 1, 1); one empty (or no pair above
    the threshold) gives (0, 0, 0).
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
        'aji_plus': _aji_plus(overlaps),
        'dq': dq,
        'sq': sq,
        'pq': pq,
    }


def mean_instance_stats(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean of :func:`instance_stats` over ``(true, pred)`` image pairs.

    Like HoVer-Net's ``compute_stats.py``, each image is scored on its own and the scores are averaged;
    intersections and unions are not pooled across images.
    """
    per_image = [instance_stats(true, pred) for true, pred in pairs]
    if not per_image:
        raise ValueError('mean_instance_stats needs at least one (true, pred) pair')
    return {name: float(np.mean([stats[name] for stats in per_image])) for name in STAT_NAMES}


# ---------------------------------------------------------------------------------------------
# Type classification (compute_stats.py run_nuclei_type_stat)


def pair_centroids(
    true_centroids: np.ndarray, pred_centroids: np.ndarray, radius: float = 12.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one pairing of GT and predicted centroids (HoVer-Net ``pair_coordinates``).

    The pairing minimises the summed Euclidean distance over the full distance matrix (Hungarian); pairs
    farther apart than ``radius`` are then dropped and both their points count as unpaired. Returns
    ``pairs`` (K x 2 indices into true, pred), ``unpaired_true`` and ``unpaired_pred`` (indices).
    """
    true_centroids = np.asarray(true_centroids, dtype=np.float64).reshape(-1, 2)
    pred_centroids = np.asarray(pred_centroids, dtype=np.float64).reshape(-1, 2)
    distance = cdist(true_centroids, pred_centroids)
    true_index, pred_index = linear_sum_assignment(distance)
    close = distance[true_index, pred_index] <= radius
    pairs = np.stack([true_index[close], pred_index[close]], axis=1)
    unpaired_true = np.setdiff1d(np.arange(len(true_centroids)), pairs[:, 0])
    unpaired_pred = np.setdiff1d(np.arange(len(pred_centroids)), pairs[:, 1])
    return pairs, unpaired_true, unpaired_pred


@dataclass(frozen=True)
class TypeMatches:
    """Types of the paired and unpaired nuclei, the data of HoVer-Net's type statistics.

    ``paired_true[k]`` and ``paired_pred[k]`` are the GT and predicted types of the k-th centroid pair;
    ``unpaired_true`` / ``unpaired_pred`` the types of nuclei left without a partner. Matches of several
    images add up (``+`` concatenates), which is how HoVer-Net pools a dataset.
    """

    paired_true: np.ndarray
    paired_pred: np.ndarray
    unpaired_true: np.ndarray
    unpaired_pred: np.ndarray

    def __add__(self, other: TypeMatches) -> TypeMatches:
        return TypeMatches(
            *(np.concatenate([mine, theirs]) for mine, theirs in zip(self._arrays(), other._arrays(), strict=True))
        )

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.paired_true, self.paired_pred, self.unpaired_true, self.unpaired_pred


def _centroids_and_types(centroids: np.ndarray, types: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    # HoVer-Net reads centroids as float32; an image without nuclei gets a dummy type-0 nucleus at (0, 0).
    centroids = np.asarray(centroids, dtype=np.float32).reshape(-1, 2)
    types = np.asarray(types).reshape(-1).astype(np.int64)
    if len(centroids) != len(types):
        raise ValueError(f'{what}: {len(centroids)} centroids but {len(types)} types')
    if len(centroids) == 0:
        return np.zeros((1, 2), dtype=np.float32), np.zeros(1, dtype=np.int64)
    return centroids, types


def match_types(
    true_centroids: np.ndarray,
    true_types: Sequence[int] | np.ndarray,
    pred_centroids: np.ndarray,
    pred_types: Sequence[int] | np.ndarray,
    radius: float = 12.0,
) -> TypeMatches:
    """Pair one image's GT and predicted nuclei by centroid (:func:`pair_centroids`) and collect their types.

    Centroids are ``N x 2`` ``(x, y)`` (any consistent order works), types one integer per nucleus. As in
    HoVer-Net, centroids are rounded to float32, and an image with no GT (or no predicted) nucleus gets one
    dummy nucleus of type 0 at ``(0, 0)`` on that side, which is paired and counted like any other.
    """
    true_centroids, true_types = _centroids_and_types(true_centroids, true_types, 'ground truth')
    pred_centroids, pred_types = _centroids_and_types(pred_centroids, pred_types, 'prediction')
    pairs, unpaired_true, unpaired_pred = pair_centroids(true_centroids, pred_centroids, radius)
    return TypeMatches(
        paired_true=true_types[pairs[:, 0]],
        paired_pred=pred_types[pairs[:, 1]],
        unpaired_true=true_types[unpaired_true],
        unpaired_pred=pred_types[unpaired_pred],
    )


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float('nan')


def type_stats(
    matches: TypeMatches | Iterable[TypeMatches],
    type_ids: Iterable[int] | None = None,
    exhaustive: bool = True,
) -> dict[str, float]:
    """HoVer-Net's type statistics (``compute_stats.py run_nuclei_type_stat``), pooled over all images.

    With TP_d pairs, FP_d unpaired predictions and FN_d unpaired GT nuclei:

    * ``f_d`` = 2 TP_d / (2 TP_d + FP_d + FN_d), detection F1;
    * ``acc`` = pairs of equal type / all pairs;
    * ``f_c_<t>`` for each type ``t``: over the pairs where the GT or the prediction is ``t``,
      TP_c (both ``t``), FP_c (only the prediction), FN_c (only the GT), and FP_d^t / FN_d^t, the
      unpaired predictions / GT nuclei of type ``t``:
      F_c = 2 TP_c / (2 TP_c + 2 FP_c + 2 FN_c + FP_d^t + FN_d^t). (HoVer-Net's formula also has a
      true-negative term, which is always 0 within those pairs.)

    ``type_ids`` defaults to every GT type present, dummies included (as HoVer-Net). With
    ``exhaustive=False`` the GT type -1 marks nuclei whose type was not annotated: pairs with such a GT
    count neither as wrong in ``acc`` nor as FP_c. A ratio with nothing to count is NaN (HoVer-Net's
    ``0 / 0``).
    """
    if isinstance(matches, TypeMatches):
        matches = [matches]
    matches = list(matches)
    if not matches:
        raise ValueError('type_stats needs the matches of at least one image')
    pooled = sum(matches[1:], matches[0])
    paired_true, paired_pred = pooled.paired_true, pooled.paired_pred
    unannotated = paired_true == -1 if not exhaustive else np.zeros(paired_true.shape, dtype=bool)

    tp_d, fp_d, fn_d = paired_true.size, pooled.unpaired_pred.size, pooled.unpaired_true.size
    same_type = int((paired_true == paired_pred).sum())
    different_type = int((paired_true != paired_pred).sum()) - int(unannotated.sum())
    stats = {'f_d': _ratio(2 * tp_d, 2 * tp_d + fp_d + fn_d), 'acc': _ratio(same_type, same_type + different_type)}

    if type_ids is None:
        type_ids = np.unique(np.concatenate([paired_true, pooled.unpaired_true])).tolist()
    for type_id in type_ids:
        involved = (paired_true == type_id) | (paired_pred == type_id)
        tp_c = int(((paired_true == type_id) & (paired_pred == type_id)).sum())
        fp_c = int((involved & (paired_true != type_id)).sum()) - int((involved & unannotated).sum())
        fn_c = int((involved & (paired_pred != type_id)).sum())
        fp_d_t = int((pooled.unpaired_pred == type_id).sum())
        fn_d_t = int((pooled.unpaired_true == type_id).sum())
        stats[f'f_c_{type_id}'] = _ratio(2 * tp_c, 2 * tp_c + 2 * fp_c + 2 * fn_c + fp_d_t + fn_d_t)
    return stats
