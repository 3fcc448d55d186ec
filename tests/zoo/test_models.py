"""timm's model contract over every registered zoo model: each classifier dense and factorized, and the
segmentation nets (``SEGMENTER_EXCEPTIONS`` lists the contracts some of them cannot meet, and why).

Modelled on what timm's tests/test_models.py asserts for timm's own models (read for its assertions,
written anew here), plus what timm 1.0.31's API promises: ``device``/``dtype`` construction,
``reset_classifier`` keeping the pooling and the model's device/dtype, ``in_chans`` read live by
``get_model_args``, ``forward_intermediates`` / ``prune_intermediate_layers`` / ``features_only``,
TorchScript, torch.fx and fx-then-TorchScript.
"""

import copy
import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.fx
from _helpers import ALL_CASE_IDS, ALL_CASES, CASE_IDS, CASES, CLASSIFIERS, MODELS, SEGMENTERS, input_size
from timm.models import FeatureGraphNet, FeatureInfo, get_model_args, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer

import zoo
from zoo._registry import _WEIGHTS
from zoo.layers import LowRankLayer
from zoo.models.cf_deit import LowRankDeiT
from zoo.models.cf_resnet import ResNet
from zoo.models.cf_vgg import VGG
from zoo.models.hovernet import HoVerNet, TimmHoVerNet
from zoo.models.mrl import MRL

MAX_FWD_SIZE = 64
MAX_BWD_SIZE = 64
# What timm's tests trace with: its non-traceable modules as leaves, its non-traceable functions wrapped.
FX_TRACER_KWARGS = dict(
    leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True
)
REPO = Path(__file__).resolve().parents[2]
# torch's own warnings when scripting (the API's deprecation notice; a GraphModule's __init__ annotations).
pytestmark = [
    pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning'),
    pytest.mark.filterwarnings('ignore:The TorchScript type system:UserWarning'),
]

# Where a segmentation net cannot meet a contract test, and why: test name -> (models, reason). They run as
# strict xfails, so a change that makes one pass fails until its entry goes.
SEGMENTER_EXCEPTIONS = {
    'test_reset_classifier_keeps_the_pooling_mode_device_and_dtype': (
        SEGMENTERS,
        'a segmenter has no global pooling: reset_classifier(n) replaces its TP branch (test_seg_models.py)',
    ),
    'test_torchscript': (
        ['hovernet'],
        "its default encoder is timm's ResNet, whose forward_intermediates slices a tuple by a variable",
    ),
    'test_fx_features_equal_forward_intermediates': (
        ['hovernet_fast', 'hovernet_original'],
        'forward mirror-pads 46 (95) px of context before the encoder; forward_intermediates gives the features '
        'of the image itself',
    ),
}


# Contract checks of HoVer-Net's own full-size net that take 15-90 s each on CI's 2 cores (bf16 is emulated on
# CPUs without bf16 instructions): they run in the slow suite; the same checks of every other model stay in the
# default run, and test_seg_models.py checks hovernet_fast's outputs there.
SLOW_CASES = {'hovernet_fast': ('test_create_in_bfloat16', 'test_fx', 'test_fx_then_torchscript')}


def _marks(name: str, test_name: str):
    models, reason = SEGMENTER_EXCEPTIONS.get(test_name, ((), ''))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if name in models else []
    return marks + [pytest.mark.slow] if test_name in SLOW_CASES.get(name, ()) else marks


def cases_of(test_name: str, cases=ALL_CASES, ids=ALL_CASE_IDS) -> list:
    """``name, kwargs`` params, every registered model by default; segmenters xfail where excepted."""
    return [pytest.param(n, kw, id=i, marks=_marks(n, test_name)) for (n, kw), i in zip(cases, ids)]


def over(test_name: str, cases=ALL_CASES, ids=ALL_CASE_IDS):
    """Parametrize a test that takes ``case`` like ``cases_of``. Each model is built once for the module and every
    test gets its own copy; pytest groups the tests by model as ``cases`` index them (``ALL_CASES`` starts with
    ``CASES``, which starts with the dense ``CLASSIFIERS``, so one index is one model in every list)."""
    params = [pytest.param((n, kw), id=i, marks=_marks(n, test_name)) for (n, kw), i in zip(cases, ids)]
    return pytest.mark.parametrize('built', params, indirect=True)


