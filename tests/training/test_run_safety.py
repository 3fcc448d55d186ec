"""A run directory is used by one run at a time and survives damage: a second run into it stops at once, a
killed run's lock does not block, a damaged newest checkpoint falls back to the previous one, and resumes that
would compute something else are refused. Every refusal is one line with exit status 2 that loses nothing."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tifffile
import torch
from PIL import Image
from safetensors.torch import load_file

from training.checkpoint import CheckpointDir
from training.cli import main
from training.data import split_stardist_sample
from training.recipe import load_recipe
from training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
TINY = [
    'epochs=3',
    'task.args.train_subset=384',
    'task.args.holdout=512',  # validate on the last 512 training images (the recipe holds out 5,000)
    'batch.stages=[[0, 64]]',
    'batch.base=64',
    'model.args.widths=[4,8,16,32]',
    'log.progress=false',
    'log.tensorboard=false',
]


def _train(run_dir: Path, *extra: str) -> list[str]:
    return ['train', '--recipe', 'fmnist_resnet18', '--run-dir', str(run_dir), *TINY, *extra]


def _contents(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory but the lock, whose holder changes with each run."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob('*') if p.is_file() and p.name != '.lock'
    }


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err.strip()


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory) -> Path:
    """A finished 3-epoch run: checkpoints epoch-0002 and epoch-0003 (the newest two)."""
    run = tmp_path_factory.mktemp('finished') / 'run'
    Trainer(load_recipe('fmnist_resnet18', TINY), run).fit()
    return run


@pytest.fixture
def run_dir(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / 'run'))


# ---------------------------------------------------------------------------------------------- damage


def _garbage(path: Path) -> None:
    path.write_bytes(b'\x00' * path.stat().st_size)  # e.g. a crash of the machine before the data reached the disk


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    'name,damage', [('state.json', _garbage), ('model.safetensors', _truncate)], ids=['state.json', 'weights']
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(run_dir, name, damage, caplog):
    checkpoints = run_dir / 'checkpoints'
    final = {k: v.clone() for k, v in load_file(str(checkpoints / 'epoch-0003' / 'model.safetensors')).items()}
    metrics = (run_dir / 'metrics.csv').read_text().splitlines()
    damage(checkpoints / 'epoch-0003' / name)

    trainer = Trainer(load_recipe('fmnist_resnet18', TINY), run_dir)
    with caplog.at_level(logging.INFO, logger='training'):
        trainer.fit()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f'{checkpoints / "epoch-0003"} cannot be read ({name}: ')
    assert warnings[0].endswith(f'); resuming from {checkpoints / "epoch-0002"} instead')
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f'resumed {checkpoints / "epoch-0002"}: epochs 0-1 are done; training continues with epoch 2' in infos

    # Epoch 2 ran again from the previous checkpoint, to the same weights and metrics (CPU runs are exact),
    # and replaced the damaged checkpoint with a complete one.
    for key, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, final[key], rtol=0, atol=0, msg=key)
    again = (run_dir / 'metrics.csv').read_text().splitlines()
    column = metrics[0].split(',').index('top1')
    assert [r.split(',')[column] for r in again] == [r.split(',')[column] for r in metrics]
    assert CheckpointDir.read(checkpoints / 'epoch-0003', 0).state['epoch'] == 3
    assert sorted(p.name for p in checkpoints.iterdir()) == ['epoch-0002', 'epoch-0003', 'latest']


def _set_state(path: Path, key: str, value) -> None:
    """Overwrite one entry of a checkpoint's state.json (flattened by training.checkpoint) with a JSON value."""
    state = json.loads(path.read_text())
    next(item for item in state['__dict__'] if item[0] == key)[1] = value
    path.write_text(json.dumps(state))


@pytest.mark.parametrize(
    'key,value,problem',
    [
        ('epoch', 'three', "state.json: epoch: Input should be a valid integer, got 'three'"),
        ('history', {'__dict__': [['rows', 3]]}, "state.json: history: Input should be a valid list, got {'rows': 3}"),
        (
            'model_args',
            {'__dict__': [['widths', [4, 8, 16, 0]]]},
            'state.json: model_args do not build cf_resnet18_fmnist (widths must be whole numbers >= 1, got '
            '(4, 8, 16, 0))',
        ),
    ],
    ids=['wrong-type', 'wrong-shape', 'model-args'],
)
def test_a_checkpoint_whose_state_is_damaged_falls_back_like_damaged_weights(run_dir, caplog, key, value, problem):
    checkpoints = run_dir / 'checkpoints'
    _set_state(checkpoints / 'epoch-0003' / 'state.json', key, value)
    trainer = Trainer(load_recipe('fmnist_resnet18', TINY), run_dir)
    with caplog.at_level(logging.INFO, logger='training'):
        assert trainer.resume() and trainer.epoch == 2
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f'{checkpoints / "epoch-0003"} cannot be read ({problem}); resuming from {checkpoints / "epoch-0002"} instead'
    ]


