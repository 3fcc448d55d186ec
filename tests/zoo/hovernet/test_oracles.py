"""Every value of the HoVer-Net reference fixtures in ``oracles/`` (see ``oracles/README.md``): metrics,
training targets and losses, against the values github:vqdang/hover_net@67e2ce5e gives for the same inputs;
and post-processing against ``hovernet_postprocess.npz``, the output of the same commit's unmodified
``process()`` (made by ``oracles/make_hovernet_postprocess.py``).

Tolerances are the README's: metrics 1e-9, NP targets exact, HV targets 1e-5, losses 1e-5. Entries where
the reference divides by zero or crashes (``"nan"``, ``"error: ..."``) carry no reference value; the zoo's
documented rule for them (both maps empty -> 1.0, one empty -> 0.0) is checked separately.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from zoo.hovernet.losses import hovernet_loss
from zoo.hovernet.metrics import (
    aji,
    aji_plus,
    dice,
    dice2,
    instance_stats,
    mean_instance_stats,
    panoptic_quality,
)
from zoo.hovernet.postprocess import fill_holes, hovernet_postprocess
from zoo.hovernet.targets import hovernet_targets

ORACLES = Path(__file__).parent / 'oracles'
METRICS = json.loads((ORACLES / 'hovernet_metrics.json').read_text())
METRIC_MAPS = np.load(ORACLES / 'hovernet_metrics.npz')
TARGETS = np.load(ORACLES / 'hovernet_targets.npz')
LOSSES = json.loads((ORACLES / 'hovernet_losses.json').read_text())
LOSS_INPUTS = np.load(ORACLES / 'hovernet_losses.npz')
POSTPROCESS = np.load(ORACLES / 'hovernet_postprocess.npz')
# Reference term name -> zoo term name.
LOSS_NAMES = {
    'np_xentropy': 'np_ce',
    'np_dice': 'np_dice',
    'hv_mse': 'hv_mse',
    'hv_msge': 'hv_msge',
    'tp_xentropy': 'tp_ce',
    'tp_dice': 'tp_dice',
}

METRIC_FUNCTIONS = {
    'dice': dice,
    'dice2': dice2,
    'aji': aji,
    'aji_plus': aji_plus,
    'dq': lambda true, pred: panoptic_quality(true, pred, METRICS['match_iou'])[0],
    'sq': lambda true, pred: panoptic_quality(true, pred, METRICS['match_iou'])[1],
    'pq': lambda true, pred: panoptic_quality(true, pred, METRICS['match_iou'])[2],
}


def test_fixtures_are_complete() -> None:
    assert METRICS['metric_keys'] == list(METRIC_FUNCTIONS)
    assert len(METRICS['cases']) == 150 and len(TARGETS['names']) == 30 and len(LOSSES['cases']) == 20
    defined = [v for case in METRICS['cases'] for v in case['expected'].values() if not isinstance(v, str)]
    assert len(defined) == 1035  # every defined metric value below is compared


@pytest.mark.parametrize('case', METRICS['cases'], ids=[case['id'] for case in METRICS['cases']])
def test_instance_metrics_match_hovernet(case: dict) -> None:
    true, pred = METRIC_MAPS[f'true_{case["id"]}'], METRIC_MAPS[f'pred_{case["id"]}']
    assert true.shape == pred.shape == tuple(case['shape'])
    stats = instance_stats(true, pred)
    for name, expected in case['expected'].items():
        if isinstance(expected, str):  # the reference has no value here
            continue
        assert METRIC_FUNCTIONS[name](true, pred) == pytest.approx(expected, rel=0, abs=1e-9), name
        if name in stats:
            assert stats[name] == pytest.approx(expected, rel=0, abs=1e-9), name


def test_undefined_reference_values_follow_the_documented_rule() -> None:
    for case in METRICS['cases']:
        true, pred = METRIC_MAPS[f'true_{case["id"]}'], METRIC_MAPS[f'pred_{case["id"]}']
        undefined = [name for name, value in case['expected'].items() if isinstance(value, str)]
        for name in undefined:
            value = METRIC_FUNCTIONS[name](true, pred)
            if not true.any() and not pred.any():
                assert value == 1.0, (case['id'], name)
            else:  # one map empty, or (dice2) no GT nucleus overlaps a prediction
                assert value == 0.0, (case['id'], name)


def test_aggregate_is_the_per_image_mean() -> None:
    aggregate = METRICS['aggregate']
    pairs = [(METRIC_MAPS[t], METRIC_MAPS[p]) for t, p in zip(aggregate['true_keys'], aggregate['pred_keys'])]
    for (true, pred), expected in zip(pairs, aggregate['expected_per_image'], strict=True):
        assert instance_stats(true, pred) == pytest.approx(expected, rel=0, abs=1e-9)
    assert mean_instance_stats(pairs) == pytest.approx(aggregate['expected_mean'], rel=0, abs=1e-9)


@pytest.mark.parametrize('name', TARGETS['names'].tolist())
def test_targets_match_hovernet(name: str) -> None:
    inst_map, crop = TARGETS[f'inst_{name}'], tuple(TARGETS[f'crop_{name}'].tolist())
    targets = hovernet_targets(inst_map, output_size=crop, min_size=int(TARGETS['min_size']))
    np.testing.assert_array_equal(targets['np'], TARGETS[f'np_{name}'])
    # The reference stores HV as H x W x (x, y); the zoo as (x, y) x H x W.
    np.testing.assert_allclose(targets['hv'], TARGETS[f'hv_{name}'].transpose(2, 0, 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize('case', LOSSES['cases'], ids=[case['id'] for case in LOSSES['cases']])
def test_losses_match_hovernet(case: dict) -> None:
    def tensor(key: str) -> torch.Tensor:
        return torch.from_numpy(LOSS_INPUTS[f'{case["id"]}_{key}'])

    outputs = {'np': tensor('np_logits'), 'hv': tensor('hv_pred')}
    targets = {'np': tensor('np_target'), 'hv': tensor('hv_target')}
    if 'n_types' in case:
        outputs['tp'], targets['tp'] = tensor('tp_logits'), tensor('tp_target')
        assert outputs['tp'].shape[1] == case['n_types']
    assert outputs['np'].dtype == torch.float64
    total, parts = hovernet_loss(outputs, targets)
    expected = case['expected']
    assert set(parts) == {LOSS_NAMES[name] for name in expected if name != 'total'}
    for name, value in expected.items():
        got = total if name == 'total' else parts[LOSS_NAMES[name]]
        assert got.item() == pytest.approx(value, rel=0, abs=1e-5), name


@pytest.mark.parametrize('name', POSTPROCESS['names'].tolist())
def test_postprocess_matches_hovernet(name: str) -> None:
    def fixture(key: str) -> np.ndarray:
        return POSTPROCESS[f'{name}_{key}']

    # The reference was given the per-pixel type ids; one-hot "probabilities" have the same argmax.
    tp_prob = np.eye(5, dtype=np.float32)[fixture('tp_map')].transpose(2, 0, 1)
    inst_map, inst_info = hovernet_postprocess(fixture('np_prob'), fixture('hv'), tp_prob)
    # Same instances, renumbered 1..N in the reference's order.
    reference_ids = fixture('ids')
    renumber = np.zeros(int(fixture('inst').max()) + 1, dtype=np.int32)
    renumber[reference_ids] = np.arange(1, reference_ids.size + 1)
    np.testing.assert_array_equal(inst_map, renumber[fixture('inst')])
    assert sorted(inst_info) == list(range(1, reference_ids.size + 1))
    contours = np.split(fixture('contour'), np.cumsum(fixture('contour_len'))[:-1])
    for index, inst_id in enumerate(range(1, reference_ids.size + 1)):
        record = inst_info[inst_id]
        np.testing.assert_array_equal(record['bbox'], fixture('bbox')[index])
        np.testing.assert_array_equal(record['centroid'], fixture('centroid')[index])
        np.testing.assert_array_equal(record['contour'], contours[index])
        assert record['type'] == fixture('type')[index]
        assert record['type_prob'] == fixture('type_prob')[index]


def test_fill_holes_fills_what_scipy_fills() -> None:
    # The watershed's markers and the GeoJSON outlines fill holes with the OpenCV flood fill; scipy's is the rule.
    rng = np.random.default_rng(0)
    for _ in range(300):
        mask = rng.random(rng.integers(1, 40, 2)) < rng.uniform(0.2, 0.8)
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
