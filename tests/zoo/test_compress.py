"""zoo.compress: ranks chosen as asked from trained weights, SVD initialisation, the layers kept dense, and the
compressed architecture rebuilt by every family from its recorded ranks."""

import copy
import math

import pytest
import timm
import torch
import torch.nn as nn

import zoo
from zoo.layers import (
    LowRankLayer,
    factorizable_layers,
    factorize_,
    full_rank,
    select_layers,
    stable_rank,
    weight_matrix,
)
from zoo.profile import count_macs


@pytest.fixture(scope='module')
def trained():
    """The published full-rank Fashion-MNIST ResNet-18: real trained spectra, 0.7M parameters."""
    return zoo.create_model('cf_resnet18_fmnist.full_rank', pretrained=True).eval()


def _factorized(plan):
    return {row['layer']: row['rank'] for row in plan.layers if row['factorize']}


def test_stable_ranks_of_the_trained_weights(trained):
    plan = zoo.plan_compression(trained, ranks='stable', profile=False)
    layers = factorizable_layers(trained)
    assert {row['layer'] for row in plan.layers} == set(layers) - {'conv1', 'fc'}  # the stem and classifier stay
    for row in plan.layers:
        sr = stable_rank(weight_matrix(layers[row['layer']]))
        m, n = weight_matrix(layers[row['layer']]).shape
        assert row['stable_rank'] == sr and row['rank'] == max(sr, 1)
        assert row['factorize'] == (sr * (m + n) < m * n), row  # a factorization that is not smaller stays dense
    assert plan.ranks == _factorized(plan) and len(plan.ranks) == 19
    compressed, same_plan = zoo.compress(trained, ranks='stable', profile=False)
    assert same_plan.ranks == plan.ranks
    assert count_macs(compressed, (1, 28, 28)) == plan.macs < plan.dense_macs == count_macs(trained, (1, 28, 28))
    assert sum(p.numel() for p in compressed.parameters()) == plan.params
    assert timm.models.get_model_args(compressed)['ranks'] == plan.ranks  # publishes and rebuilds as itself
    assert not any(isinstance(m, LowRankLayer) for m in trained.modules()), 'the trained model is left as it was'


