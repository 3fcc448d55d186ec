"""The nuclei-segmentation task with a type branch: HoVer-Net's type statistics in validation, and the
typed CoNSeP recipe, which is loaded, validated and run on a SYNTHETIC folder in CoNSeP's layout (the
real CoNSeP release is not available offline; nothing here is CoNSeP data or ground truth)."""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.distributed as dist
from _segment_oracle import RED_LEVELS, ReadOffNet, synthetic_sample
from PIL import Image
from torch.utils.data import Subset

from training.cli import main
from training.data import load_consep
from training.recipe import load_recipe
from training.segmentation import NucleiImageDataset, NucleiSegmentationTask
from training.tasks import build_task

SAMPLES = [
    synthetic_sample('a', [(12, 12, 1), (12, 44, 2), (44, 12, 3), (44, 44, 4)]),
    synthetic_sample('b', [(14, 16, 1), (30, 48, 1), (50, 20, 3)]),
]


def evaluate(task: NucleiSegmentationTask, model: torch.nn.Module) -> dict[str, float]:
    sums = task.evaluate(model, NucleiImageDataset(SAMPLES), torch.device('cpu'), batch_size=2)
    count = sums.pop('count')
    return {name: value / count for name, value in sums.items()}  # as the trainer does


def test_validation_reports_type_statistics() -> None:
    task = NucleiSegmentationTask(dataset='folder', data_dir='unused', num_types=5, tile=64, overlap=16)
    perfect = evaluate(task, ReadOffNet(RED_LEVELS))
    assert perfect['dice'] == 1.0 and perfect['pq'] == pytest.approx(1.0, abs=1e-6)
    assert {name: perfect[name] for name in ('f_d', 'acc', 'f_c_1', 'f_c_2', 'f_c_3', 'f_c_4')} == dict.fromkeys(
        ('f_d', 'acc', 'f_c_1', 'f_c_2', 'f_c_3', 'f_c_4'), 1.0
    )
    # Types 1 and 2 swapped. Pooled pairs (true, predicted): (1,2) (2,1) (3,3) (4,4) (1,2) (1,2) (3,3):
    # acc = 3/7; F_c^1 and F_c^2 have no true positive -> 0; F_c^3 = F_c^4 = 1; detection is unchanged.
    swapped = evaluate(task, ReadOffNet(RED_LEVELS[[0, 2, 1, 3, 4]]))
    assert swapped['f_d'] == 1.0 and swapped['acc'] == pytest.approx(3 / 7, rel=1e-12)
    assert (swapped['f_c_1'], swapped['f_c_2'], swapped['f_c_3'], swapped['f_c_4']) == (0.0, 0.0, 1.0, 1.0)
    assert swapped['dice'] == perfect['dice']