@pytest.fixture(scope='module')
def built(request) -> tuple[str, dict, torch.nn.Module]:
    name, kwargs = request.param
    return name, kwargs, timm.create_model(name, **kwargs).eval()


@pytest.fixture
def case(built) -> tuple[str, dict, torch.nn.Module]:
    """``(name, kwargs, a fresh copy of the model as create_model(name, **kwargs) built it, in eval mode)``."""
    name, kwargs, model = built
    return name, kwargs, copy.deepcopy(model)


def _tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _outputs(out) -> list[torch.Tensor]:
    """A classifier's tensor or a segmenter's dict of maps, as a list."""
    return list(out.values()) if isinstance(out, dict) else [out]


def _fx(model: torch.nn.Module) -> torch.fx.GraphModule:
    """The whole model symbolically traced as timm's tests trace it (same outputs, dict or tensor)."""
    return torch.fx.GraphModule(model, NodePathTracer(**FX_TRACER_KWARGS).trace(model))


def _token_family(model) -> bool:
    return model.pretrained_cfg['pool_size'] is None and not isinstance(model, (HoVerNet, TimmHoVerNet))


def _check_maps(maps, channels, reductions, size, batch):
    """timm's feature checks: one map per level, its channels, spatial <= ceil(size / reduction) + 1, no NaN."""
    assert len(maps) == len(channels) >= 3
    for out, chs, reduction in zip(maps, channels, reductions):
        assert out.shape[0] == batch and out.shape[1] == chs
        assert out.shape[2] <= math.ceil(size[1] / reduction) + 1
        assert out.shape[3] <= math.ceil(size[2] / reduction) + 1
        assert out.is_meta or not torch.isnan(out).any()


def test_every_family_registered():
    assert {'cf_resnet18', 'cf_resnet50', 'cf_wide_resnet50_2'} <= set(zoo.list_models())
    for name in zoo.list_models():
        # timm 1.0.31 has no hovernet* model; were one added, timm would warn 'Overwriting ... in registry' at import
        assert name.startswith(('cf_', 'mrl_', 'hovernet')), f'{name} is not prefixed and could collide with timm'


@over('test_model_forward', CASES, CASE_IDS)
def test_model_forward(case):
    _, _, model = case
    x = torch.randn(2, *input_size(model, MAX_FWD_SIZE))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, model.num_classes)
        assert not torch.isnan(out).any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@over('test_model_backward', CASES, CASE_IDS)
def test_model_backward(case):
    _, kwargs, model = case
    model.reset_classifier(42)
    model.train()
    x = torch.randn(2, *input_size(model, MAX_BWD_SIZE))
    out = model(x)
    out.mean().backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not without_grad, f'parameters without gradient: {without_grad}'
    assert out.shape == (2, 42)
    if kwargs:
        assert any(isinstance(m, LowRankLayer) for m in model.modules())


