"""The trainer in one process: recipes, logs, checkpoints, exact resume after a kill, errors."""

import csv
import json

import pytest
import torch
from _helpers import KillAt, Killed

from training.checkpoint import CheckpointDir, flatten, unflatten
from training.errors import RunError
from training.recipe import RecipeError, load_recipe
from training.trainer import Trainer, _recipe_changes

TINY = [
    'epochs=3',
    'task.args.train_subset=384',
    'task.args.val_subset=256',
    'batch.stages=[[0, 64], [2, 128]]',
    'batch.base=64',
    'model.args.widths=[4,8,16,32]',
    'log.progress=false',
    'log.tensorboard=false',
]


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_killed_run_resumes_to_the_same_result(tmp_path):
    recipe = load_recipe('fmnist_resnet18', TINY)
    reference = Trainer(recipe, tmp_path / 'uninterrupted')
    reference.fit()

    with pytest.raises(Killed):
        Trainer(recipe, tmp_path / 'killed', callbacks=[KillAt(epoch=1, step=2)]).fit()
    assert CheckpointDir(tmp_path / 'killed').candidates()[0].name == 'epoch-0001'
    resumed = Trainer(recipe, tmp_path / 'killed')
    resumed.fit()

    expected, actual = _weights(reference.model), _weights(resumed.model)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
    assert [r['top1'] for r in resumed.history] == [r['top1'] for r in reference.history]
    assert [r['global_batch'] for r in resumed.history] == [64, 64, 128]  # batch-size control stage at epoch 2


def test_run_directory_contents(tmp_path):
    recipe = load_recipe('fmnist_resnet18', TINY + ['task.args.train_subset=2048', 'model.args.widths=[8,16,32,64]'])
    best = Trainer(recipe, tmp_path / 'run').fit()
    run = tmp_path / 'run'
    rows = list(csv.DictReader(open(run / 'metrics.csv')))
    assert [int(r['epoch']) for r in rows] == [0, 1, 2]
    assert {'train_loss', 'lr', 'top1', 'top5', 'val_loss', 'params', 'epoch_seconds'} <= set(rows[0])
    info = json.loads((run / 'best' / 'run.json').read_text())
    assert info['metrics']['top1'] == best['top1'] == pytest.approx(max(float(r['top1']) for r in rows), abs=1e-3)
    assert info['model_name'] == 'cf_resnet18_fmnist' and info['recipe']['name'] == 'fmnist_resnet18'
    assert (run / 'best' / 'model.safetensors').exists() and (run / 'recipe.yaml').exists()
    # named by epochs completed; the newest two are kept
    assert sorted(p.name for p in (run / 'checkpoints').glob('epoch-*')) == ['epoch-0002', 'epoch-0003']
    # accuracy after three short epochs is far above chance (10 %) on held-out images
    assert best['top1'] > 40


def test_finished_run_is_not_retrained(tmp_path):
    recipe = load_recipe('fmnist_resnet18', TINY)
    Trainer(recipe, tmp_path / 'run').fit()
    again = Trainer(recipe, tmp_path / 'run', callbacks=[KillAt(epoch=0, step=0)])
    again.fit()  # nothing left to do: no step runs, so KillAt never fires
    assert again.epoch == 3


def test_resume_with_a_changed_recipe_is_refused(tmp_path):
    Trainer(load_recipe('fmnist_resnet18', TINY + ['epochs=1']), tmp_path / 'run').fit()
    changed = Trainer(load_recipe('fmnist_resnet18', TINY + ['epochs=1', 'optim.lr=0.05']), tmp_path / 'run')
    with pytest.raises(RunError, match=r'different recipe \(optim.lr: 0.1 -> 0.05\); restore those values'):
        changed.resume()
    # fmnist_resnet18 anneals the learning rate over all epochs (cosine): more epochs would change it
    longer = Trainer(load_recipe('fmnist_resnet18', TINY + ['epochs=2']), tmp_path / 'run')
    with pytest.raises(RunError, match=r'\(epochs: 1 -> 2, which changes the cosine learning-rate schedule\)'):
        longer.resume()
    assert changed.epoch == longer.epoch == 0  # nothing was restored


