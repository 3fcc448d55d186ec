"""Nuclear instance and type metrics: hand-computed cases and a randomized check against slow references.

Parity with HoVer-Net's own values is in test_oracles.py; the type statistics have no oracle, so their
expected values below are worked out by hand from the formulas of ``compute_stats.run_nuclei_type_stat``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from zoo.hovernet.metrics import (
    aji,
    aji_plus,
    dice,
    dice2,
    instance_stats,
    match_types,
    mean_instance_stats,
    pair_centroids,
    panoptic_quality,
    remap_label,
    type_stats,
)

# GT 1 and GT 2 are 2x2 squares side by side. Prediction 1 covers GT 1 and half of GT 2;
# prediction 2 is a false positive touching no nucleus.
TRUE_MERGED = np.array(
    [
        [0, 0, 0, 0, 0, 0],
        [0, 1, 1, 2, 2, 0],
        [0, 1, 1, 2, 2, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ]
)
PRED_MERGED = np.array(
    [
        [0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [2, 2, 2, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ]
)

# GT A (4 px) sits inside prediction 1 (8 px): IoU = 4/8 = 0.5, not > 0.5, so PQ leaves it
# unmatched. GT B (16 px) contains prediction 2 (12 px): IoU = 12/16 = 0.75, a match.
TRUE_THRESHOLD = np.array(
    [
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 2, 2, 2, 2],
        [0, 0, 0, 0, 2, 2, 2, 2],
        [0, 0, 0, 0, 2, 2, 2, 2],
        [0, 0, 0, 0, 2, 2, 2, 2],
    ]
)
PRED_THRESHOLD = np.array(
    [
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 2, 2, 2, 0],
        [0, 0, 0, 0, 2, 2, 2, 0],
        [0, 0, 0, 0, 2, 2, 2, 0],
        [0, 0, 0, 0, 2, 2, 2, 0],
    ]
)


def test_remap_label_contiguous_and_by_size() -> None:
    labels = np.array([[0, 7, 7], [3, 3, 3], [0, 0, 9]])
    np.testing.assert_array_equal(remap_label(labels), [[0, 2, 2], [1, 1, 1], [0, 0, 3]])
    # by size: id 3 (3 px) -> 1, id 7 (2 px) -> 2, id 9 (1 px) -> 3
    np.testing.assert_array_equal(remap_label(labels, by_size=True), [[0, 2, 2], [1, 1, 1], [0, 0, 3]])
    # equal sizes keep ascending id order
    np.testing.assert_array_equal(remap_label(np.array([[5, 0, 2]]), by_size=True), [[2, 0, 1]])
    assert remap_label(np.array([[4, 4]])).tolist() == [[1, 1]]  # no background at all
    assert remap_label(labels).dtype == np.int32
    with pytest.raises(ValueError, match='>= 0'):
        remap_label(np.array([[-1, 0]]))


def test_merged_prediction_aji_differs_from_aji_plus() -> None:
    # |GT1| = 4, |GT2| = 4, |P1| = 6, |P2| = 3.
    # GT1 ∩ P1 = 4, GT1 ∪ P1 = 6 (IoU 0.667); GT2 ∩ P1 = 2, GT2 ∪ P1 = 8 (IoU 0.25).
    # AJI: both GTs pick P1, P2 never chosen: C = 4 + 2 = 6, U = 6 + 8 + 3 = 17.
    assert aji(TRUE_MERGED, PRED_MERGED) == pytest.approx(6 / 17)
    # AJI+: one-to-one, only GT1-P1: C = 4, U = 6 + |GT2| 4 + |P2| 3 = 13.
    assert aji_plus(TRUE_MERGED, PRED_MERGED) == pytest.approx(4 / 13)
    # PQ: GT1-P1 matches (0.667 > 0.5); TP 1, FP 1 (P2), FN 1 (GT2): DQ = 1 / (1 + 1) = 0.5.
    dq, sq, pq = panoptic_quality(TRUE_MERGED, PRED_MERGED)
    expected_sq = (4 / 6) / (1 + 1e-6)  # PQ's IoU has no epsilon, its SQ denominator has
    assert (dq, sq, pq) == pytest.approx((0.5, expected_sq, 0.5 * expected_sq), rel=1e-15)
    # DICE: |T| = 8, |P| = 9, |T ∩ P| = 6 -> 12 / 17.
    assert dice(TRUE_MERGED, PRED_MERGED) == pytest.approx(12 / 17)
    # DICE2: pairs (GT1, P1) and (GT2, P1): 2 * (4 + 2) / ((4 + 6) + (4 + 6)) = 0.6.
    assert dice2(TRUE_MERGED, PRED_MERGED) == pytest.approx(0.6)


def test_pq_threshold_excludes_iou_of_one_half() -> None:
    # Pairs: A-P1 IoU 4/8 = 0.5 (excluded: matching needs > 0.5), B-P2 IoU 12/16 = 0.75.
    # TP 1, FP 1 (P1), FN 1 (A): DQ = 1 / (1 + 0.5 + 0.5) = 0.5, SQ = 0.75.
    dq, sq, pq = panoptic_quality(TRUE_THRESHOLD, PRED_THRESHOLD)
    expected_sq = (12 / 16) / (1 + 1e-6)
    assert (dq, sq, pq) == pytest.approx((0.5, expected_sq, 0.5 * expected_sq), rel=1e-15)
    # Below 0.5 the Hungarian pairing keeps both pairs: DQ = 1, SQ = (0.5 + 0.75) / 2.
    dq, sq, pq = panoptic_quality(TRUE_THRESHOLD, PRED_THRESHOLD, match_iou=0.4)
    expected_sq = (4 / 8 + 12 / 16) / (2 + 1e-6)
    assert (dq, sq, pq) == pytest.approx((1.0, expected_sq, expected_sq), rel=1e-15)
    # AJI = AJI+ here (one-to-one already): C = 4 + 12, U = 8 + 16.
    assert aji(TRUE_THRESHOLD, PRED_THRESHOLD) == pytest.approx(16 / 24)
    assert aji_plus(TRUE_THRESHOLD, PRED_THRESHOLD) == pytest.approx(16 / 24)
    with pytest.raises(ValueError, match='match_iou'):
        panoptic_quality(TRUE_THRESHOLD, PRED_THRESHOLD, match_iou=-0.1)


def test_empty_maps() -> None:
    empty = np.zeros_like(TRUE_MERGED)
    zeros = dict.fromkeys(('dice', 'aji', 'aji_plus', 'dq', 'sq', 'pq'), 0.0)
    assert instance_stats(TRUE_MERGED, empty) == zeros  # nothing predicted
    assert instance_stats(empty, PRED_MERGED) == zeros  # only false positives
    assert instance_stats(empty, empty) == dict.fromkeys(zeros, 1.0)  # nothing to find, nothing found
    assert dice2(TRUE_MERGED, empty) == 0.0
    assert dice2(empty, empty) == 1.0


def test_perfect_prediction() -> None:
    stats = instance_stats(TRUE_THRESHOLD, TRUE_THRESHOLD)
    assert stats == pytest.approx(dict.fromkeys(stats, 1.0), abs=1e-6)


@pytest.mark.parametrize(('true', 'pred'), [(TRUE_MERGED, PRED_MERGED), (TRUE_THRESHOLD, PRED_THRESHOLD)])
def test_label_permutation_invariance(true: np.ndarray, pred: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    relabel_true = np.r_[0, rng.choice(np.arange(1, 1000), size=true.max(), replace=False)]
    relabel_pred = np.r_[0, rng.choice(np.arange(1, 1000), size=pred.max(), replace=False)]
    assert instance_stats(relabel_true[true], relabel_pred[pred]) == pytest.approx(instance_stats(true, pred))
    assert dice2(relabel_true[true], relabel_pred[pred]) == pytest.approx(dice2(true, pred))


def test_mean_instance_stats_averages_per_image() -> None:
    first, second = instance_stats(TRUE_MERGED, PRED_MERGED), instance_stats(TRUE_THRESHOLD, PRED_THRESHOLD)
    mean = mean_instance_stats([(TRUE_MERGED, PRED_MERGED), (TRUE_THRESHOLD, PRED_THRESHOLD)])
    assert mean == pytest.approx({name: (first[name] + second[name]) / 2 for name in first})
    with pytest.raises(ValueError):
        mean_instance_stats([])


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match='shapes differ'):
        aji(TRUE_MERGED, TRUE_THRESHOLD)


# ---------------------------------------------------------------------------------------------
# Slow references: one boolean mask per instance, every pair looped over.


def reference_pairwise(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, list, list]:
    true_masks = [true == i for i in range(1, true.max() + 1)]
    pred_masks = [pred == j for j in range(1, pred.max() + 1)]
    inter = np.zeros((len(true_masks), len(pred_masks)))
    union = np.zeros_like(inter)
    for i, t in enumerate(true_masks):
        for j, p in enumerate(pred_masks):
            inter[i, j] = (t & p).sum()
            union[i, j] = (t | p).sum()
    return inter, union, [m.sum() for m in true_masks], [m.sum() for m in pred_masks]


def reference_aji(true: np.ndarray, pred: np.ndarray, one_to_one: bool) -> float:
    inter, union, true_areas, pred_areas = reference_pairwise(true, pred)
    iou = inter / (union + 1e-6)
    if one_to_one:
        rows, cols = linear_sum_assignment(-iou)
    else:
        rows, cols = np.arange(iou.shape[0]), iou.argmax(axis=1)
    pairs = [(i, j) for i, j in zip(rows, cols) if iou[i, j] > 0]
    total_inter = sum(inter[i, j] for i, j in pairs)
    total_union = sum(union[i, j] for i, j in pairs)
    total_union += sum(area for i, area in enumerate(true_areas) if i not in {i for i, _ in pairs})
    total_union += sum(area for j, area in enumerate(pred_areas) if j not in {j for _, j in pairs})
    return total_inter / total_union


def reference_pq(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    inter, union, true_areas, pred_areas = reference_pairwise(true, pred)
    matched = [inter[i, j] / union[i, j] for i in range(len(true_areas)) for j in range(len(pred_areas))]
    matched = [iou for iou in matched if iou > 0.5]
    tp, fp, fn = len(matched), len(pred_areas) - len(matched), len(true_areas) - len(matched)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = sum(matched) / (tp + 1e-6)
    return dq, sq, dq * sq


def random_instance_map(rng: np.random.Generator, size: int, num_discs: int) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    inst_map = np.zeros((size, size), dtype=np.int32)
    for inst_id in range(1, num_discs + 1):
        centre, radius = rng.uniform(0, size, 2), rng.uniform(2, 7)
        inst_map[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2] = inst_id
    return remap_label(inst_map)


def perturbed_prediction(rng: np.random.Generator, true: np.ndarray) -> np.ndarray:
    """Shift the GT, merge a random pair of ids, add a few spurious discs."""
    pred = np.roll(true, shift=tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    if pred.max() >= 2:
        first, second = rng.choice(np.arange(1, pred.max() + 1), 2, replace=False)
        pred[pred == second] = first
    extra = random_instance_map(rng, true.shape[0], 3)
    pred = np.where(extra > 0, extra + pred.max(), pred)
    return remap_label(pred)


@pytest.mark.parametrize('seed', range(12))
def test_matches_slow_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true = random_instance_map(rng, 40, int(rng.integers(4, 14)))
    pred = perturbed_prediction(rng, true)
    assert aji(true, pred) == pytest.approx(reference_aji(true, pred, one_to_one=False), rel=1e-12)
    assert aji_plus(true, pred) == pytest.approx(reference_aji(true, pred, one_to_one=True), rel=1e-12)
    assert panoptic_quality(true, pred) == pytest.approx(reference_pq(true, pred), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Type statistics (compute_stats.py run_nuclei_type_stat). No oracle exists for these: every expected
# value is derived by hand from HoVer-Net's formulas, as the comments show.


def test_pair_centroids_assigns_first_then_applies_the_radius() -> None:
    # Greedy nearest-neighbour would pair b with p (4 px); the Hungarian pairing minimises the total
    # distance: a-p 6 + b-q 6 = 12 < b-p 4 + a-q 16 = 20.
    true, pred = np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([[6.0, 0.0], [16.0, 0.0]])
    pairs, unpaired_true, unpaired_pred = pair_centroids(true, pred, radius=12)
    assert pairs.tolist() == [[0, 0], [1, 1]] and unpaired_true.size == unpaired_pred.size == 0
    # With radius 5 both assigned pairs (6 px) are dropped, although b and p are only 4 px apart.
    pairs, unpaired_true, unpaired_pred = pair_centroids(true, pred, radius=5)
    assert pairs.shape == (0, 2) and unpaired_true.tolist() == [0, 1] and unpaired_pred.tolist() == [0, 1]
    # The radius is inclusive: exactly 12 px apart is a pair.
    assert pair_centroids(np.array([[0.0, 0.0]]), np.array([[0.0, 12.0]]))[0].tolist() == [[0, 0]]


# Image 1, centroids (x, y) and types. g0-p0 2 px apart, g1-p1 exactly 12 px (a pair), g2-p2 13 px (the
# Hungarian assigns them, the radius drops them), g4-p4 1.4 px, g3 and p3 far from everything.
IMAGE_1 = dict(
    true_centroids=[[10, 10], [50, 50], [100, 100], [200, 200], [150, 150]],
    true_types=[1, 2, 1, 3, 3],
    pred_centroids=[[12, 10], [50, 62], [100, 113], [300, 300], [151, 151]],
    pred_types=[1, 1, 1, 2, 3],
)
# Image 2 has no GT nucleus: HoVer-Net adds a dummy of type 0 at (0, 0), 7.1 px from the prediction.
IMAGE_2 = dict(true_centroids=np.zeros((0, 2)), true_types=[], pred_centroids=[[5, 5]], pred_types=[2])


def test_match_types_per_image() -> None:
    first = match_types(**IMAGE_1)
    assert first.paired_true.tolist() == [1, 2, 3] and first.paired_pred.tolist() == [1, 1, 3]
    assert first.unpaired_true.tolist() == [1, 3] and first.unpaired_pred.tolist() == [1, 2]
    second = match_types(**IMAGE_2)
    assert second.paired_true.tolist() == [0] and second.paired_pred.tolist() == [2]
    assert second.unpaired_true.size == second.unpaired_pred.size == 0
    with pytest.raises(ValueError, match='2 centroids but 1 types'):
        match_types([[0, 0], [1, 1]], [1], [[0, 0]], [1])


def test_type_stats_pooled_over_images() -> None:
    matches = [match_types(**IMAGE_1), match_types(**IMAGE_2)]
    # Pooled pairs (true, pred): (1,1) (2,1) (3,3) (0,2); unpaired GT types [1, 3], predictions [1, 2].
    stats = type_stats(matches)
    assert list(stats) == ['f_d', 'acc', 'f_c_0', 'f_c_1', 'f_c_2', 'f_c_3']  # GT types, the dummy's 0 too
    # F_d = 2*4 / (2*4 + 2 + 2); acc = 2 equal-type pairs / 4 pairs.
    assert stats['f_d'] == pytest.approx(8 / 12, rel=1e-15) and stats['acc'] == 0.5
    # Type 0: pairs (0,2): TP 0, FN_c 1 -> 0 / (2*1).
    assert stats['f_c_0'] == 0.0
    # Type 1: pairs (1,1) (2,1): TP 1, FP_c 1; unpaired GT of type 1: 1, unpaired predictions: 1
    # -> 2 / (2 + 2*1 + 1 + 1).
    assert stats['f_c_1'] == pytest.approx(2 / 6, rel=1e-15)
    # Type 2: pairs (2,1) (0,2): TP 0, FP_c 1, FN_c 1, one unpaired prediction -> 0 / 5.
    assert stats['f_c_2'] == 0.0
    # Type 3: pair (3,3): TP 1; one unpaired GT of type 3 -> 2 / (2 + 1).
    assert stats['f_c_3'] == pytest.approx(2 / 3, rel=1e-15)
    # Pooling is concatenation: one TypeMatches of both images gives the same; type_ids selects.
    assert type_stats(matches[0] + matches[1]) == stats
    assert type_stats(matches, type_ids=[3]) == {'f_d': stats['f_d'], 'acc': 0.5, 'f_c_3': stats['f_c_3']}
    with pytest.raises(ValueError, match='at least one image'):
        type_stats([])


def test_type_stats_not_exhaustive() -> None:
    # GT type -1: a nucleus whose type was not annotated. Pairs (true, pred): (-1, 2) and (1, 1).
    matches = match_types([[10, 10], [40, 40]], [-1, 1], [[10, 10], [40, 40]], [2, 1])
    exhaustive = type_stats(matches, type_ids=[1, 2])
    # acc = 1 / 2; F_c^2: FP_c 1 -> 0 / (2*1); F_c^1: TP 1 -> 2 / 2.
    assert exhaustive == {'f_d': 1.0, 'acc': 0.5, 'f_c_1': 1.0, 'f_c_2': 0.0}
    partial = type_stats(matches, type_ids=[1, 2], exhaustive=False)
    # The (-1, 2) pair is not counted wrong: acc = 1 / (1 + 1 - 1); F_c^2 = 0 / (2*(1 - 1)) is undefined.
    assert partial['acc'] == 1.0 and partial['f_c_1'] == 1.0 and np.isnan(partial['f_c_2'])


def test_type_stats_without_any_pair() -> None:
    # The only prediction is 30 px away from the only GT nucleus: no pair, accuracy has nothing to count.
    stats = type_stats(match_types([[0, 0]], [1], [[30, 0]], [1]))
    assert stats['f_d'] == 0.0 and np.isnan(stats['acc']) and stats['f_c_1'] == 0.0


@pytest.mark.parametrize('match_iou', [float('nan'), -0.1, 1.0])
def test_a_match_threshold_no_pair_can_pass_is_refused(match_iou):
    inst = np.zeros((8, 8), np.int32)
    inst[2:6, 2:6] = 1
    with pytest.raises(ValueError, match=rf'^match_iou must be in \[0, 1\), got {match_iou}$'):
        panoptic_quality(inst, inst, match_iou)
