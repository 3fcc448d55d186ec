"""Cuttlefish's rules (stable rank, scaling, convergence) and the switch inside a real training run."""

import csv
import math

import numpy as np
import pytest
import torch

import zoo
from training.cuttlefish import (
    PRESETS,
    CuttlefishSwitch,
    _relaxed_epsilon,
    ema,
    has_converged,
    scaled_rank,
    stable_rank,
)
from zoo.layers import LowRankConv2d


def test_stable_rank_definition():
    torch.manual_seed(0)
    for shape in [(16, 40), (40, 16), (32, 288)]:
        w = torch.randn(shape)
        s = torch.linalg.svdvals(w.double())
        assert stable_rank(w) == math.floor((s**2).sum() / s[0] ** 2)
    assert stable_rank(torch.eye(7)) == 7  # exact integer ratios must not floor one lower
    assert stable_rank(torch.ones(5, 9)) == 1
    assert stable_rank(torch.zeros(3, 4)) == 0


def test_scaled_rank_maps_the_initial_matrix_to_full_rank():
    w0 = torch.randn(64, 576)
    xi = 64 / stable_rank(w0)
    assert scaled_rank(stable_rank(w0), xi, 64) == 64
    assert scaled_rank(10, 2.5, 64) == 25
    assert scaled_rank(30, 2.5, 64) == 64  # capped at full rank
    assert scaled_rank(2, 1.0, 64, floor=0.2) == 12  # ImageNet floor: at least full/5


def test_ema_is_pandas_adjusted_ewm():
    # pandas.Series([1, 3, 2, 6]).ewm(span=3).mean(): alpha = 0.5, weights normalised by what was seen
    expected = [1.0, (3 + 0.5 * 1) / 1.5, (2 + 0.5 * 3 + 0.25 * 1) / 1.75, (6 + 0.5 * 2 + 0.25 * 3 + 0.125) / 1.875]
    np.testing.assert_allclose(ema([1, 3, 2, 6], span=3), expected)


def test_convergence_rule():
    falling = [100, 80, 65, 55, 50, 48, 47, 47, 47, 47, 47, 47]
    assert not has_converged(falling[:3], window=3, last_n=3, epsilon=0.5)  # not before w epochs
    assert not has_converged(falling[:6], window=3, last_n=3, epsilon=0.5)  # still moving
    assert has_converged(falling, window=3, last_n=3, epsilon=0.5)
    slope = np.abs(np.gradient(ema(falling, 3)))[-3:].mean()
    assert has_converged(falling, 3, 3, slope) and not has_converged(falling, 3, 3, slope * 0.99)


def test_epsilon_is_relaxed_as_few_layers_remain():
    cifar = PRESETS['cifar']
    assert _relaxed_epsilon(cifar['epsilon'], cifar['relaxed'], 5) == 0.1
    assert _relaxed_epsilon(cifar['epsilon'], cifar['relaxed'], 2) == 0.25
    assert _relaxed_epsilon(cifar['epsilon'], cifar['relaxed'], 1) == 0.5
    imagenet = PRESETS['imagenet']
    assert _relaxed_epsilon(imagenet['epsilon'], imagenet['relaxed'], 5) == 0.825
    assert _relaxed_epsilon(imagenet['epsilon'], imagenet['relaxed'], 3) == 1.65


def test_presets_are_the_papers():
    assert PRESETS['cifar']['window'] == 15 and PRESETS['cifar']['last_n'] == 11
    assert PRESETS['imagenet']['floor'] == 0.2 and PRESETS['vit']['floor'] == 0.5


def test_frobenius_decay_and_mid_batchnorm_are_exclusive():
    with pytest.raises(ValueError, match='mutually exclusive'):
        CuttlefishSwitch(frobenius_decay=1e-4, low_rank_bn=True)
    with pytest.raises(ValueError, match="unknown Cuttlefish preset 'cifar100'"):
        CuttlefishSwitch(preset='cifar100')


def _recipe(tmp_path, **cuttlefish):
    from training.recipe import load_recipe

    return load_recipe(
        'fmnist_resnet18_cuttlefish',
        [
            'epochs=4',
            'task.args.train_subset=512',
            'task.args.val_subset=256',
            'batch.stages=[[0, 64]]',
            'batch.base=64',
            'model.args.widths=[8,16,32,64]',
            'log.progress=false',
            'log.tensorboard=false',
            *[f'cuttlefish.{k}={v}' for k, v in cuttlefish.items()],
        ],
    )