@pytest.mark.parametrize(
    'schedule,refused',
    [
        (['schedule.decay=cosine'], True),
        (['schedule.decay=step', 'schedule.milestones=[2]'], False),
        (['schedule.decay=constant', 'schedule.warmup_epochs=2'], False),
    ],
)
def test_which_epochs_changes_are_refused(schedule, refused):
    before = load_recipe('fmnist_resnet18', TINY + schedule)
    for epochs in (4, 30):
        changes = _recipe_changes(before, load_recipe('fmnist_resnet18', TINY + schedule + [f'epochs={epochs}']))
        assert changes == (
            [f'epochs: 3 -> {epochs}, which changes the cosine learning-rate schedule'] if refused else []
        )


def test_resume_with_more_epochs_where_the_schedule_does_not_depend_on_them(tmp_path):
    step = ['schedule.decay=step']
    Trainer(load_recipe('fmnist_resnet18', TINY + step + ['epochs=1']), tmp_path / 'run').fit()
    # a run's own recipe.yaml is a valid recipe, and more epochs may be added to a finished run
    again = Trainer(load_recipe(str(tmp_path / 'run' / 'recipe.yaml'), ['epochs=2']), tmp_path / 'run')
    assert again.resume() and again.epoch == 1


def test_resume_with_another_world_size_is_refused(tmp_path):
    recipe = load_recipe('fmnist_resnet18', TINY + ['epochs=1'])
    Trainer(recipe, tmp_path / 'run').fit()
    folder = CheckpointDir(tmp_path / 'run').candidates()[0]
    state = json.loads((folder / 'state.json').read_text())
    entry = next(item for item in state['__dict__'] if item[0] == 'world_size')
    assert entry[1] == 1
    entry[1] = 2  # as if written by a 2-rank job (tests/training/test_distributed_training.py does it for real)
    (folder / 'state.json').write_text(json.dumps(state))
    with pytest.raises(RunError, match=r'epoch-0001 was written by 2 rank\(s\) and this job has 1; resume it with 2'):
        Trainer(recipe, tmp_path / 'run').resume()


def test_checkpoint_state_roundtrip_without_pickle():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = dict(opt=optimizer.state_dict(), t=(1, 2.5, None, 'x'), nested=[{'a': torch.arange(3)}])
    tensors = {}
    structure = json.loads(json.dumps(flatten(state, tensors)))
    back = unflatten(structure, tensors)
    assert back['t'] == (1, 2.5, None, 'x') and torch.equal(back['nested'][0]['a'], torch.arange(3))
    restored = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(back['opt'])
    assert torch.equal(
        restored.state_dict()['state'][0]['momentum_buffer'], optimizer.state_dict()['state'][0]['momentum_buffer']
    )
    with pytest.raises(TypeError, match='without pickling'):
        flatten({'f': object()}, {})


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path):
    checkpoints = CheckpointDir(tmp_path)
    for epoch in (1, 2):
        folder = checkpoints.begin(epoch)
        checkpoints.write_rank(folder, 0)
        checkpoints.write_main(folder, {'w': torch.ones(1) * epoch}, {'epoch': epoch, 'world_size': 1})
        checkpoints.commit(epoch)
    half = checkpoints.begin(3)  # a run killed while writing epoch 3
    (half / 'model.safetensors').write_bytes(b'partial')
    assert [p.name for p in checkpoints.candidates()] == ['epoch-0002', 'epoch-0001']
    assert CheckpointDir.read(checkpoints.candidates()[0], 0).state == {'epoch': 2, 'world_size': 1}
    checkpoints.remove_leftovers()
    assert not half.exists()


@pytest.mark.parametrize(
    'override,message',
    [
        ('optim.lrr=0.1', "override 'optim.lrr': unknown key; known here: \\['betas'"),
        ('nonsense=1', "override 'nonsense': unknown key"),
        ('batch.stages', 'must look like key.path=value'),
    ],
)
def test_recipe_errors_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe('fmnist_resnet18', [override])


def test_unknown_recipe_lists_the_bundled_ones():
    with pytest.raises(RecipeError, match='fmnist_resnet18_cuttlefish'):
        load_recipe('no_such_recipe')
