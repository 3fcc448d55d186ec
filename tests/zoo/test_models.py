"""The timm model test matrix (timm's tests/test_models.py, adapted) run over every zoo classifier,
dense and factorized."""

import pytest
import timm
import torch
import torch.fx
from _helpers import CASE_IDS, CASES, CLASSIFIERS, input_size

import zoo
from zoo.layers import LowRankLayer

# Families whose forward is plain enough for torch.fx symbolic tracing.
FX_PREFIXES = ('cf_resnet', 'cf_wide_resnet', 'cf_vgg', 'mrl_')
MAX_FWD_SIZE = 96
MAX_BWD_SIZE = 64


def _num_params(model):
    return sum(p.numel() for p in model.parameters())


def test_every_family_registered():
    assert {'cf_resnet18', 'cf_resnet50', 'cf_wide_resnet50_2'} <= set(zoo.list_models())
    for name in zoo.list_models():
        assert name.startswith(('cf_', 'mrl_')), f'{name} is not prefixed and could collide with timm'


@pytest.mark.parametrize('name,kwargs', CASES, ids=CASE_IDS)
def test_model_forward(name, kwargs):
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(2, *input_size(model, MAX_FWD_SIZE))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, model.num_classes)
        assert not torch.isnan(out).any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name,kwargs', CASES, ids=CASE_IDS)
def test_model_backward(name, kwargs):
    model = timm.create_model(name, num_classes=42, **kwargs).train()
    x = torch.randn(2, *input_size(model, MAX_BWD_SIZE))
    out = model(x)
    out.mean().backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not without_grad, f'parameters without gradient: {without_grad}'
    assert out.shape == (2, 42)
    if kwargs:
        assert any(isinstance(m, LowRankLayer) for m in model.modules())


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_model_default_cfgs(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    for key in ('classifier', 'first_conv', 'pool_size', 'input_size', 'mean', 'std', 'license', 'paper_ids'):
        assert key in cfg, f'pretrained_cfg has no {key}'
    assert model.num_classes == cfg['num_classes'] > 0 and model.num_features > 0
    x = torch.randn(1, *cfg['input_size'])
    with torch.no_grad():
        features = model.forward_features(x)
        if cfg['pool_size'] is not None:  # NCHW family
            assert features.shape[1] == model.num_features
            assert tuple(features.shape[-2:]) == tuple(cfg['pool_size'])
        else:  # token family (N, L, C)
            assert features.shape[-1] == model.num_features
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert model(x).shape == pre_logits.shape
        if cfg['pool_size'] is not None:
            model.reset_classifier(0, '')
            assert model(x).shape == features.shape
            unpooled = timm.create_model(name, num_classes=0, global_pool='').eval()
            assert unpooled(x).shape == features.shape
    state_dict = timm.create_model(name).state_dict()
    for head in (cfg['classifier'],) if isinstance(cfg['classifier'], str) else cfg['classifier']:
        assert head + '.weight' in state_dict
    assert cfg['first_conv'] + '.weight' in state_dict


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_model_features(name):
    model = timm.create_model(name, features_only=True).eval()
    size = input_size(model, MAX_FWD_SIZE)
    with torch.no_grad():
        outs = model(torch.randn(1, *size))
    info = model.feature_info
    assert len(outs) == len(info.channels()) >= 3
    for out, chs, reduction in zip(outs, info.channels(), info.reduction()):
        assert out.shape[1] == chs
        assert out.shape[2] <= -(-size[1] // reduction) + 1 and out.shape[3] <= -(-size[2] // reduction) + 1
        assert not torch.isnan(out).any()


@pytest.mark.parametrize(
    'name,kwargs',
    [c for c in CASES if c[0].startswith(FX_PREFIXES)],
    ids=[i for c, i in zip(CASES, CASE_IDS) if c[0].startswith(FX_PREFIXES)],
)
def test_model_fx(name, kwargs):
    model = timm.create_model(name, **kwargs).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, *input_size(model, MAX_BWD_SIZE))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    traced.train()
    traced(x).mean().backward()
    assert all(p.grad is not None for p in traced.parameters())


@pytest.mark.parametrize('name,kwargs', CASES, ids=CASE_IDS)
def test_model_meta_device_matches(name, kwargs):
    """Models build on the meta device (used for params/MACs and by smp-style wrappers) with the same shapes."""
    with torch.device('meta'):
        meta = timm.create_model(name, **kwargs)
    real = timm.create_model(name, **kwargs)
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}