def test_no_readable_checkpoint_is_an_error_that_changes_nothing(run_dir, capsys):
    checkpoints = run_dir / 'checkpoints'
    _garbage(checkpoints / 'epoch-0003' / 'state.json')
    _truncate(checkpoints / 'epoch-0002' / 'model.safetensors')
    before = _contents(run_dir)
    assert main(_train(run_dir)) == 2
    error = _error_line(capsys)
    assert error.startswith(f'zoo train: error: {checkpoints / "epoch-0003"} cannot be read (state.json: ')
    assert f'; {checkpoints / "epoch-0002"} cannot be read (model.safetensors: ' in error
    assert error.endswith(
        f'; no checkpoint is left to resume from: move {checkpoints} away to train from the start, '
        f'or train into a new --run-dir'
    )
    assert _contents(run_dir) == before


# ---------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    'override,change',
    [
        ('optim.lr=0.05', 'optim.lr: 0.1 -> 0.05'),
        ('epochs=5', 'epochs: 3 -> 5, which changes the cosine learning-rate schedule'),
    ],
    ids=['lr', 'epochs'],
)
def test_a_resume_that_would_compute_something_else_is_refused(run_dir, capsys, override, change):
    before = _contents(run_dir)
    assert main(_train(run_dir, override)) == 2
    assert _error_line(capsys) == (
        f'zoo train: error: {run_dir} was trained with a different recipe ({change}); restore those values to '
        f'resume it, or train into a new --run-dir'
    )
    assert _contents(run_dir) == before  # recipe.yaml still holds the run's own recipe


def _grown_model(monkeypatch):
    """As if the architecture had gained a parameter since the checkpoint was written."""
    import zoo

    create_model = zoo.create_model

    def grown(*args, **kwargs):
        model = create_model(*args, **kwargs)
        model.extra = torch.nn.Parameter(torch.zeros(1))
        return model

    monkeypatch.setattr(zoo, 'create_model', grown)


def _one_parameter_group(monkeypatch):
    """As if the optimizer had been built with one group instead of timm's two (decayed and not)."""
    import training.trainer

    monkeypatch.setattr(
        training.trainer, '_param_groups', lambda model, weight_decay, exclude: [{'params': list(model.parameters())}]
    )


@pytest.mark.parametrize(
    'change,why',
    [
        (_grown_model, 'Error(s) in loading state_dict for ResNet: Missing key(s) in state_dict: "extra". '),
        (_one_parameter_group, 'loaded state dict has a different number of parameter groups'),
    ],
    ids=['weights', 'optimizer'],
)
def test_a_checkpoint_from_another_version_of_the_code_is_refused(run_dir, capsys, monkeypatch, change, why):
    change(monkeypatch)
    before = _contents(run_dir)
    assert main(_train(run_dir)) == 2
    assert _error_line(capsys) == (
        f'zoo train: error: {run_dir / "checkpoints" / "epoch-0003"} does not fit the model and optimizer this code '
        f'builds (was it written by another version of the zoo?): {why}; train into a new --run-dir'
    )
    assert _contents(run_dir) == before


# ---------------------------------------------------------------------------------------------- lock

# Trains into argv[1] and waits at its first step until the file argv[2] exists.
_HOLDER = """
import pathlib, sys, time
from training.callbacks import Callback
from training.recipe import load_recipe
from training.trainer import Trainer

class Gate(Callback):
    def on_step_end(self, trainer, epoch, step):
        while not pathlib.Path(sys.argv[2]).exists():
            time.sleep(0.05)

Trainer(load_recipe('fmnist_resnet18', sys.argv[3:]), pathlib.Path(sys.argv[1]), callbacks=[Gate()]).fit()
"""


