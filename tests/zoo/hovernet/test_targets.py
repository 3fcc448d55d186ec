"""HoVer-Net targets, loss and watershed post-processing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zoo.hovernet.losses import LOSS_TERMS, cross_entropy_loss, hovernet_loss, hv_gradients, msge_loss
from zoo.hovernet.metrics import aji, remap_label
from zoo.hovernet.postprocess import hovernet_postprocess, instance_info
from zoo.hovernet.targets import hovernet_targets, hv_map, np_map, split_disconnected_instances


def disc_map(shape: tuple[int, int], discs: list[tuple[float, float, float]]) -> np.ndarray:
    """Instance map of discs ``(row, col, radius)``; later discs overwrite earlier ones."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    inst_map = np.zeros(shape, np.int32)
    for inst_id, (row, col, radius) in enumerate(discs, start=1):
        inst_map[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = inst_id
    return inst_map


# ---------------------------------------------------------------------------------------------
# Targets


def test_hv_map_hovernet_centre() -> None:
    # A 7x7 square at columns 20..26 (exact centre 23). HoVer-Net rounds the centre to 23 and counts
    # pixels from 1, so the offsets are column - 22: -2..4, i.e. -1, -0.5, 0, 0.25, 0.5, 0.75, 1.
    inst_map = np.zeros((40, 40), np.int32)
    inst_map[10:17, 20:27] = 1
    horizontal, vertical = hv_map(inst_map)
    np.testing.assert_array_equal(horizontal[12, 20:27], [-1, -0.5, 0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(vertical[10:17, 23], [-1, -0.5, 0, 0.25, 0.5, 0.75, 1])
    # Columns 3..10 (8 px, centre of mass 6.5, rounded up to 7): offsets column - 6 = -3..4.
    inst_map = np.zeros((4, 14), np.int32)
    inst_map[1, 3:11] = 2
    expected = [-1, -2 / 3, -1 / 3, 0, 0.25, 0.5, 0.75, 1]
    np.testing.assert_allclose(hv_map(inst_map)[0, 1, 3:11], expected, rtol=0, atol=1e-7)


def test_hv_map_exact_centre_on_a_rectangle() -> None:
    inst_map = np.zeros((10, 14), np.int32)
    inst_map[2:7, 3:12] = 5  # rows 2..6 (centre row 4), columns 3..11 (centre column 7)
    hv = hv_map(inst_map, exact_centre=True)
    assert hv.shape == (2, 10, 14) and hv.dtype == np.float32
    horizontal, vertical = hv
    np.testing.assert_allclose(horizontal[2:7, 3], -1.0)  # left edge
    np.testing.assert_allclose(horizontal[2:7, 11], 1.0)  # right edge
    np.testing.assert_allclose(horizontal[2:7, 7], 0.0, atol=1e-6)  # centre column
    np.testing.assert_allclose(horizontal[4, 3:12], np.linspace(-1, 1, 9), atol=1e-6)  # offsets / 4
    np.testing.assert_allclose(vertical[2, 3:12], -1.0)  # top edge
    np.testing.assert_allclose(vertical[6, 3:12], 1.0)  # bottom edge
    np.testing.assert_allclose(vertical[4, 3:12], 0.0, atol=1e-6)
    assert (hv[:, inst_map == 0] == 0).all()


def test_hv_map_normalises_each_side_and_instance_separately() -> None:
    inst_map = np.zeros((4, 12), np.int32)
    inst_map[1, 0:4] = 1  # columns 0..3, centre 1.5: offsets -1.5, -0.5, 0.5, 1.5
    inst_map[1, 5:12] = 2  # 7 px, centre column 8: offsets -3..3
    horizontal = hv_map(inst_map, exact_centre=True)[0, 1]
    np.testing.assert_allclose(horizontal[0:4], [-1, -1 / 3, 1 / 3, 1], atol=1e-6)
    np.testing.assert_allclose(horizontal[5:12], np.arange(-3, 4) / 3, atol=1e-6)
    # HoVer-Net's centre: 1.5 rounds to 2, offsets column - 1 = -1..2; 8 stays 8, offsets column - 7 = -2..4.
    horizontal = hv_map(inst_map)[0, 1]
    np.testing.assert_array_equal(horizontal[0:4], [-1, 0, 0.5, 1])
    np.testing.assert_array_equal(horizontal[5:12], [-1, -0.5, 0, 0.25, 0.5, 0.75, 1])


def test_hv_map_accepts_huge_ids() -> None:
    inst_map = np.zeros((6, 6), np.int64)
    inst_map[1:4, 1:4] = 2**40
    # Columns 1..3, centre 2: HoVer-Net's offsets are column - 1 = 0, 1, 2 -> 0, 0.5, 1.
    np.testing.assert_array_equal(hv_map(inst_map)[0, 2, 1:4], [0, 0.5, 1])


def test_hv_map_min_size_counts_in_window() -> None:
    inst_map = np.zeros((20, 20), np.int32)
    inst_map[2:8, 2:8] = 1  # 36 px
    inst_map[10:13, 10:13] = 2  # 9 px
    hv = hv_map(inst_map, min_size=10)
    assert np.abs(hv[:, inst_map == 1]).max() == 1.0
    assert (hv[:, inst_map == 2] == 0).all()
    # Counted only inside rows/cols 6..19, nucleus 1 has 4 px left and loses its target too.
    hv = hv_map(inst_map, min_size=5, count_window=(slice(6, 20), slice(6, 20)))
    assert (hv[:, inst_map == 1] == 0).all() and np.abs(hv[:, inst_map == 2]).max() == 1.0


def test_split_disconnected_instances() -> None:
    inst_map = np.array([[3, 3, 0, 3], [0, 0, 0, 3], [1, 0, 1, 0]], np.int32)
    split = split_disconnected_instances(inst_map)
    # Ids are visited in ascending order; part k > 1 gets k + the largest id so far (HoVer-Net's
    # fix_mirror_padding): id 1's second part becomes 2 + 3 = 5, then id 3's becomes 2 + 5 = 7.
    np.testing.assert_array_equal(split, [[3, 3, 0, 7], [0, 0, 0, 7], [1, 0, 5, 0]])


def test_hovernet_targets_crop() -> None:
    inst_map = disc_map((40, 40), [(20, 20, 12), (3, 3, 4)])
    type_map = np.where(inst_map > 0, inst_map + 1, 0)
    targets = hovernet_targets(inst_map, type_map, output_size=24, min_size=30)
    assert {key: value.shape for key, value in targets.items()} == {
        'np': (24, 24),
        'hv': (2, 24, 24),
        'inst': (24, 24),
        'tp': (24, 24),
    }
    np.testing.assert_array_equal(targets['np'], np_map(inst_map)[8:32, 8:32])
    # HV is computed on the full input and then cropped: the big disc reaches past the crop.
    np.testing.assert_allclose(targets['hv'], hv_map(inst_map)[:, 8:32, 8:32])
    np.testing.assert_array_equal(targets['tp'], type_map[8:32, 8:32])


# ---------------------------------------------------------------------------------------------
# Loss


def perfect_outputs(targets: dict[str, torch.Tensor], num_types: int) -> dict[str, torch.Tensor]:
    # Logits of +-100 give softmax probabilities of exactly 0 and 1 in float32.
    return {
        'np': (torch.nn.functional.one_hot(targets['np'], 2).permute(0, 3, 1, 2).float() * 200 - 100),
        'hv': targets['hv'].clone(),
        'tp': (torch.nn.functional.one_hot(targets['tp'], num_types).permute(0, 3, 1, 2).float() * 200 - 100),
    }


def batch_targets() -> dict[str, torch.Tensor]:
    maps = [disc_map((32, 32), [(10, 10, 6), (20, 22, 7)]), disc_map((32, 32), [(16, 16, 9)])]
    return {
        'np': torch.from_numpy(np.stack([np_map(m) for m in maps])),
        'hv': torch.from_numpy(np.stack([hv_map(m) for m in maps])),
        'tp': torch.from_numpy(np.stack([np.where(m > 0, m, 0) for m in maps]).astype(np.int64)),
    }


def test_loss_is_zero_for_perfect_predictions() -> None:
    targets = batch_targets()
    total, parts = hovernet_loss(perfect_outputs(targets, num_types=3), targets)
    assert set(parts) == set(LOSS_TERMS)
    assert total.item() == pytest.approx(0.0, abs=1e-6)
    assert all(value.item() == pytest.approx(0.0, abs=1e-6) for value in parts.values())


def test_loss_is_positive_and_differentiable() -> None:
    torch.manual_seed(0)
    targets = batch_targets()
    outputs = {key: torch.randn_like(value.float(), requires_grad=True) for key, value in targets.items()}
    outputs['np'] = torch.randn(2, 2, 32, 32, requires_grad=True)
    outputs['tp'] = torch.randn(2, 3, 32, 32, requires_grad=True)
    total, parts = hovernet_loss(outputs, targets)
    assert total.item() > 0 and all(value.item() > 0 for value in parts.values())
    total.backward()
    for key in ('np', 'hv', 'tp'):
        assert torch.isfinite(outputs[key].grad).all() and outputs[key].grad.abs().sum() > 0

    without_types = {key: value for key, value in outputs.items() if key != 'tp'}
    _, parts = hovernet_loss(without_types, targets)
    assert set(parts) == {'np_ce', 'np_dice', 'hv_mse', 'hv_msge'}
    weighted, _ = hovernet_loss(without_types, targets, weights={'hv_msge': 0.0, 'np_dice': 2.0})
    expected = parts['np_ce'] + 2 * parts['np_dice'] + parts['hv_mse']
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(KeyError, match='unknown loss terms'):
        hovernet_loss(without_types, targets, weights={'hv_sobel': 1.0})


def test_msge_gradient_axes() -> None:
    columns = torch.arange(16.0, dtype=torch.float64).expand(16, 16)
    ramps = torch.stack([columns, columns.T]).unsqueeze(0)  # H grows along x, V along y
    # On a unit ramp the kernel d / (dx^2 + dy^2) gives Σ d^2 / (dx^2 + dy^2) over the 24 off-centre
    # cells = 24 / 2 = 12 along the ramp, 0 across it (read away from the zero padding).
    hovernet = hv_gradients(ramps)[0, :, 4:12, 4:12]  # HoVer-Net's code: H along y, V along x
    torch.testing.assert_close(hovernet, torch.zeros_like(hovernet))
    paper = hv_gradients(ramps, paper_axes=True)[0, :, 4:12, 4:12]  # the paper: H along x, V along y
    torch.testing.assert_close(paper, torch.full_like(paper, 12.0))
    swapped = hv_gradients(ramps.flip(1))[0, :, 4:12, 4:12]
    torch.testing.assert_close(swapped, torch.full_like(swapped, 12.0))


def test_msge_loss_axes_on_an_x_ramp() -> None:
    # Prediction 0, target an x-ramp in the horizontal channel, all pixels nuclear: HoVer-Net's MSGE
    # differentiates that channel along y and sees no error inside; the paper's sees 12^2 there.
    target = torch.zeros(1, 2, 16, 16, dtype=torch.float64)
    target[0, 0] = torch.arange(16.0).expand(16, 16)
    focus = torch.zeros(1, 16, 16)
    focus[0, 4:12, 4:12] = 1
    assert msge_loss(torch.zeros_like(target), target, focus).item() == pytest.approx(0.0, abs=1e-20)
    # 64 focus pixels in each of the 2 channels; only channel 0 has error 144 on its 64.
    paper = msge_loss(torch.zeros_like(target), target, focus, paper_axes=True).item()
    assert paper == pytest.approx(64 * 144 / (128 + 1e-8), rel=1e-12)


def test_cross_entropy_clamps_probabilities_as_hovernet() -> None:
    # Two pixels (B=1, H=1, W=2): logits (20, 0) and (0, 0); both are class 1.
    logits = torch.tensor([[[[20.0, 0.0]], [[0.0, 0.0]]]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[1, 1]]])
    # Pixel 0: p(1) = 1 / (1 + e^20) < 1e-7 is clamped: -log(1e-7) = 16.118 (not 20). Pixel 1: log 2.
    loss = cross_entropy_loss(logits, target)
    assert loss.item() == pytest.approx((-math.log(1e-7) + math.log(2)) / 2, rel=1e-12)
    unclamped = torch.nn.functional.cross_entropy(logits, target)
    assert unclamped.item() == pytest.approx((20 + math.log1p(math.exp(-20)) + math.log(2)) / 2, rel=1e-12)
    loss.backward()
    assert (logits.grad[0, :, 0, 0] == 0).all() and (logits.grad[0, :, 0, 1] != 0).all()


# ---------------------------------------------------------------------------------------------
# Post-processing


def test_postprocess_separates_touching_nuclei() -> None:
    # Two overlapping discs (a shared boundary 20 px long) and one isolated disc.
    inst_map = disc_map((96, 96), [(48, 34, 15), (48, 60, 13), (15, 15, 8)])
    tp_prob = np.zeros((3, 96, 96), np.float32)
    tp_prob[0] = inst_map == 0
    tp_prob[1] = (inst_map == 1) | (inst_map == 3)
    tp_prob[2] = inst_map == 2
    predicted, info = hovernet_postprocess(np_map(inst_map).astype(np.float32), hv_map(inst_map), tp_prob)
    assert predicted.dtype == np.int32 and predicted.max() == 3 and sorted(info) == [1, 2, 3]
    assert aji(inst_map, predicted) > 0.9
    # Types follow the majority inside each recovered instance.
    for inst_id, record in info.items():
        true_id = np.bincount(inst_map[predicted == inst_id]).argmax()
        assert record['type'] == (2 if true_id == 2 else 1) and 0.9 < record['type_prob'] <= 1.0

    predicted_without_types, no_types = hovernet_postprocess(np_map(inst_map), hv_map(inst_map))
    np.testing.assert_array_equal(predicted_without_types, predicted)
    assert all(record['type'] is None and record['type_prob'] is None for record in no_types.values())
    for inst_id in info:
        for key in ('bbox', 'centroid', 'contour'):
            np.testing.assert_array_equal(no_types[inst_id][key], info[inst_id][key])


def test_instance_info_of_a_rectangle() -> None:
    # Rows 10-19, columns 10-21 (HoVer-Net's process() gives exactly these values for this rectangle).
    inst_map = np.zeros((40, 40), np.int32)
    inst_map[10:20, 10:22] = 7
    (record,) = instance_info(inst_map).values()
    assert list(instance_info(inst_map)) == [7]  # keyed by the map's own ids
    np.testing.assert_array_equal(record['bbox'], [[10, 10], [20, 22]])  # [[rmin, cmin], [rmax, cmax]], max exclusive
    np.testing.assert_array_equal(record['centroid'], [15.5, 14.5])  # (x, y)
    np.testing.assert_array_equal(record['contour'], [[10, 10], [10, 19], [21, 19], [21, 10]])  # (x, y) corners
    assert record['contour'].dtype == np.int32 and record['type'] is None and record['type_prob'] is None


def test_instance_info_type_vote() -> None:
    inst_map = np.zeros((10, 30), np.int32)
    inst_map[0:2, 0:5] = 1  # 10 px each
    inst_map[3:5, 0:5] = 2
    inst_map[6:8, 0:5] = 3
    inst_map[0:2, 10:15] = 4
    type_map = np.zeros_like(inst_map)
    type_map[0, 0:5] = 4  # nucleus 1: 5 px type 4, 5 px type 2 -> tie, the lower id wins
    type_map[1, 0:5] = 2
    type_map[3, 0:3] = 3  # nucleus 2: 7 px background, 3 px type 3 -> background loses to type 3
    type_map[6:8, 0:5] = 0  # nucleus 3: background only -> type 0
    type_map[0:2, 10:14] = 1  # nucleus 4: 8 px type 1, 2 px background
    info = instance_info(inst_map, type_map)
    assert {inst_id: record['type'] for inst_id, record in info.items()} == {1: 2, 2: 3, 3: 0, 4: 1}
    # type_prob is the winner's share of the nucleus' pixels: count / (pixels + 1e-6).
    expected = {1: 5 / (10 + 1e-6), 2: 3 / (10 + 1e-6), 3: 10 / (10 + 1e-6), 4: 8 / (10 + 1e-6)}
    assert {inst_id: record['type_prob'] for inst_id, record in info.items()} == expected
    with pytest.raises(ValueError, match='type ids must be >= 0'):
        instance_info(inst_map, -type_map)


def test_instance_info_keeps_every_instance() -> None:
    # One pixel and a two-pixel line have 1- and 2-point contours; HoVer-Net would drop their records.
    inst_map = np.zeros((8, 8), np.int32)
    inst_map[1, 1] = 3
    inst_map[4, 2:4] = 9
    info = instance_info(inst_map)
    assert sorted(info) == [3, 9]
    np.testing.assert_array_equal(info[3]['contour'], [[1, 1]])
    np.testing.assert_array_equal(info[9]['contour'], [[2, 4], [3, 4]])
    np.testing.assert_array_equal(info[9]['centroid'], [2.5, 4.0])


@pytest.mark.parametrize('seed', range(4))
def test_watershed_instances_have_polygon_contours(seed: int) -> None:
    # Every watershed instance contains a 5x5 marker, so its contour always has at least 3 points.
    rng = np.random.default_rng(seed)
    discs = [(*rng.uniform(0, 80, 2), rng.uniform(3, 10)) for _ in range(25)]
    inst_map = disc_map((80, 80), discs)
    np_prob = np.clip(np_map(inst_map) + rng.normal(0, 0.3, inst_map.shape), 0, 1)
    predicted, info = hovernet_postprocess(np_prob, hv_map(inst_map) + rng.normal(0, 0.2, (2, 80, 80)))
    assert predicted.max() > 5 and sorted(info) == list(range(1, predicted.max() + 1))
    assert all(len(record['contour']) >= 3 for record in info.values())


def test_postprocess_drops_tiny_blobs_and_handles_empty_input() -> None:
    inst_map = disc_map((48, 48), [(20, 20, 8)])
    inst_map[40:43, 40:43] = 2  # 9 px, under the 10 px minimum
    predicted, _ = hovernet_postprocess(np_map(inst_map).astype(np.float32), hv_map(inst_map))
    assert predicted.max() == 1 and (predicted[40:43, 40:43] == 0).all()

    empty, info = hovernet_postprocess(np.zeros((32, 32)), np.zeros((2, 32, 32)), np.zeros((3, 32, 32)))
    assert empty.max() == 0 and info == {}


def test_postprocess_background_type_loses_to_any_nucleus_type() -> None:
    inst_map = disc_map((40, 40), [(20, 20, 8)])
    type_map = np.zeros_like(inst_map)
    type_map[18:22, 18:22] = 2  # most of the nucleus predicted background, a few pixels type 2
    tp_prob = np.stack([type_map == t for t in range(3)]).astype(np.float32)
    _, info = hovernet_postprocess(np_map(inst_map).astype(np.float32), hv_map(inst_map), tp_prob)
    assert list(info) == [1] and info[1]['type'] == 2
    assert info[1]['type_prob'] == pytest.approx(16 / (inst_map > 0).sum(), rel=1e-6)


def test_postprocess_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match='2xHxW'):
        hovernet_postprocess(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match='TxHxW'):
        hovernet_postprocess(np.zeros((8, 8)), np.zeros((2, 8, 8)), np.zeros((8, 8)))


def test_remap_used_by_postprocess_ids_are_contiguous() -> None:
    inst_map = disc_map((64, 64), [(16, 16, 7), (45, 45, 9), (16, 48, 6)])
    predicted, _ = hovernet_postprocess(np_map(inst_map).astype(np.float32), hv_map(inst_map))
    np.testing.assert_array_equal(predicted, remap_label(predicted))