def _names(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@pytest.mark.parametrize('name', MODELS + zoo.list_models(tags=True))
def test_model_attributes_and_cfg_names(name):
    """What timm's tests read from every model, published tags included (timm lists them with ``include_tags``):
    the class count, the feature and pre-logit widths, and the layers the cfg names as classifier and first conv."""
    model = timm.create_model(name, device='meta')
    cfg = model.pretrained_cfg
    for key in ('classifier', 'first_conv', 'pool_size', 'input_size', 'mean', 'std', 'license', 'paper_ids'):
        assert key in cfg, f'pretrained_cfg has no {key}'
    assert model.num_classes == cfg['num_classes'] >= 0
    assert model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    for layer in _names(cfg['classifier']) if cfg['num_classes'] else ():
        assert layer + '.weight' in state_dict
    for layer in _names(cfg['first_conv']):
        assert layer + '.weight' in state_dict


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_model_default_cfgs(name):
    """timm's default-cfg checks: shapes at the cfg's input size, so on the meta device (no weights to compute)."""
    model = timm.create_model(name, device='meta').eval()
    cfg = model.pretrained_cfg
    assert model.num_classes > 0
    x = torch.empty(1, *cfg['input_size'], device='meta')
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
    headless = timm.create_model(name, num_classes=0, device='meta').eval()
    assert headless(x).shape == pre_logits.shape
    if cfg['pool_size'] is not None:
        model.reset_classifier(0, '')
        assert model(x).shape == features.shape
        unpooled = timm.create_model(name, num_classes=0, global_pool='', device='meta').eval()
        assert unpooled(x).shape == features.shape
        model.reset_classifier(0, 'catavgmax')  # pooling that widens the pre-logits
        assert model.head_hidden_size == 2 * model.num_features
        assert model(x).shape == (1, model.head_hidden_size)


# ---------------------------------------------------------------------------------------------------------
# device / dtype


@pytest.mark.parametrize('name,kwargs', cases_of('test_create_on_the_meta_device'))
def test_create_on_the_meta_device(name, kwargs):
    model = timm.create_model(name, device='meta', **kwargs).eval()
    assert {t.device.type for t in _tensors(model)} == {'meta'}
    x = torch.empty(2, *input_size(model, MAX_FWD_SIZE), device='meta')
    for out in _outputs(model(x)):
        assert out.device.type == 'meta' and out.shape[0] == 2


@pytest.mark.parametrize('name,kwargs', cases_of('test_create_in_bfloat16'))
def test_create_in_bfloat16(name, kwargs):
    model = timm.create_model(name, dtype=torch.bfloat16, **kwargs).eval()
    assert {t.dtype for t in _tensors(model) if t.is_floating_point()} == {torch.bfloat16}
    x = torch.randn(1, *input_size(model, MAX_FWD_SIZE), dtype=torch.bfloat16)
    with torch.no_grad():
        for out in _outputs(model(x)):
            assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


SMALL_CLASSES = [
    pytest.param(ResNet, dict(widths=(8, 16, 32, 64), ranks={'layer3.0.conv1': 4}, low_rank_bn=True), id='ResNet'),
    pytest.param(
        ResNet,
        dict(block='bottleneck', layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem='imagenet', rank_ratio=0.5),
        id='ResNet-bottleneck',
    ),
    pytest.param(VGG, dict(widths=(8, 16, 32, 32, 32), depths=(1, 1, 2, 2, 2), rank_ratio=0.5), id='VGG'),
    pytest.param(
        MRL, dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), ffn_groups=2), id='MRL'
    ),
    pytest.param(LowRankDeiT, dict(embed_dim=64, depth=2, num_heads=2, rank_ratio=0.5), id='LowRankDeiT'),
    pytest.param(HoVerNet, dict(mode='fast', num_classes=3), id='HoVerNet'),
    pytest.param(TimmHoVerNet, dict(encoder='mrl_nano', num_classes=3), id='TimmHoVerNet'),
]


@pytest.mark.parametrize('cls,kwargs', SMALL_CLASSES)
def test_classes_create_every_tensor_where_device_and_dtype_say(cls, kwargs):
    """timm's convention: the classes take ``device``/``dtype`` and create each tensor there (factorized layers
    included), so a model built directly, or by a builder that passes them on, is never built elsewhere first."""
    meta = cls(**kwargs, device='meta')
    assert {t.device.type for t in _tensors(meta)} == {'meta'}
    bf16 = cls(**kwargs, dtype=torch.bfloat16)
    assert {t.dtype for t in _tensors(bf16) if t.is_floating_point()} == {torch.bfloat16}
    expected = {k: v.shape for k, v in cls(**kwargs).state_dict().items()}
    assert {k: v.shape for k, v in meta.state_dict().items()} == expected


@over('test_model_meta_device_matches')
def test_model_meta_device_matches(case):
    """Models build on the meta device (used for params/MACs and by smp-style wrappers) with the same shapes."""
    name, kwargs, real = case
    with torch.device('meta'):
        meta = timm.create_model(name, **kwargs)
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in real.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------
# reset_classifier, in_chans


