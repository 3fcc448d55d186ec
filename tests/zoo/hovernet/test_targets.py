"""HoVer-Net targets, loss and watershed post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.hovernet.losses import LOSS_TERMS, hovernet_loss, hv_gradients
from zoo.hovernet.metrics import aji, remap_label
from zoo.hovernet.postprocess import hovernet_postprocess
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


def test_hv_map_on_a_rectangle() -> None:
    inst_map = np.zeros((10, 14), np.int32)
    inst_map[2:7, 3:12] = 5  # rows 2..6 (centre row 4), columns 3..11 (centre column 7)
    hv = hv_map(inst_map)
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
    horizontal = hv_map(inst_map)[0, 1]
    np.testing.assert_allclose(horizontal[0:4], [-1, -1 / 3, 1 / 3, 1], atol=1e-6)
    np.testing.assert_allclose(horizontal[5:12], np.arange(-3, 4) / 3, atol=1e-6)


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
    # Ids are visited in ascending order: id 1's second part becomes 4, id 3's becomes 5.
    np.testing.assert_array_equal(split, [[3, 3, 0, 5], [0, 0, 0, 5], [1, 0, 4, 0]])


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


def test_msge_gradients_follow_their_axis() -> None:
    columns = torch.arange(16.0).expand(16, 16)
    ramps = torch.stack([columns, columns.T]).unsqueeze(0)  # H grows along x, V along y
    gradients = hv_gradients(ramps)[0, :, 4:12, 4:12]  # away from the zero padding
    assert (gradients > 0).all()
    sideways = hv_gradients(torch.stack([columns.T, columns]).unsqueeze(0))[0, :, 4:12, 4:12]
    torch.testing.assert_close(sideways, torch.zeros_like(sideways))


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
    assert predicted.dtype == np.int32 and predicted.max() == 3
    assert aji(inst_map, predicted) > 0.9
    # Types follow the majority inside each recovered instance.
    for inst_id, inst in info.items():
        true_id = np.bincount(inst_map[predicted == inst_id]).argmax()
        assert inst['type'] == (2 if true_id == 2 else 1) and 0.5 < inst['type_prob'] <= 1
        rows, cols = np.nonzero(predicted == inst_id)
        np.testing.assert_array_equal(inst['bbox'], [[rows.min(), cols.min()], [rows.max() + 1, cols.max() + 1]])
        np.testing.assert_allclose(inst['centroid'], [cols.mean(), rows.mean()])
        assert (predicted[inst['contour'][:, 1], inst['contour'][:, 0]] == inst_id).all()  # [x, y] on the instance

    predicted_without_types, no_types = hovernet_postprocess(np_map(inst_map), hv_map(inst_map))
    assert {inst['type'] for inst in no_types.values()} == {None}
    np.testing.assert_array_equal(predicted_without_types, predicted)


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
    assert info[1]['type'] == 2 and info[1]['type_prob'] == pytest.approx(16 / (inst_map == 1).sum())


def test_postprocess_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match='2xHxW'):
        hovernet_postprocess(np.zeros((8, 8)), np.zeros((8, 8)))


def test_remap_used_by_postprocess_ids_are_contiguous() -> None:
    inst_map = disc_map((64, 64), [(16, 16, 7), (45, 45, 9), (16, 48, 6)])
    predicted, _ = hovernet_postprocess(np_map(inst_map).astype(np.float32), hv_map(inst_map))
    np.testing.assert_array_equal(predicted, remap_label(predicted))
