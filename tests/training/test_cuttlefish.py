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
    SwitchRule,
    ema,
    is_stable,
)
from zoo.layers import LowRankConv2d, scaled_rank, stable_rank


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
    # the authors' floors: int(full * 1/5) on ImageNet, int(full * 0.5) on DeiT
    assert [scaled_rank(2, 1.0, full, PRESETS['imagenet']['floor']) for full in (64, 65, 512)] == [12, 13, 102]
    assert [scaled_rank(2, 1.0, full, PRESETS['vit']['floor']) for full in (384, 385)] == [192, 192]


def test_plain_stable_rank_has_no_floor():
    switch = CuttlefishSwitch('imagenet', scale=False)
    switch.full, switch.xi = {'conv': 512}, {'conv': 4.0}
    assert switch._rank('conv', 30) == 30  # the authors' vanilla-stable-rank: no floor, no scaling
    scaled = CuttlefishSwitch('imagenet')
    scaled.full, scaled.xi = switch.full, switch.xi
    assert scaled._rank('conv', 30) == 120 and scaled._rank('conv', 5) == 102


def test_ema_is_the_authors_recursive_average():
    # alpha = 2/(3+1) = 0.5, seeded with the first value (pandas ewm(span=3, adjust=False)), not bias-corrected
    np.testing.assert_array_equal(ema([1, 3, 2, 6], span=3), [1.0, 2.0, 2.0, 4.0])
    np.testing.assert_array_equal(ema([7], span=15), [7.0])


def test_stability_rule():
    falling = [100, 80, 65, 55, 50, 48, 47, 47, 47, 47, 47, 47]
    assert not is_stable(falling[:6], window=3, last_n=3, threshold=0.5)  # still moving
    assert is_stable(falling, window=3, last_n=3, threshold=0.5)
    slope = np.abs(np.gradient(ema(falling, 3)))[-3:].mean()
    assert is_stable(falling, 3, 3, slope) and not is_stable(falling, 3, 3, np.nextafter(slope, 0))


def test_estimates_follow_the_authors_epoch_loops():
    """A flat history: the estimate of training epoch e may find it stable once e >= w. CIFAR estimates at
    the start of epoch e (entries 0..e) and trains it full-rank; ImageNet/DeiT after it (entries 0..e+1)."""
    flat = [[5]] * 40
    assert SwitchRule(15, 11, 0.1, estimate_at='epoch_start').switch_epoch(flat) == 16
    assert SwitchRule(5, 5, 0.33, estimate_at='epoch_end').switch_epoch(flat) == 6
    assert SwitchRule(15, 11, 0.1, estimate_at='epoch_start').switch_epoch(flat[:15]) is None
    assert SwitchRule(15, 11, 0.1, estimate_at='epoch_start').switch_epoch(flat[:16]) == 16  # decided, not run


def test_relaxed_threshold_counts_once_per_estimate():
    """Layer 0 is flat, layer 1 moves 3 ranks per epoch (stable only under the relaxed threshold). At the
    first estimate both count as not yet stable, so layer 1 gets the strict threshold although layer 0 is
    found stable before it is examined; the next estimate relaxes it."""
    rule = SwitchRule(2, 2, 0.5, relaxed=((1, 100.0),), estimate_at='epoch_end')
    history = [[5, 50 - 3 * k] for k in range(10)]
    assert rule.switch_epoch(history) == 4  # the first estimate allowed (epoch 2) finds only layer 0 stable


def test_a_stable_layer_stays_stable():
    """Layer 0 is flat until it is found stable, then oscillates; the switch waits only for layer 1."""
    rule = SwitchRule(2, 2, 0.5, estimate_at='epoch_end')
    settling = [max(60 - 5 * k, 10) for k in range(20)]
    history = [[5 if k < 6 else 5 + 20 * (k % 2), sr] for k, sr in enumerate(settling)]
    switch = rule.switch_epoch(history)
    assert switch == rule.switch_epoch([[sr] for sr in settling]) == 13
    assert not is_stable([entry[0] for entry in history[: switch + 1]], 2, 2, 0.5)