def test_scaled_and_ratio_ranks(trained):
    scaled = zoo.plan_compression(trained, ranks='scaled', profile=False)
    for row in scaled.layers:
        m, n = map(int, row['shape'].split('x'))
        noise = stable_rank(torch.randn((m, n), generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        assert row['rank'] == min(m, n, math.ceil(min(m, n) / noise * max(row['stable_rank'], 1)))
    quarter = zoo.plan_compression(trained, ranks=0.25, profile=False)
    assert all(row['rank'] == max(1, math.ceil(0.25 * row['full_rank'])) for row in quarter.layers)
    explicit = zoo.plan_compression(trained, ranks={'layer4.1.conv2': 7}, profile=False)
    assert explicit.ranks == {'layer4.1.conv2': 7} and len(explicit.layers) == 1


def test_a_mac_target_takes_the_largest_ranks_that_reach_it(trained):
    stable = zoo.plan_compression(trained, ranks='stable', profile=False)
    plan = zoo.plan_compression(trained, ranks='stable', target_macs=3.0, profile=False)
    assert 3.0 <= plan.dense_macs / plan.macs < 3.1
    # the stable ranks shrink together; one step larger everywhere would miss the target
    assert all(plan.ranks[name] <= rank for name, rank in stable.ranks.items() if name in plan.ranks)
    bigger = {name: rank + 1 for name, rank in plan.ranks.items()}
    assert plan.dense_macs / count_macs(factorize_(copy.deepcopy(trained), bigger, init='random'), (1, 28, 28)) < 3.0


def test_layers_kept_dense_when_not_faster(trained):
    never = dict(ranks='stable', layers='layer4.*', batch_size=2, repeats=1)
    with pytest.raises(zoo.CompressionError, match=r'^ResNet: no factorization of its 5 candidate layers is smaller '
                       r'and at least 1e\+09x faster on cpu'):  # fmt: skip
        zoo.plan_compression(trained, min_speedup=1e9, **never)
    plan = zoo.plan_compression(trained, min_speedup=0.0, **never)
    assert all(row['dense_ms'] > 0 and row['low_rank_ms'] > 0 for row in plan.layers if row['factorize'])


def test_svd_at_full_rank_reproduces_the_dense_network(trained):
    """From published dense weights, through the builder: every layer at full rank computes what it did."""
    ranks = {name: full_rank(layer) for name, layer in factorizable_layers(trained).items()}
    rebuilt = zoo.create_model('cf_resnet18_fmnist.full_rank', pretrained=True, ranks=ranks).eval()
    assert sum(isinstance(m, LowRankLayer) for m in rebuilt.modules()) == 21
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trained(x), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def _random(model: nn.Module) -> nn.Module:
    """Random weights from torch's own layer initialisers (timm's take seconds on a model this size): the mechanics
    only. What no layer initialises (layer scales) is drawn around 0.1."""
    for tensor in model.parameters():
        tensor.copy_(torch.rand(tensor.shape) * 0.2)
    for module in model.modules():
        if hasattr(module, 'reset_parameters'):
            module.reset_parameters()
    return model.eval()


@pytest.mark.parametrize('name, stage', [('resnet50', 'layer1.*'), ('convnext_tiny', 'stages.0.*')])
@torch.no_grad()
def test_any_timm_classifier(name, stage):
    """A plain timm model: SVD at full rank is exact, a compression counts its MACs right and records no ranks
    (timm's own architectures take none), and its candidates are every layer but the stem and the classifier."""
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=10)
    model = _random(model.to_empty(device='cpu'))
    x = torch.randn(1, 3, 64, 64)
    layers = factorizable_layers(model, [stage])
    exact = factorize_(copy.deepcopy(model), {n: full_rank(m) for n, m in layers.items()}, init='svd')
    torch.testing.assert_close(exact(x), model(x), rtol=1e-4, atol=1e-4)
    compressed, plan = zoo.compress(model, ranks=0.25, layers=stage, profile=False, input_size=(3, 64, 64))
    assert plan.macs == count_macs(compressed, (3, 64, 64)) < plan.dense_macs and plan.params < plan.dense_params
    assert 'ranks' not in timm.models.get_model_args(compressed)
    cfg = model.pretrained_cfg
    assert set(factorizable_layers(model)) - set(select_layers(model, 'all')) == {cfg['first_conv'], cfg['classifier']}


@pytest.mark.parametrize(
    'name', ['cf_resnet18', 'cf_vgg19', 'cf_deit_small', 'mrl_nano', 'mrl_seg_nano', 'hovernet', 'hovernet_fast']
)
def test_every_family_rebuilds_its_compressed_architecture(name):
    """Per-layer ranks, encoder and decoder alike, are an argument of every zoo architecture: built with them (on
    the meta device, no weights) it has exactly the factorized network's tensors."""
    kwargs = dict(encoder='resnet18') if name == 'hovernet' else {}
    with torch.device('meta'):
        dense = zoo.create_model(name, **kwargs)
        ranks = {n: max(1, full_rank(m) // 4) for n, m in factorizable_layers(dense).items()}
        expected = factorize_(dense, ranks, init='random')
        rebuilt = zoo.create_model(name, ranks=ranks, **kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in expected.state_dict().items()
    }
    assert timm.models.get_model_args(rebuilt)['ranks'] == ranks


@pytest.mark.parametrize('name', ['mrl_nano', 'mrl_seg_nano', 'hovernet'])
def test_plans_cover_encoders_and_decoders(name):
    """The plan runs the network once to see every layer: MRL's attention and FFN, HoVer-Net's encoder and decoder."""
    kwargs = dict(encoder='resnet18', decoder_dims=(64, 32, 16, 16, 8)) if name == 'hovernet' else {}
    with torch.device('meta'):
        model = zoo.create_model(name, **kwargs)
    model = _random(model.to_empty(device='cpu'))
    plan = zoo.plan_compression(model, ranks=0.25, profile=False, input_size=(3, 64, 64))
    with torch.device('meta'):
        rebuilt = zoo.create_model(name, ranks=plan.ranks, **kwargs)
    assert count_macs(rebuilt.to_empty(device='cpu'), (3, 64, 64)) == plan.macs
    if name != 'mrl_nano':
        assert any(layer.startswith('encoder.') for layer in plan.ranks)
        assert any(layer.startswith(('trunk.', 'branches.')) for layer in plan.ranks)


def test_one_line_refusals(trained):
    depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8))
    with pytest.raises(zoo.CompressionError, match=r'^Sequential has no dense Conv2d \(groups=1\) or Linear layer'):
        zoo.plan_compression(depthwise, input_size=(8, 16, 16))
    with pytest.raises(zoo.CompressionError, match=r'^ResNet cannot reach 1000x fewer MACs: rank 1 in every layer'):
        zoo.plan_compression(trained, target_macs=1000, profile=False)
    with pytest.raises(zoo.CompressionError, match=r"ranks must be 'stable', 'scaled', a ratio in \(0, 1\]"):
        zoo.plan_compression(trained, ranks=1.5)
    with pytest.raises(zoo.CompressionError, match=r"has no factorizable layers named \['nope'\]"):
        zoo.plan_compression(trained, ranks={'nope': 3})