@over('test_reset_classifier_keeps_the_pooling_mode_device_and_dtype')
def test_reset_classifier_keeps_the_pooling_mode_device_and_dtype(case):
    _, _, model = case
    x = torch.randn(1, *input_size(model, MAX_FWD_SIZE))
    model.reset_classifier(4, 'max')
    model.reset_classifier(5)
    assert model.num_classes == 5 and not model.get_classifier().training
    assert get_model_args(model)['global_pool'] == 'max' and get_model_args(model)['num_classes'] == 5
    with torch.no_grad():
        assert model(x).shape == (1, 5)
    model.reset_classifier(5, 'avg')
    assert get_model_args(model)['global_pool'] == 'avg'

    model.to(torch.bfloat16).reset_classifier(7)
    assert {p.dtype for p in model.get_classifier().parameters()} == {torch.bfloat16}
    model.to('meta').reset_classifier(3)
    assert {p.device.type for p in model.get_classifier().parameters()} == {'meta'}
    assert model(x.to('meta', torch.bfloat16)).shape == (1, 3)


@over('test_in_chans_attribute')
def test_in_chans_attribute(case):
    _, _, model = case
    assert model.in_chans == model.pretrained_cfg['input_size'][0] == get_model_args(model)['in_chans']


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_other_in_chans(name):
    model = timm.create_model(name, in_chans=2, device='meta').eval()
    assert model.in_chans == get_model_args(model)['in_chans'] == 2
    assert model.get_submodule(model.pretrained_cfg['first_conv']).weight.shape[1] == 2
    x = torch.empty(1, 2, *input_size(model, MAX_FWD_SIZE)[1:], device='meta')
    assert model(x).shape == (1, model.num_classes)


@pytest.mark.parametrize('key', [k for k in sorted(_WEIGHTS) if k.split('.')[0] in CLASSIFIERS])
def test_published_weights_adapt_stem_and_head(key):
    """timm's pretrained check: another ``in_chans`` adapts the stem, another ``num_classes`` drops the head."""
    in_chans = 3 if timm.get_pretrained_cfg_value(key, 'input_size')[0] == 1 else 1
    model = timm.create_model(key, pretrained=True, in_chans=in_chans, num_classes=5).eval()
    assert model.in_chans == in_chans
    x = torch.randn(1, in_chans, *input_size(model, MAX_FWD_SIZE)[1:])
    with torch.no_grad():
        assert model(x).shape == (1, 5)
    assert timm.create_model(key, pretrained=True, in_chans=in_chans, num_classes=0).num_classes == 0


# ---------------------------------------------------------------------------------------------------------
# forward_intermediates, prune_intermediate_layers, features_only


@over('test_forward_intermediates_and_pruning')
def test_forward_intermediates_and_pruning(case):
    _, _, model = case
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    channels, reductions = info.channels(), info.reduction()
    size = input_size(model, MAX_FWD_SIZE)
    x = torch.randn(2, *size)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, output_fmt='NCHW')
        _check_maps(maps, channels, reductions, size, batch=2)
        torch.testing.assert_close(final, model.forward_features(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(last_two, maps[-2:], strict=True))
        early = model.forward_intermediates(x, indices=[0, 2], stop_early=True, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(early, (maps[0], maps[2]), strict=True))
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)
        model.set_grad_checkpointing(False)

        assert model.prune_intermediate_layers([1, 2]) == [1, 2]
        assert model.num_classes == 0 and model.num_features == model.head_hidden_size == channels[2]
        pruned = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(pruned, maps[1:3], strict=True))
        features = model.forward_features(x)
        assert features.shape[-1 if _token_family(model) else 1] == model.num_features


@pytest.mark.parametrize('name,kwargs', cases_of('test_features_only'))
def test_features_only(name, kwargs):
    """timm's features_only checks for the default wrapper and the getter; on the meta device, as only shapes
    are checked here (forward_intermediates checks real maps)."""
    in_chans = timm.get_pretrained_cfg_value(name, 'input_size')[0]
    for cls_kwargs in ({}, dict(feature_cls='getter')):
        model = timm.create_model(name, features_only=True, device='meta', **cls_kwargs, **kwargs).eval()
        assert model.in_chans == in_chans
        size = input_size(model, MAX_FWD_SIZE)
        maps = model(torch.empty(1, *size, device='meta'))
        _check_maps(maps, model.feature_info.channels(), model.feature_info.reduction(), size, batch=1)