def _evaluate_shard(rank: int, port: int, queue) -> None:
    """One of two gloo ranks: evaluate a strided shard and reduce the sums as the trainer does."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), OMP_NUM_THREADS='1')
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        task = NucleiSegmentationTask(dataset='folder', data_dir='unused', num_types=5, tile=64, overlap=16)
        shard = Subset(NucleiImageDataset(SAMPLES), range(rank, len(SAMPLES), 2))
        sums = task.evaluate(ReadOffNet(RED_LEVELS[[0, 2, 1, 3, 4]]), shard, torch.device('cpu'), 2)
        keys = sorted(sums)
        totals = torch.tensor([sums[key] for key in keys], dtype=torch.float64)
        dist.all_reduce(totals)
        totals = dict(zip(keys, totals.tolist()))
        count = totals.pop('count')
        queue.put((rank, {name: value / count for name, value in totals.items()}))
    finally:
        dist.destroy_process_group()


def test_type_statistics_are_pooled_across_ranks() -> None:
    # Rank 0 scores image a, rank 1 image b. Per image the accuracy is 2/4 and 1/3 (mean 0.417); pooled,
    # as HoVer-Net and a single process compute it, 3/7 = 0.429.
    with socket.socket() as free:
        free.bind(('127.0.0.1', 0))
        port = free.getsockname()[1]
    context = multiprocessing.get_context('spawn')
    queue = context.Queue()
    workers = [context.Process(target=_evaluate_shard, args=(rank, port, queue)) for rank in range(2)]
    for worker in workers:
        worker.start()
    try:
        results = dict(queue.get(timeout=180) for _ in workers)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    task = NucleiSegmentationTask(dataset='folder', data_dir='unused', num_types=5, tile=64, overlap=16)
    single = evaluate(task, ReadOffNet(RED_LEVELS[[0, 2, 1, 3, 4]]))
    assert results[0]['acc'] == pytest.approx(3 / 7, rel=1e-12)
    assert results[0] == pytest.approx(single, rel=1e-12) and results[1] == pytest.approx(single, rel=1e-12)


def test_type_statistics_need_a_type_branch() -> None:
    task = NucleiSegmentationTask(dataset='folder', data_dir='unused', num_types=5, tile=64, overlap=16)
    with pytest.raises(ValueError, match='model has no type branch'):
        evaluate(task, ReadOffNet(None))
    untyped = NucleiSegmentationTask(dataset='folder', data_dir='unused', tile=64, overlap=16)
    assert 'f_d' not in evaluate(untyped, ReadOffNet(None))


def test_consep_recipe_is_valid() -> None:
    recipe = load_recipe('consep_typed_finetune')
    assert recipe['model']['args'] == {'num_types': 5}
    args = recipe['task']['args']
    assert args['dataset'] == 'consep' and args['num_types'] == 5
    task = build_task(recipe['task']['name'], {**args, 'data_dir': '/nowhere'})
    assert isinstance(task, NucleiSegmentationTask) and task.num_types == 5 and task.window_size == 512


def write_synthetic_consep(root: Path) -> None:
    """A SYNTHETIC folder in CoNSeP's layout: PNG images and .mat labels with CoNSeP's 7 original classes."""
    rng = np.random.default_rng(0)
    merged = np.array([0, 1, 2, 3, 3, 4, 4, 4])  # HoVer-Net's merge of CoNSeP's classes
    for split, count in (('Train', 3), ('Test', 1)):
        (root / split / 'Images').mkdir(parents=True)
        (root / split / 'Labels').mkdir(parents=True)
        for index in range(count):
            original_types = rng.integers(1, 8, 5)
            discs = [(*rng.integers(8, 56, 2), merged[t]) for t in original_types]
            sample = synthetic_sample(f'{split.lower()}_{index + 1}', discs)
            Image.fromarray(sample.image).save(root / split / 'Images' / f'{sample.name}.png')
            original_type_map = np.r_[0, original_types][sample.inst_map]  # later discs cover earlier ones
            labels = {'inst_map': sample.inst_map.astype(np.float64), 'type_map': original_type_map.astype(np.float64)}
            scipy.io.savemat(root / split / 'Labels' / f'{sample.name}.mat', labels)


def test_consep_recipe_runs_on_a_synthetic_consep_folder(tmp_path: Path) -> None:
    write_synthetic_consep(tmp_path / 'synthetic_consep')
    (first, *_) = load_consep(tmp_path / 'synthetic_consep', 'train')
    assert first.type_map.max() <= 4  # merged to HoVer-Net's 5 classes
    np.testing.assert_array_equal(first.image[..., 0], RED_LEVELS[first.type_map].astype(np.uint8))
    args = [
        'train',
        '--recipe',
        'consep_typed_finetune',
        '--run-dir',
        str(tmp_path / 'run'),
        f'task.args.data_dir={tmp_path / "synthetic_consep"}',
        'model.name=mrl_seg_nano',
        'epochs=1',
        'schedule.milestones=[]',  # the recipe's milestone (epoch 25) lies beyond one epoch
        'task.args.patch_size=64',
        'task.args.step=64',
        'task.args.tile=64',
        'task.args.overlap=16',
        'batch.stages=[[0, 2]]',
        'batch.base=2',
        'log.progress=false',
        'log.tensorboard=false',
        'data.eval_batch=2',
    ]
    assert main(args) == 0
    (row,) = list(csv.DictReader(open(tmp_path / 'run' / 'metrics.csv')))
    for name in ('dice', 'pq', 'f_d', 'acc', 'f_c_1', 'f_c_2', 'f_c_3', 'f_c_4'):
        value = float(row[name])
        assert math.isnan(value) or 0.0 <= value <= 1.0, (name, value)


@pytest.mark.parametrize(
    'recipe, types',
    [('pannuke_hovernet', 6), ('lizard_hovernet', 7), ('conic_hovernet', 7), ('monusac_hovernet', 5)],
)
def test_dataset_recipes_pair_the_model_and_the_task(recipe, types) -> None:
    loaded = load_recipe(recipe)
    assert loaded['model'] == {'name': 'hovernet_fast', 'args': {'num_types': types}}
    task = build_task(loaded['task']['name'], {**loaded['task']['args'], 'data_dir': '/nowhere'})
    assert task.num_types == types and len(task.type_names()) == types
