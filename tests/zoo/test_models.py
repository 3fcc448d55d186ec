"""The timm model test matrix (timm's tests/test_models.py, adapted) run over every zoo classifier,
dense and factorized, plus golden outputs that fail when a refactor changes numerics."""

from pathlib import Path

import pytest
import timm
import torch
import torch.fx
from safetensors.torch import load_file

import zoo
from zoo._registry import model_task
from zoo.layers import LowRankLayer

CLASSIFIERS = [n for n in zoo.list_models() if model_task(n) == 'image-classification']
SEGMENTERS = [n for n in zoo.list_models() if model_task(n) == 'nuclei-segmentation']  # shapes etc.: test_mrl.py
# Factorized variants: the same architectures at Pufferfish's uniform rank ratio 1/4 (the largest member
# of each family only in its dense form: factorization is the same code, and CI has two cores).
LOW_RANK = [n for n in CLASSIFIERS if n.startswith('cf_') and n not in ('cf_deit_base', 'cf_wide_resnet50_2')]
CASES = [(n, {}) for n in CLASSIFIERS] + [(n, dict(rank_ratio=0.25)) for n in LOW_RANK]
CASE_IDS = [n + ('-lowrank' if kw else '') for n, kw in CASES]
GOLDEN_CASES, GOLDEN_IDS = CASES + [(n, {}) for n in SEGMENTERS], CASE_IDS + SEGMENTERS
# Families whose forward is plain enough for torch.fx symbolic tracing.
FX_PREFIXES = ('cf_resnet', 'cf_wide_resnet', 'cf_vgg', 'mrl_')
MAX_FWD_SIZE = 96
MAX_BWD_SIZE = 64
GOLDEN_DIR = Path(__file__).resolve().parents[1] / 'golden'


def _input_size(model, cap):
    c, h, w = model.pretrained_cfg['input_size']
    if model.pretrained_cfg.get('fixed_input_size'):
        return c, h, w
    return c, min(h, cap), min(w, cap)


def _num_params(model):
    return sum(p.numel() for p in model.parameters())


def test_every_family_registered():
    assert {'cf_resnet18', 'cf_resnet50', 'cf_wide_resnet50_2'} <= set(zoo.list_models())
    for name in zoo.list_models():
        assert name.startswith(('cf_', 'mrl_')), f'{name} is not prefixed and could collide with timm'


@pytest.mark.parametrize('name,kwargs', CASES, ids=CASE_IDS)
def test_model_forward(name, kwargs):
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(2, *_input_size(model, MAX_FWD_SIZE))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, model.num_classes)
        assert not torch.isnan(out).any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name,kwargs', CASES, ids=CASE_IDS)
def test_model_backward(name, kwargs):
    model = timm.create_model(name, num_classes=42, **kwargs).train()
    x = torch.randn(2, *_input_size(model, MAX_BWD_SIZE))
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
    size = _input_size(model, MAX_FWD_SIZE)
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
    x = torch.randn(1, *_input_size(model, MAX_BWD_SIZE))
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


# ---------------------------------------------------------------------------------------------------------
# Golden outputs. Weights are set by a formula (not the RNG), so the stored outputs depend only on the
# architecture's numerics. Regenerate deliberately with `python tests/zoo/test_models.py --update-golden`.


def deterministic_init_(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for i, (name, tensor) in enumerate(sorted(model.state_dict().items())):
            if not tensor.is_floating_point():
                continue
            wave = torch.sin(torch.arange(tensor.numel(), dtype=torch.float64) * 0.7 + i).reshape(tensor.shape)
            if name.endswith('running_var'):
                value = 1 + 0.1 * wave.abs()
            elif tensor.dim() == 1:
                value = (1 + 0.1 * wave) if name.endswith('weight') and 'norm' in _kind(model, name) else 0.01 * wave
            else:
                value = wave * (3 / (tensor[0].numel() ** 0.5))
            tensor.copy_(value.to(tensor.dtype))
    return model


def _kind(model, name):
    module = model.get_submodule(name.rpartition('.')[0])
    return 'norm' if 'Norm' in type(module).__name__ else 'other'


def _golden_input(channels: int, size: int) -> torch.Tensor:
    n = channels * size * size
    return torch.cos(torch.arange(n, dtype=torch.float64) * 0.3).reshape(1, channels, size, size).float()


def _golden_case(name, kwargs):
    model = deterministic_init_(timm.create_model(name, **kwargs)).eval()
    c, h, _ = _input_size(model, 64)
    x = _golden_input(c, h)
    with torch.no_grad():
        out = model(x)
        if isinstance(out, dict):  # segmentation nets: one map per branch
            return dict(input=x, **{f'output_{branch}': value for branch, value in out.items()})
        return dict(input=x, output=out, features=model.forward_features(x))


@pytest.mark.parametrize('name,kwargs', GOLDEN_CASES, ids=GOLDEN_IDS)
def test_model_golden(name, kwargs):
    path = GOLDEN_DIR / f'{name}{"-lowrank" if kwargs else ""}.safetensors'
    assert path.exists(), f'{path} missing: run `python tests/zoo/test_models.py --update-golden` and review the diff'
    golden = load_file(str(path))
    current = _golden_case(name, kwargs)
    torch.testing.assert_close(current['input'], golden['input'])
    assert set(current) == set(golden)
    for key in sorted(set(golden) - {'input'}):
        scale = golden[key].abs().max().item()
        torch.testing.assert_close(
            current[key],
            golden[key],
            rtol=1e-4,
            atol=1e-4 * scale,
            msg=lambda m: f'{name} {key} changed numerically: {m}',
        )


if __name__ == '__main__':
    import sys

    from safetensors.torch import save_file

    if '--update-golden' not in sys.argv:
        sys.exit('usage: python tests/zoo/test_models.py --update-golden')
    GOLDEN_DIR.mkdir(exist_ok=True)
    for (name, kwargs), case_id in zip(GOLDEN_CASES, GOLDEN_IDS):
        save_file(
            {k: v.contiguous() for k, v in _golden_case(name, kwargs).items()},
            str(GOLDEN_DIR / f'{case_id}.safetensors'),
        )
        print('wrote', case_id)