@over('test_fx_features_equal_forward_intermediates')
def test_fx_features_equal_forward_intermediates(case):
    """timm's fx feature extractor on the feature_info modules gives exactly the forward_intermediates maps,
    also scripted (timm's features-via-fx TorchScript check)."""
    _, _, model = case
    if _token_family(model):
        pytest.skip('fx taps a ViT block as tokens; forward_intermediates reshapes them to NCHW')
    extractor = FeatureGraphNet(model, tuple(range(len(model.feature_info))))
    x = torch.randn(1, *input_size(model, MAX_FWD_SIZE))
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(extractor(x), expected, strict=True))
        scripted = torch.jit.script(extractor)
        for a, b in zip(scripted(x), expected, strict=True):
            torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------------------
# TorchScript, torch.fx


def _assert_same_outputs(actual, expected, exact: bool):
    for a, b in zip(_outputs(actual), _outputs(expected), strict=True):
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b)


@over('test_torchscript')
def test_torchscript(case):
    """Scripts as built: timm builds under ``set_scriptable(True)``, which no zoo model needs."""
    _, _, model = case
    x = torch.randn(1, *input_size(model, MAX_FWD_SIZE))
    scripted = torch.jit.script(model)
    with torch.no_grad():
        _assert_same_outputs(scripted(x), model(x), exact=False)


@over('test_fx')
def test_fx(case):
    """Bit-exact outputs of the traced model (timm's test); every parameter gets a gradient through it."""
    name, _, model = case
    if name not in SEGMENTERS:
        model.reset_classifier(42)
    x = torch.randn(2, *input_size(model, MAX_BWD_SIZE))
    with torch.inference_mode():
        _assert_same_outputs(_fx(model)(x), model(x), exact=True)
    traced = _fx(model.train())
    outputs = _outputs(traced(x))
    torch.cat([o.flatten() for o in outputs]).mean().backward()
    without_grad = [n for n, p in traced.named_parameters() if p.grad is None]
    assert not without_grad, f'parameters without gradient: {without_grad}'
    if name not in SEGMENTERS:
        assert outputs[0].shape == (2, 42)


@over('test_fx_then_torchscript')
def test_fx_then_torchscript(case):
    _, _, model = case
    x = torch.randn(1, *input_size(model, MAX_FWD_SIZE))
    scripted = torch.jit.script(_fx(model))
    with torch.no_grad():
        _assert_same_outputs(scripted(x), model(x), exact=False)


MODEL_SOURCES = sorted((REPO / 'zoo' / 'models').glob('*.py')) + sorted((REPO / 'zoo' / 'layers').glob('*.py'))


@pytest.mark.parametrize('path', MODEL_SOURCES, ids=[p.name for p in MODEL_SOURCES])
def test_no_future_annotations_in_model_code(path):
    """TorchScript reads real annotations (``torch.jit.Final`` attributes, traced forward signatures)."""
    assert 'from __future__ import annotations' not in path.read_text()


# ---------------------------------------------------------------------------------------------------------
# Arguments that cannot build a working network


