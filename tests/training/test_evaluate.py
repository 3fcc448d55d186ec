"""``zoo evaluate`` and ``training.evaluate``: the figures of a published card reproduced exactly through the same
code path, the table, JSON, per-image CSV and overlays, nuclear types from QuPath classifications, and the
one-line refusals.

Synthetic images here encode their own answer for :class:`ReadOffNet` (red: the type, green and blue: the HV
maps); they test the scoring, they are not data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _segment_oracle import RED_LEVELS, ReadOffNet, synthetic_sample, tiny_run, write_qupath
from PIL import Image

import zoo
from training.cli import main
from training.data import NucleiSample, load_geojson
from training.evaluate import evaluate_model, nuclei_evaluation_task
from training.segmentation import NucleiSegmentationTask
from zoo.hovernet import STAT_NAMES, instance_info


def test_evaluate_reproduces_the_published_card(tmp_path, capsys):
    """The card of mrl_seg_nano.stardist was written by `zoo publish`; `zoo evaluate` measures the same figures
    (to the card's 4 decimals, equal), and its per-image rows average to them."""
    args = ['evaluate', 'mrl_seg_nano.stardist', '--dataset', 'stardist', '--out', str(tmp_path), '--overlays']
    assert main([*args, '--json']) == 0
    report = json.loads(capsys.readouterr().out)
    (card,) = zoo.get_weights('mrl_seg_nano.stardist').metrics.values()
    assert {name: round(value, 4) for name, value in report['metrics'].items()} == card
    assert report['images'] == 4 and report['split'] == 'test' and report['type_names'] is None
    rows = list(csv.DictReader(open(tmp_path / 'stardist_test.csv')))
    assert [row['name'] for row in rows] == [f'stardist_dsb2018_r{r}_c{3 - r}' for r in range(4)]
    for name in STAT_NAMES:
        assert sum(float(row[name]) for row in rows) / 4 == pytest.approx(report['metrics'][name], abs=1e-15)
    overlays = sorted((tmp_path / 'stardist_test_overlays').iterdir())
    assert [p.stem for p in overlays] == [row['name'] for row in rows]
    assert Image.open(overlays[0]).size == (256, 128)  # ground truth and prediction side by side


SAMPLES = [
    synthetic_sample('a', [(12, 12, 1), (12, 44, 2), (44, 12, 3), (44, 44, 4)]),
    synthetic_sample('b', [(14, 16, 1), (30, 48, 1), (50, 20, 3)]),
]
NAMES = ['background', 'Tumor', 'Immune cells', 'Stroma', 'Necrosis']


def test_classified_qupath_annotations_score_a_typed_model(tmp_path):
    """Disc nuclei drawn as classified QuPath objects read back exactly, and a model that reads the answer off the
    image scores 1 everywhere; with two types swapped, HoVer-Net's pooled type statistics are those derived by
    hand in tests/training/test_nuclei_task.py."""
    write_qupath(tmp_path / 'data', SAMPLES, NAMES)
    for loaded, sample in zip(load_geojson(tmp_path / 'data', types=NAMES[1:]), SAMPLES, strict=True):
        np.testing.assert_array_equal(loaded.inst_map, sample.inst_map)
        np.testing.assert_array_equal(loaded.type_map, sample.type_map)
    perfect = ReadOffNet(RED_LEVELS)
    perfect.num_types = 5
    task = nuclei_evaluation_task(perfect, 'geojson', str(tmp_path / 'data'), NAMES[1:], {'tile': 64, 'overlap': 16})
    assert task.num_types == 5 and task.type_names() == NAMES
    result = evaluate_model(perfect, task, 'all')
    assert result.count == 2 and [row['name'] for row in result.per_image] == ['a', 'b']
    assert result.metrics['dice'] == 1.0 and all(result.metrics[f'f_c_{t}'] == 1.0 for t in range(1, 5))
    swapped = evaluate_model(ReadOffNet(RED_LEVELS[[0, 2, 1, 3, 4]]), task, 'all').metrics
    assert swapped['acc'] == pytest.approx(3 / 7, rel=1e-12)
    assert (swapped['f_c_1'], swapped['f_c_2'], swapped['f_c_3'], swapped['f_c_4']) == (0.0, 0.0, 1.0, 1.0)


def test_the_table_names_each_type(tmp_path, capsys):
    write_qupath(tmp_path / 'data', SAMPLES, NAMES)
    run = tiny_run(tmp_path / 'run', num_types=5)
    args = ['evaluate', str(run), '--dataset', 'geojson', '--data-dir', str(tmp_path / 'data'), '--split', 'all']
    assert main([*args, '--types', ','.join(NAMES[1:]), '--out', str(tmp_path / 'out')]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == f'{run} on geojson: 2 images, all images'
    assert [line.split()[0] for line in lines[2:]] == [*STAT_NAMES, 'f_d', 'acc', 'f_c_1', 'f_c_2', 'f_c_3', 'f_c_4']
    assert lines[-4].endswith('  Tumor') and lines[-3].endswith('  Immune cells') and lines[-1].endswith('  Necrosis')
    assert err == f'per image: {tmp_path / "out" / "geojson_all.csv"}\n'


@pytest.mark.parametrize(
    'args, message',
    [
        (['--dataset', 'pannuke', '--data-dir', 'x', '--types', 'a'], '--types names the classes of QuPath GeoJSON'),
        (['--dataset', 'pannuke'], '--dataset pannuke needs --data-dir, the folder it is unpacked in'),
        (['--dataset', 'monusac', '--data-dir', 'x'], 'the model predicts 6 nuclear types (background included) but '),
        (['--dataset', 'geojson', '--data-dir', 'x', '--types', 'a,,b'], '--types must be distinct, comma-separated'),
        (['--dataset', 'geojson', '--data-dir', 'x', '--types', 'a,b'], 'the model has no type branch: evaluate it'),
        (
            ['--dataset', 'monuseg', '--data-dir', 'x'],
            '--dataset must be one of stardist, kumar, consep, cpm17, pannuke',
        ),
        (
            ['--dataset', 'stardist', '--split', 'validation'],
            "--split must be one of train, val, test, all, got 'valid",
        ),
    ],
)
def test_refusals_are_one_line(tmp_path, capsys, args, message):
    run = tiny_run(tmp_path / 'run', num_types=0 if args[-1] == 'a,b' else 6)
    assert main(['evaluate', str(run), *args, '--out', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'zoo evaluate: error: {message}'), err


def test_a_classifier_is_refused(tmp_path, capsys):
    assert main(['evaluate', 'cf_resnet18_fmnist', '--dataset', 'stardist', '--out', str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        'zoo evaluate: error: zoo evaluate scores nuclei segmentation nets; cf_resnet18_fmnist is an '
        'image-classification model\n'
    )


def test_splits_of_the_stardist_sample():
    task = NucleiSegmentationTask('stardist')
    names = {split: [s.name for s in task.split_samples(split)] for split in ('train', 'val', 'test', 'all')}
    assert (len(names['train']), len(names['val']), len(names['test'])) == (10, 2, 4)
    assert sorted(names['all']) == sorted(names['train'] + names['val'] + names['test'])
    with pytest.raises(ValueError, match='split must be one of'):
        task.split_samples('validation')


ORACLES = Path(__file__).resolve().parents[1] / 'zoo' / 'hovernet' / 'oracles'
TYPE_CASES = json.loads((ORACLES / 'hovernet_type_stats.json').read_text())['cases']


@pytest.mark.parametrize('case', TYPE_CASES, ids=[case['id'] for case in TYPE_CASES])
def test_type_statistics_are_hovernets(case):
    """What this proves: from the same true and predicted instance and type maps, the scoring that zoo evaluate,
    zoo publish and validation run after inference (score_image, then summarise and the division by the image
    count) gives the F_d, accuracy and per-type F_c of HoVer-Net's own compute_stats.run_nuclei_type_stat, to
    1e-12, with centroids and majority types taken by zoo.hovernet.instance_info (the reference was fed the same
    ones; instance_info is checked against HoVer-Net's process() in test_oracles.py). Cases: several images
    pooled, images without predicted or without true nuclei, crowded nuclei, a type only predicted, 6 types."""
    arrays = np.load(ORACLES / 'hovernet_type_stats.npz')
    task = NucleiSegmentationTask('folder', 'unused', num_types=case['num_types'])
    scores = []
    for index in range(case['images']):
        key = f'{case["id"]}_{index}'
        truth = arrays[f'{key}_true'].astype(np.int32)
        sample = NucleiSample(key, np.zeros((*truth.shape, 3), np.uint8), truth, arrays[f'{key}_true_type'])
        pred = arrays[f'{key}_pred']
        scores.append(task.score_image(sample, pred, instance_info(pred, arrays[f'{key}_pred_type'])))
    sums = task.summarise(scores)
    count = sums.pop('count')
    assert count == case['images']
    for name, expected in case['expected'].items():
        assert sums[name] / count == pytest.approx(expected, abs=1e-12), name
