"""`zoo finetune --model NAME.tag` starts from the published weights, and what it publishes loads."""

import csv
import logging

import torch

import zoo
from training.cli import main

# One short epoch on the stardist tiles (fluorescence), small patches: a few seconds on two cores.
QUICK = [
    '--dataset', 'stardist', '--epochs', '1',
    'task.args.patch_size=64', 'task.args.step=64', 'task.args.tile=128', 'task.args.overlap=32',
    'task.args.augment=false', 'batch.stages=[[0, 8]]', 'batch.base=8', 'optim.lr=0.000001',
    'log.progress=false', 'log.tensorboard=false', 'data.eval_batch=4',
]  # fmt: skip


def _dice(run_dir):
    return float(next(csv.DictReader(open(run_dir / 'metrics.csv')))['dice'])


def test_finetune_from_a_tag_starts_from_its_weights_and_publishes_a_loadable_folder(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger='training'):
        assert main(['finetune', '--model', 'mrl_seg_nano.stardist', '--run-dir', str(tmp_path / 'tuned'), *QUICK]) == 0
    assert 'starting from the published weights mrl_seg_nano.stardist' in caplog.text
    assert main(['finetune', '--model', 'mrl_seg_nano', '--run-dir', str(tmp_path / 'scratch'), *QUICK]) == 0
    # At a learning rate of 1e-6 one epoch changes nothing much: the published net segments, a fresh one does not.
    assert _dice(tmp_path / 'tuned') > 0.85 > 0.5 > _dice(tmp_path / 'scratch')

    assert main(['publish', str(tmp_path / 'tuned'), str(tmp_path / 'hub' / 'tuned'), '--input-domain',
                 'fluorescence']) == 0  # fmt: skip
    loaded = zoo.create_model(f'local-dir:{tmp_path / "hub" / "tuned"}', pretrained=True)
    published = zoo.create_model('mrl_seg_nano.stardist', pretrained=True)
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(v, published.state_dict()[k])]
    assert changed, 'the fine-tuned weights are published, not the starting point'
    assert loaded.input_domain == 'fluorescence'