def test_switch_in_a_training_run_and_resume(tmp_path):
    """Forced early convergence (huge epsilon): the run switches after epoch 1 (w=N=2), factorizes the
    layers whose ranks shrink, keeps training, and a resumed trainer rebuilds the factorized model."""
    from training.trainer import Trainer

    recipe = _recipe(tmp_path, window=2, last_n=2, epsilon=1e9, profile=False, floor=0.0, scale=False)
    trainer = Trainer(recipe, tmp_path / 'run')
    trainer.fit()
    switch = trainer.callbacks[0]
    assert switch.switch_epoch == 2
    assert trainer.warmup_from == 2  # cosine schedule, nothing decayed yet: the warmup restarts
    ranks = trainer.model_args['ranks']
    assert ranks and all(isinstance(trainer.model.get_submodule(n), LowRankConv2d) for n in ranks)
    assert trainer.history[-1]['params'] < trainer.history[0]['params']
    # every decision is recorded, with the ranks applied
    factorized = {row['layer']: row['rank'] for row in switch.decisions if row['factorize']}
    assert factorized == ranks
    rows = list(csv.DictReader(open(tmp_path / 'run' / 'cuttlefish' / 'stable_ranks.csv')))
    assert {r['layer'] for r in rows} == set(switch.history) and len(rows) == 2 * len(switch.history)
    assert (tmp_path / 'run' / 'cuttlefish' / 'stable_ranks.png').stat().st_size > 10_000
    # factors are excluded from weight decay and get Frobenius decay instead
    factor_ids = {
        id(p) for m in trainer.model.modules() if isinstance(m, LowRankConv2d) for p in (m.u_weight, m.v_weight)
    }
    decayed = {id(p) for g in trainer.optimizer.param_groups if g['weight_decay'] > 0 for p in g['params']}
    assert factor_ids and not factor_ids & decayed

    resumed = Trainer(recipe, tmp_path / 'run')
    assert resumed.resume()
    assert resumed.model_args['ranks'] == ranks
    for (n1, p1), (n2, p2) in zip(trainer.model.state_dict().items(), resumed.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert resumed.callbacks[0].switch_epoch == 2


def test_profiler_keeps_layers_dense_unless_faster(tmp_path):
    """A switch that keeps every layer dense leaves training exactly as without Cuttlefish: same
    optimizer state, no warmup restart, same random stream, so bit-identical weights."""
    from training.trainer import Trainer

    recipe = _recipe(tmp_path, window=2, last_n=2, epsilon=1e9, profile=True, min_speedup=1e6, scale=False)
    recipe['epochs'] = 3
    trainer = Trainer(recipe, tmp_path / 'run')
    trainer.fit()
    switch = trainer.callbacks[0]
    assert switch.switch_epoch == 2
    profiled = [r for r in switch.decisions if 'speedup' in r]
    assert profiled and all(r['dense_ms'] > 0 and r['low_rank_ms'] > 0 for r in profiled)
    assert not any(r['factorize'] for r in switch.decisions)  # nothing is a million times faster
    assert 'ranks' not in trainer.model_args and trainer.warmup_from == 0

    plain = Trainer(dict(recipe, cuttlefish=None), tmp_path / 'plain')
    assert not plain.callbacks
    plain.fit()
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_no_warmup_restart_after_the_first_decay_milestone(tmp_path):
    from training.trainer import Trainer

    recipe = _recipe(tmp_path, window=2, last_n=2, epsilon=1e9, profile=False, scale=False)
    recipe['epochs'] = 3
    recipe['schedule'].update(decay='step', milestones=[1])
    trainer = Trainer(recipe, tmp_path / 'run')
    trainer.fit()
    assert trainer.callbacks[0].switch_epoch == 2 and trainer.model_args['ranks']
    assert trainer.warmup_from == 0


def test_run_killed_after_the_switch_resumes_to_the_same_weights(tmp_path):
    from _helpers import KillAt, Killed

    from training.trainer import Trainer

    recipe = _recipe(tmp_path, window=2, last_n=2, epsilon=1e9, profile=False, scale=False)
    reference = Trainer(recipe, tmp_path / 'reference')
    reference.fit()
    with pytest.raises(Killed):
        Trainer(recipe, tmp_path / 'killed', callbacks=[KillAt(epoch=3, step=3)]).fit()
    resumed = Trainer(recipe, tmp_path / 'killed')
    resumed.fit()
    assert resumed.model_args['ranks'] == reference.model_args['ranks']
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # best/ holds weights that were evaluated: the dense ones if the best epoch was before the switch
    import json

    best = json.loads((tmp_path / 'reference' / 'best' / 'run.json').read_text())
    assert ('ranks' in best['model_args']) == (best['metrics']['epoch'] >= 2)


def test_cuttlefish_refuses_architectures_without_ranks(tmp_path):
    from training.recipe import load_recipe
    from training.trainer import Trainer

    recipe = load_recipe(
        'fmnist_mrl_nano',
        [
            'epochs=1',
            'task.args.train_subset=256',
            'log.progress=false',
            'log.tensorboard=false',
            'cuttlefish.preset=short',
        ],
    )
    with pytest.raises(ValueError, match='Cuttlefish needs an architecture that takes per-layer ranks'):
        Trainer(recipe, tmp_path / 'run').fit()


@pytest.mark.parametrize(
    'recipe_name, candidates, tracked',
    [
        ('cifar10_resnet18_cuttlefish', 19, 10),  # every conv but the stem; the paper's layer2.1-layer4.1
        ('cifar10_vgg19_cuttlefish', 15, 12),  # every conv but the stem; convs 5-16
        ('imagenet_resnet50_cuttlefish', 52, 10),  # layer4 incl. its downsample
        ('imagenet_deit_small_cuttlefish', 36, 48),  # qkv/fc1/fc2 factorized; qkv/proj/fc1/fc2 tracked
    ],
)
def test_paper_recipes_track_the_papers_layers(recipe_name, candidates, tracked):
    from training.recipe import load_recipe

    recipe = load_recipe(recipe_name)
    switch = CuttlefishSwitch(**recipe['cuttlefish'])
    with torch.device('meta'):
        model = zoo.create_model(recipe['model']['name'], **recipe['model'].get('args', {}))
    assert (len(switch._candidates(model)), len(switch._deciders(model))) == (candidates, tracked)
    if recipe_name.startswith('cifar10_resnet18'):
        assert sorted(switch._deciders(model)) == sorted(
            f'layer{s}.{b}.conv{c}' for s, b in [(2, 1), (3, 0), (3, 1), (4, 0), (4, 1)] for c in (1, 2)
        )


def test_layer_patterns_that_match_nothing_are_named():
    from zoo.layers import factorizable_layers

    model = zoo.create_model('cf_resnet18', widths=(8, 16, 32, 64))
    assert list(factorizable_layers(model, ['layer4.*.conv2'])) == ['layer4.0.conv2', 'layer4.1.conv2']
    with pytest.raises(ValueError, match=r"\['layer9\.\*'\]"):
        factorizable_layers(model, ['layer4.0.conv1', 'layer9.*'])
    # in a recipe, a single pattern works and a wrong one is named
    assert list(CuttlefishSwitch(layers='layer4.*.conv2')._candidates(model)) == ['layer4.0.conv2', 'layer4.1.conv2']
    with pytest.raises(ValueError, match=r"\['layer9'\]"):
        CuttlefishSwitch(track='layer9')._deciders(model)


def test_profiler_times_what_training_runs():
    """The timed step computes the input gradient (as inside a network) under the training's autocast."""
    from training.cuttlefish import profile_layers

    conv = torch.nn.Conv2d(16, 32, 3, padding=1)
    seen = []
    conv.register_forward_hook(lambda _m, args, out: seen.append((out.dtype, args[0].requires_grad)))
    rows = profile_layers({'conv': conv}, {'conv': 4}, {'conv': (2, 16, 8, 8)}, repeats=2, amp_dtype=torch.bfloat16)
    assert seen and set(seen) == {(torch.bfloat16, True)}
    assert rows[0]['rank'] == 4 and rows[0]['dense_ms'] > 0 and rows[0]['low_rank_ms'] > 0
    assert conv.weight.grad is None  # the profiled layer is left as it was