BAD_ARGUMENTS = [
    ('cf_resnet18', dict(num_classes=-1), 'num_classes must be a whole number >= 0, got -1'),
    ('cf_resnet18', dict(num_classes=2.5), 'num_classes must be a whole number >= 0, got 2.5'),
    ('cf_resnet18', dict(in_chans=0), 'in_chans must be a whole number >= 1, got 0'),
    ('cf_resnet18', dict(drop_rate=math.nan), 'drop_rate must be a number in [0, 1), got nan'),
    ('cf_resnet18', dict(layers=(2, 0, 2, 2)), 'layers must be whole numbers >= 1, got (2, 0, 2, 2)'),
    ('cf_resnet18', dict(block='dense'), "block must be 'basic' or 'bottleneck', got 'dense'"),
    (
        'cf_resnet50',
        dict(widths=(8, 16, 32, 64), base_width=4),
        'widths (8, 16, 32, 64) at base_width 4 make bottlenecks',
    ),
    ('cf_vgg19', dict(depths=(2, 2, -1, 4, 4)), 'depths must be whole numbers >= 1, got (2, 2, -1, 4, 4)'),
    ('mrl_nano', dict(num_classes=-1), 'num_classes must be a whole number >= 0, got -1'),
    ('mrl_nano', dict(kernel_size=4), 'kernel_size must be odd (a depthwise conv that keeps the size), got 4'),
    ('mrl_nano', dict(mlp_ratio=math.inf), 'mlp_ratio must be a finite number > 0, got inf'),
    ('mrl_nano', dict(window_size=0), 'window_size must be a whole number >= 1, got 0'),
    ('mrl_nano', dict(ffn_groups=0), 'ffn_groups must be a whole number >= 1, got 0'),
    ('mrl_nano', dict(drop_path_rate=1.5), 'drop_path_rate must be a number in [0, 1), got 1.5'),
    ('cf_deit_small', dict(img_size=100), 'img_size 100 is not a multiple of patch_size 16; give a multiple, or'),
    ('cf_deit_small', dict(in_chans=0), 'in_chans must be a whole number >= 1, got 0'),
    ('cf_deit_small', dict(num_heads=5), 'embed_dim 384 is not divisible by num_heads 5'),
    ('cf_deit_small', dict(num_classes=-1), 'num_classes must be a whole number >= 0, got -1'),
    ('mrl_seg_nano', dict(num_types=-2), 'num_types must be a whole number >= 0, got -2'),
    ('mrl_seg_nano', dict(in_chans=0), 'in_chans must be a whole number >= 1, got 0'),
    ('mrl_seg_nano', dict(decoder_dims=(128, 64, 0, 32, 16)), 'decoder_dims must be whole numbers >= 1'),
    ('hovernet_fast', dict(num_classes=-1), 'num_classes must be a whole number >= 0, got -1'),
    ('hovernet', dict(num_types=1), 'num_types=1 is the background alone: use 0 (no type branch) or at least 2'),
]


@pytest.mark.parametrize(
    'name,kwargs,message', BAD_ARGUMENTS, ids=[f'{n}-{next(iter(kw))}' for n, kw, _ in BAD_ARGUMENTS]
)
def test_arguments_that_cannot_build_a_working_network_are_refused_at_creation(name, kwargs, message):
    with pytest.raises(ValueError) as caught:
        zoo.create_model(name, device='meta', **kwargs)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize('pretrained', ['no', 1, None])
def test_pretrained_is_true_or_false_not_a_truthy_value(pretrained):
    with pytest.raises(TypeError, match=rf'^pretrained must be True or False, got {re.escape(repr(pretrained))}$'):
        timm.create_model('cf_resnet18', pretrained=pretrained)


@pytest.mark.parametrize('name', ['cf_resnet18', 'mrl_nano', 'mrl_seg_nano', 'hovernet_fast'])
def test_reset_classifier_refuses_a_negative_class_count(name):
    model = zoo.create_model(name, device='meta')
    with pytest.raises(ValueError, match=r'^num_classes must be a whole number >= 0, got -3$'):
        model.reset_classifier(-3)


@pytest.mark.parametrize('name', [None, 3, ['cf_resnet18']])
def test_a_model_name_that_is_not_a_string_is_refused(name):
    with pytest.raises(TypeError, match=r"^a model name is a string such as 'cf_resnet18' \(see zoo.list_models\(\)\)"):
        zoo.create_model(name)


def test_a_timing_of_no_runs_is_refused():
    from zoo.profile import median_seconds, paired_median_seconds

    with pytest.raises(ValueError, match=r'^repeats must be a whole number >= 1, got 0$'):
        median_seconds(lambda: None, repeats=0)
    with pytest.raises(ValueError, match=r'^warmup must be a whole number >= 0, got -1$'):
        paired_median_seconds(lambda: None, lambda: None, warmup=-1)