def test_short_preset_switches_on_the_fmnist_recipes_history():
    """The bundled ten-epoch Fashion-MNIST recipes (4 processes, 2x2 torus) record these stable ranks
    before their switch; the 'short' preset (ours) switches to low rank at epoch 5 on them."""
    history = {
        'layer1.0.conv1': [9, 9, 8, 7, 7, 6, 6, 6, 6, 6, 6],
        'layer1.0.conv2': [9, 9, 9, 9, 8, 8, 7, 7, 7, 7, 7],
        'layer1.1.conv1': [9, 8, 7, 7, 7, 7, 7, 7, 7, 7, 7],
        'layer1.1.conv2': [9, 9, 8, 8, 8, 8, 8, 8, 8, 8, 8],
        'layer2.0.conv1': [14, 14, 14, 14, 14, 13, 13, 13, 13, 13, 13],
        'layer2.0.conv2': [17, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18],
        'layer2.0.downsample.0': [6, 6, 5, 5, 5, 4, 4, 4, 4, 4, 4],
        'layer2.1.conv1': [19, 18, 16, 15, 15, 15, 15, 15, 15, 15, 15],
        'layer2.1.conv2': [17, 17, 15, 14, 14, 14, 13, 13, 13, 13, 13],
        'layer3.0.conv1': [30, 30, 30, 28, 27, 27, 26, 26, 26, 26, 26],
        'layer3.0.conv2': [36, 36, 35, 34, 34, 33, 33, 32, 32, 32, 32],
        'layer3.0.downsample.0': [12, 11, 10, 10, 9, 9, 9, 9, 9, 9, 9],
        'layer3.1.conv1': [36, 35, 32, 29, 27, 27, 26, 26, 26, 26, 26],
        'layer3.1.conv2': [37, 37, 33, 29, 27, 26, 26, 26, 26, 26, 26],
        'layer4.0.conv1': [62, 62, 62, 61, 60, 57, 56, 56, 56, 56, 56],
        'layer4.0.conv2': [72, 72, 72, 70, 67, 64, 63, 62, 61, 61, 61],
        'layer4.0.downsample.0': [23, 20, 18, 19, 18, 18, 18, 17, 18, 18, 18],
        'layer4.1.conv1': [73, 73, 73, 73, 73, 73, 73, 73, 73, 73, 73],
        'layer4.1.conv2': [72, 72, 72, 72, 72, 72, 72, 71, 71, 71, 71],
    }
    entries = [list(entry) for entry in zip(*history.values())]
    assert SwitchRule.from_settings(PRESETS['short']).switch_epoch(entries) == 5
    # the paper's presets need more epochs than these runs have
    assert all(SwitchRule.from_settings(PRESETS[p]).switch_epoch(entries) is None for p in ('cifar', 'imagenet'))


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
    """Forced early convergence (huge epsilon, w=1): the estimate after epoch 1 finds every layer stable,
    the run factorizes the layers whose ranks shrink, trains low-rank from epoch 2, and a resumed trainer
    rebuilds the factorized model."""
    from training.trainer import Trainer

    recipe = _recipe(tmp_path, window=1, last_n=1, epsilon=1e9, profile=False, scale=False)
    trainer = Trainer(recipe, tmp_path / 'run')
    trainer.fit()
    switch = trainer.callbacks[0]
    assert switch.switch_epoch == 2 and switch.switched
    assert trainer.warmup_from == 2  # cosine schedule, nothing decayed yet: the warmup restarts
    ranks = trainer.model_args['ranks']
    assert ranks and all(isinstance(trainer.model.get_submodule(n), LowRankConv2d) for n in ranks)
    assert trainer.history[-1]['params'] < trainer.history[0]['params']
    # every decision is recorded, with the ranks applied
    factorized = {row['layer']: row['rank'] for row in switch.decisions if row['factorize']}
    assert factorized == ranks
    rows = list(csv.DictReader(open(tmp_path / 'run' / 'cuttlefish' / 'stable_ranks.csv')))
    # entries 0 (initialisation), 1 and 2 (after epochs 1 and 2); none after the switch
    assert {r['layer'] for r in rows} == set(switch.history) and len(rows) == 3 * len(switch.history)
    assert {r['epochs_trained'] for r in rows} == {'0', '1', '2'}
    assert all(h[0] == round(switch.full[n] / switch.xi[n]) for n, h in switch.history.items())
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

    recipe = _recipe(tmp_path, window=1, last_n=1, epsilon=1e9, profile=True, min_speedup=1e6, scale=False)
    recipe['epochs'] = 3
    trainer = Trainer(recipe, tmp_path / 'run')
    trainer.fit()
    switch = trainer.callbacks[0]
    assert switch.switch_epoch == 2 and switch.switched
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

    recipe = _recipe(tmp_path, window=1, last_n=1, epsilon=1e9, profile=False, scale=False)
    recipe['epochs'] = 3
    recipe['schedule'].update(decay='step', milestones=[1])
    trainer = Trainer(recipe, tmp_path / 'run')
    trainer.fit()
    assert trainer.callbacks[0].switch_epoch == 2 and trainer.model_args['ranks']
    assert trainer.warmup_from == 0


