"""zoo compress: distillation through the trainer, the hub folder it publishes, resume and one-line refusals."""

import json
import logging

import pytest
import torch
from _helpers import KillAt, Killed
from safetensors.torch import load_file

import training.compress
import zoo
from training.cli import main
from training.distill import DistillationTask, distillation_loss
from training.trainer import Trainer
from zoo._registry import read_config
from zoo.hub import sha256_file

# One short epoch on the stardist tiles (fluorescence) with small patches, timed once on one small image.
QUICK = [
    '--data', 'stardist', '--ranks', '0.25', '--no-profile', '--epochs', '1', '--batch-size', '1', '--input-size', '64',
    '--repeats', '1',
    '--set', 'task.args.task_args.patch_size=64', '--set', 'task.args.task_args.step=64',
    '--set', 'task.args.task_args.augment=false', '--set', 'task.args.task_args.num_examples=0',
    '--set', 'batch.stages=[[0, 8]]', '--set', 'batch.base=8',
    '--set', 'log.progress=false', '--set', 'log.tensorboard=false', '--set', 'data.eval_batch=4',
]  # fmt: skip


def test_distillation_loss_of_logits_and_maps():
    logits = torch.randn(4, 10)
    assert distillation_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    kl = torch.nn.functional.kl_div(logits.log_softmax(1), torch.zeros(4, 10).softmax(1), reduction='batchmean')
    assert distillation_loss(logits, torch.zeros(4, 10)).item() == pytest.approx(kl.item(), rel=1e-5)
    maps = {'np': torch.randn(2, 2, 8, 8), 'hv': torch.randn(2, 2, 8, 8)}
    other = {'np': maps['np'], 'hv': maps['hv'] + 0.5}
    assert distillation_loss(other, maps).item() == pytest.approx(0.25, rel=1e-5)  # the HV maps are regressed


def test_distillation_loss_decreases():
    """A factorized student (SVD of the teacher at a quarter of full rank) learns the teacher's logits."""
    task = DistillationTask(
        'cf_resnet18_fmnist.full_rank', 'classification', dict(train_subset=32, augment=False), alpha=1.0
    )
    ranks = zoo.plan_compression(task.teacher, ranks=0.25, profile=False).ranks
    student = zoo.create_model('cf_resnet18_fmnist.full_rank', pretrained=True, ranks=ranks).train()
    images, labels = next(iter(torch.utils.data.DataLoader(task.datasets()[0], batch_size=32)))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        loss, parts = task.loss(student, (images, labels), torch.device('cpu'))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(parts['distill'].item())
    assert losses[-1] < 0.5 * losses[0], losses


def _refused(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'zoo compress: error: {message}') and err.count('\n') == 1, err


def test_compress_publishes_a_verified_folder_that_resumes(tmp_path, capsys, monkeypatch, caplog):
    out, run = tmp_path / 'hub' / 'small', tmp_path / 'run'
    argv = ['compress', 'mrl_seg_nano.stardist', str(out), '--run-dir', str(run), *QUICK]

    # killed in the middle of its only epoch: the plan and the checkpoint-free run dir stay, nothing is published
    class Killing(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, callbacks=[KillAt(epoch=0, step=0)], **kwargs)

    monkeypatch.setattr(training.compress, 'Trainer', Killing)
    with pytest.raises(Killed):
        main(argv)
    assert (run / 'compression' / 'plan.json').is_file() and not out.exists()
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger='training'):
        assert main([*argv, '--register', 'mrl_seg_nano.small']) == 0
    assert f'resuming the compression planned in {run / "compression" / "plan.json"}' in caplog.text

    plan = json.loads((run / 'compression' / 'plan.json').read_text())['plan']
    config = read_config(out)
    assert config['sha256'] == sha256_file(out / 'model.safetensors')
    assert config['model_args']['ranks'] == plan['ranks']
    loaded = zoo.create_model(f'local-dir:{out}', pretrained=True)
    trained = load_file(str(run / 'best' / 'model.safetensors'))
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
    assert loaded.input_domain == 'fluorescence'
    manifest = json.loads((out.parent / 'manifest.json').read_text())
    assert manifest['mrl_seg_nano.small']['model_args']['ranks'] == plan['ranks']

    card = json.loads((out / 'card.json').read_text())
    compression = card['compression']
    assert compression['source'] == 'mrl_seg_nano.stardist' and compression['epochs'] == 1
    assert compression['models']['dense']['params'] == 3958516 > compression['models']['compressed']['params']
    assert set(compression['models']['dense']['metrics']) == set(card['metrics'][compression['split']])
    readme = (out / 'README.md').read_text()
    assert '## Compression' in readme and 'dense `mrl_seg_nano.stardist`' in readme

    # tampered weights are refused when loaded
    (out / 'model.safetensors').write_bytes((out / 'model.safetensors').read_bytes()[:-1] + b'\0')
    with pytest.raises(zoo.WeightsHashError):
        zoo.create_model(f'local-dir:{out}', pretrained=True)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out, run = tmp_path / 'out', tmp_path / 'run'
    where = [str(out), '--run-dir', str(run)]
    _refused(capsys, ['compress', 'mrl_seg_nanno', *where, '--data', 'stardist'], "Unknown model 'mrl_seg_nanno'")
    _refused(
        capsys, ['compress', f'local-dir:{tmp_path / "none"}', *where, '--data', 'stardist'], f'{tmp_path / "none"}'
    )
    (tmp_path / 'empty').mkdir()
    _refused(capsys, ['compress', 'mrl_seg_nano.stardist', *where, '--data', str(tmp_path / 'empty')], '')
    _refused(
        capsys,
        ['compress', 'cf_resnet18_fmnist.full_rank', *where, '--data', 'fashion_mnist', '--target-macs', '1000'],
        'ResNet cannot reach 1000x fewer MACs',
    )
    _refused(capsys, ['compress', 'cf_resnet18_fmnist.full_rank', *where, '--data', 'stardist'], '--data stardist:')
    assert not out.exists() and not run.exists()


@pytest.mark.parametrize(
    'argv,message',
    [
        (['--epochs', '0'], "argument --epochs: must be a whole number >= 1, got '0'"),
        (['--repeats', '-2'], "argument --repeats: must be a whole number >= 1, got '-2'"),
        (['--batch-size', '1.5'], "argument --batch-size: must be a whole number >= 1, got '1.5'"),
        (['--input-size', '4'], "argument --input-size: must be a whole number >= 8, got '4'"),
        (
            ['--target-macs', 'inf'],
            "argument --target-macs: expected how many times fewer MACs, a number above 1, got 'inf'",
        ),
        (
            ['--ranks', 'nan'],
            "argument --ranks: expected 'stable', 'scaled' or a ratio of full rank in (0, 1], got 'nan'",
        ),
    ],
)
def test_numeric_options_are_checked_as_the_command_line_is_parsed(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(['compress', 'cf_resnet18_fmnist.full_rank', str(tmp_path / 'out'), '--data', 'fashion_mnist', *argv])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f'zoo compress: error: {message} (see zoo compress --help)\n'
    assert not (tmp_path / 'out').exists()


def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / 'notes.txt').write_text('kept')
    with pytest.raises(SystemExit):
        main(['compress', 'cf_resnet18_fmnist.full_rank', str(tmp_path / 'notes.txt'), '--data', 'fashion_mnist'])
    assert 'notes.txt is a file, not a folder' in capsys.readouterr().err
    assert (tmp_path / 'notes.txt').read_text() == 'kept'