def _wait_for_lock(run_dir: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    lock = run_dir / '.lock'
    while not (lock.exists() and lock.read_text().startswith(f'{process.pid}@')):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


def test_a_second_run_into_a_directory_in_use_stops_at_once(tmp_path, capsys, monkeypatch):
    import training.trainer

    run_dir, gate = tmp_path / 'run', tmp_path / 'gate'
    first = subprocess.Popen(
        [sys.executable, '-c', _HOLDER, str(run_dir), str(gate), *TINY, 'epochs=1'],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_lock(run_dir, first)
        # another recipe too: the lock is checked before anything is read or written, the data and model not loaded
        with monkeypatch.context() as patch:
            patch.setattr(training.trainer, 'build_task', lambda *_: pytest.fail('the data was loaded first'))
            assert main(_train(run_dir, 'epochs=1', 'optim.lr=0.05')) == 2
        assert _error_line(capsys) == (
            f'zoo train: error: {run_dir} is in use by another run (process {first.pid}@{socket.gethostname()}); '
            f'wait for it to finish, or train into another --run-dir'
        )
    finally:
        gate.touch()
        out = first.communicate(timeout=600)[0]
    assert first.returncode == 0, out
    assert 'lr: 0.1\n' in (run_dir / 'recipe.yaml').read_text()  # the first run's recipe, untouched
    # the lock ended with the first run: the same command now resumes the finished run
    assert main(_train(run_dir, 'epochs=1')) == 0


def test_the_lock_of_a_killed_run_does_not_block(run_dir, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            '-c',
            'import os, signal, sys; from training.runlog import RunDirLock; '
            'assert RunDirLock(sys.argv[1]).acquire(1); os.kill(os.getpid(), signal.SIGKILL)',
            str(run_dir),
        ],
        cwd=REPO,
    )
    assert holder.wait(timeout=120) == -signal.SIGKILL
    assert (run_dir / '.lock').read_text().startswith(f'{holder.pid}@')  # the dead holder's record is there
    assert main(_train(run_dir)) == 0
    assert (run_dir / '.lock').read_text().split('@')[0] == str(os.getpid())


# ---------------------------------------------------------------------------------------------- bad input


def test_a_batch_larger_than_the_training_set_is_refused_before_any_work(tmp_path, capsys):
    assert main(_train(tmp_path / 'run', 'task.args.train_subset=48')) == 2
    assert _error_line(capsys) == (
        'zoo train: error: batch.stages: the global batch 64 (from epoch 0) is larger than the training set '
        '(48 samples); give a smaller batch or more data'
    )
    assert not (tmp_path / 'run').exists()


def test_a_learning_rate_that_diverges_names_the_value_to_lower(tmp_path, capsys):
    assert main(_train(tmp_path / 'run', 'optim.lr=1e6')) == 2
    error = _error_line(capsys)
    assert error.startswith('zoo train: error: optim.lr: training diverged (the loss is nan at epoch 0, step ')
    assert error.endswith('); lower optim.lr (now 1e+06), or clip the gradients with optim.clip_grad_norm')


def _finetune(dataset: str, data_dir: Path, run_dir: Path) -> list[str]:
    return ['finetune', '--dataset', dataset, '--data-dir', str(data_dir), '--epochs', '1', '--run-dir', str(run_dir)]


def test_finetune_on_a_single_image_is_refused(tmp_path, capsys):
    sample = split_stardist_sample(tile_size=64)[0][0]
    # a folder dataset without train/ and val/ is split into both: one image cannot be
    folder = tmp_path / 'folder'
    (folder / 'images').mkdir(parents=True)
    (folder / 'labels').mkdir()
    Image.fromarray(sample.image).save(folder / 'images' / 'a.png')
    tifffile.imwrite(folder / 'labels' / 'a.tif', sample.inst_map.astype(np.uint16))
    assert main(_finetune('folder', folder, tmp_path / 'run')) == 2
    assert _error_line(capsys) == (
        f"zoo finetune: error: {folder}: a 'train' split needs 0 < val_fraction < 1 and at least 2 images, got "
        f'val_fraction=0.2 and 1 image(s); add images, or give train/ and val/ folders'
    )
    # an official split (CPM-17's layout) with one training image leaves none for validation
    cpm17 = tmp_path / 'cpm17'
    for split in ('train', 'test'):
        (cpm17 / split / 'Images').mkdir(parents=True)
        (cpm17 / split / 'Labels').mkdir()
        Image.fromarray(sample.image).save(cpm17 / split / 'Images' / 'a.png')
        scipy.io.savemat(cpm17 / split / 'Labels' / 'a.mat', {'inst_map': sample.inst_map})
    assert main(_finetune('cpm17', cpm17, tmp_path / 'run')) == 2
    assert _error_line(capsys) == (
        f'zoo finetune: error: {cpm17}: 1 training image(s); at least 2 are needed to hold one out for validation; '
        f'add images'
    )
    assert not (tmp_path / 'run').exists()