def test_run_killed_after_the_switch_resumes_to_the_same_weights(tmp_path):
    from _helpers import KillAt, Killed

    from training.trainer import Trainer

    recipe = _recipe(tmp_path, window=1, last_n=1, epsilon=1e9, profile=False, scale=False)
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


def test_run_killed_between_the_decision_and_the_switch_resumes_to_the_same_weights(tmp_path):
    """With the CIFAR timing the estimate at the start of epoch 1 decides the switch and epoch 1 still
    trains dense; a run killed in epoch 1 resumes with the pending switch and factorizes after it."""
    from _helpers import KillAt, Killed

    from training.trainer import Trainer

    settings = dict(window=1, last_n=1, epsilon=1e9, estimate_at='epoch_start', profile=False, scale=False)
    recipe = _recipe(tmp_path, **settings)
    recipe['epochs'] = 3
    reference = Trainer(recipe, tmp_path / 'reference')
    reference.fit()
    switch = reference.callbacks[0]
    assert switch.switched and switch.switch_epoch == 2
    assert [r.get('cf_converged') for r in reference.history] == [1, 1, None]
    assert [r.get('cf_switched') for r in reference.history] == [None, 1, None]
    assert len(next(iter(switch.history.values()))) == 3  # the ranks come from the weights after 2 epochs
    with pytest.raises(Killed):
        Trainer(recipe, tmp_path / 'killed', callbacks=[KillAt(epoch=1, step=2)]).fit()
    resumed = Trainer(recipe, tmp_path / 'killed')
    resumed.fit()
    assert resumed.callbacks[0].switch_epoch == 2 and resumed.model_args['ranks'] == reference.model_args['ranks']
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_checkpoints_of_the_old_detector_are_refused():
    old = CuttlefishSwitch().state_dict()
    del old['switched']
    with pytest.raises(ValueError, match='older Cuttlefish switch.*train into a new --run-dir'):
        CuttlefishSwitch().load_state_dict(old)


def test_cuttlefish_tracks_an_mrl_network_now_that_every_family_takes_ranks(tmp_path):
    """MRL nets take per-layer ranks (zoo compress rebuilds every family from its ranks), so the switch tracks
    their attention and MLP layers instead of refusing them."""
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
    trainer = Trainer(recipe, tmp_path / 'run')
    trainer.fit()
    switch = trainer.callbacks[0]
    assert switch.history and all(len(h) == 2 for h in switch.history.values())  # at initialisation, after epoch 0
    assert any('.attn.' in name for name in switch.history) and any('.ffn.' in name for name in switch.history)


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
    from zoo.profile import profile_layers

    conv = torch.nn.Conv2d(16, 32, 3, padding=1)
    seen = []
    conv.register_forward_hook(lambda _m, args, out: seen.append((out.dtype, args[0].requires_grad)))
    rows = profile_layers({'conv': conv}, {'conv': 4}, {'conv': (2, 16, 8, 8)}, repeats=2, amp_dtype=torch.bfloat16)
    assert seen and set(seen) == {(torch.bfloat16, True)}
    assert rows[0]['rank'] == 4 and rows[0]['dense_ms'] > 0 and rows[0]['low_rank_ms'] > 0
    assert conv.weight.grad is None  # the profiled layer is left as it was
