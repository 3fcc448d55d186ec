"""The nuclei segmenters of ``zoo.models.hovernet``: HoVer-Net's own network against the reference implementation,
HoVer-Net's branches on timm encoders, the ``mrl_seg_*`` configurations, and timm's model contract for segmenters.

Fixtures (``seg_fixtures/``): ``hovernet_reference*`` come from github:vqdang/hover_net's own code
(``make_hovernet_reference.py`` says how), for ``seeded_init_`` weights; ``mrl_seg_nano_stardist_before_split``
holds outputs of the published weights made by the code before the encoder/decoder split (commit a483ee3).
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.data import create_transform, resolve_data_config
from timm.layers import get_notrace_functions, get_notrace_modules

import zoo
from training.data import split_stardist_sample
from zoo.hovernet import instance_stats
from zoo.hovernet.losses import hovernet_loss
from zoo.models.hovernet import EncoderError, HoVerNet
from zoo.segment import predict_instances

FIXTURES = Path(__file__).resolve().parent / 'seg_fixtures'
# (mode, num_types, input side): HoVer-Net's two modes, with the type branch of CoNSeP (5) and PanNuke (6).
REFERENCE_CASES = [('original', 5, 198), ('fast', 6, 104)]


def seeded_init_(model: torch.nn.Module) -> torch.nn.Module:
    """Weights a function of the sorted state-dict keys only (one seeded generator per tensor), He-scaled so that
    deep BN nets stay well conditioned in eval mode; buffers other than BN statistics are left alone."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for i, (name, tensor) in enumerate(sorted(model.state_dict().items())):
            if not tensor.is_floating_point() or not (name in params or name.endswith(('running_mean', 'running_var'))):
                continue
            generator = torch.Generator().manual_seed(i)
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            if name.endswith('running_var'):
                value = 1 + 0.1 * noise.abs()
            elif tensor.dim() <= 1:
                value = (1.0 if name.endswith('weight') else 0.0) + 0.1 * noise
            else:
                value = noise * math.sqrt(2 / tensor[0].numel())
            tensor.copy_(value.to(tensor.dtype))
    return model


def reference_input(size: int, channels: int = 3) -> torch.Tensor:
    """``1 x C x size x size`` values ``k / 255`` (integers ``k``), so that 0-255 inputs are exactly ``k``."""
    n = channels * size * size
    levels = torch.round((0.5 + 0.5 * torch.cos(torch.arange(n, dtype=torch.float64) * 0.3)) * 255)
    return (levels.float() / 255).reshape(1, channels, size, size)


def _assert_outputs_close(current: dict, expected: dict, what: str) -> None:
    assert set(current) == set(expected), what
    for key in sorted(expected):
        scale = expected[key].abs().max().item()
        torch.testing.assert_close(
            current[key], expected[key], rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f'{what} {key}: {m}'
        )


# ---------------------------------------------------------------------------------------------------------
# HoVer-Net, the paper's network (github:vqdang/hover_net models/hovernet/net_desc.py)

# Parameter counts of the reference's layer definitions (its own HoVerNet class, counted).
PAPER_COUNTS = [
    ('original', 0, 45_028_676),
    ('fast', 0, 33_625_412),
    ('original', 5, 54_744_457),
    ('fast', 6, 37_639_626),
]


@pytest.mark.parametrize('mode,num_types,count', PAPER_COUNTS)
def test_paper_hovernet_parameter_count_is_the_references(mode, num_types, count):
    with torch.device('meta'):
        model = zoo.create_model(f'hovernet_{mode}', num_types=num_types)
    assert sum(p.numel() for p in model.parameters()) == count
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize('mode,num_types', [('original', 5), ('fast', 6), ('original', 0), ('fast', 0)])
def test_paper_hovernet_state_dict_is_the_references(mode, num_types):
    """Same keys, order and shapes as the reference's state dict, so its checkpoints load once converted."""
    reference = json.loads((FIXTURES / 'hovernet_reference_keys.json').read_text())[mode]
    if not num_types:  # the reference without nr_types has no TP branch
        reference = [entry for entry in reference if not entry[0].startswith('decoder.tp.')]
    with torch.device('meta'):
        model = zoo.create_model(f'hovernet_{mode}', num_types=num_types)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == reference


@pytest.mark.parametrize('mode,num_types,size', REFERENCE_CASES)
def test_paper_hovernet_outputs_are_the_references(mode, num_types, size):
    """The reference's valid forward (``same_size=False``) for the same weights and image."""
    model = seeded_init_(zoo.create_model(f'hovernet_{mode}', num_types=num_types, same_size=False)).eval()
    expected = load_file(str(FIXTURES / 'hovernet_reference.safetensors'))
    expected = {k.split('.', 1)[1]: v for k, v in expected.items() if k.startswith(f'{mode}.')}
    with torch.no_grad():
        outputs = model(reference_input(size))
    output_size = {'original': 8, 'fast': 12}[mode]
    assert {k: tuple(v.shape[-2:]) for k, v in outputs.items()} == dict.fromkeys(('tp', 'np', 'hv'), (output_size,) * 2)
    _assert_outputs_close(outputs, expected, f'hovernet_{mode}')


def test_paper_hovernet_sizes():
    assert HoVerNet.valid_input_size('original', 80) == 270 and HoVerNet.valid_input_size('fast', 164) == 256
    model = zoo.create_model('hovernet_fast', same_size=False)
    with pytest.raises(ValueError, match=r'takes sides of 0 \+ a multiple of 8, over 92 px .* got 100x100'):
        model(torch.rand(1, 3, 100, 100))


def test_paper_hovernet_same_size_is_the_valid_forward_on_the_mirrored_image():
    """Any input size, even smaller than the 46 px of context a side (reflected again, as ``np.pad`` does)."""
    model = seeded_init_(zoo.create_model('hovernet_fast', num_types=3)).eval()
    image = reference_input(24)[..., :16, :]
    # 46 px a side, then up to the next multiple of 8: 16 + 92 = 108 -> 112, 24 + 92 = 116 -> 120
    padded = np.pad(image.numpy(), ((0, 0), (0, 0), (46, 50), (46, 50)), mode='reflect')
    with torch.no_grad():
        outputs = model(image)
        valid = model.forward_valid(torch.from_numpy(padded))
    shapes = {k: tuple(v.shape) for k, v in outputs.items()}
    assert shapes == {'tp': (1, 3, 16, 24), 'np': (1, 2, 16, 24), 'hv': (1, 2, 16, 24)}
    for key, value in outputs.items():
        torch.testing.assert_close(value, valid[key][..., :16, :24], rtol=0, atol=0)


def test_paper_hovernet_trains_with_and_without_gradient_checkpointing():
    model = zoo.create_model('hovernet_fast', num_types=3).train()
    x = torch.rand(2, 3, 8, 8)
    targets = dict(
        np=torch.randint(0, 2, (2, 8, 8)), hv=torch.rand(2, 2, 8, 8) * 2 - 1, tp=torch.randint(0, 3, (2, 8, 8))
    )
    hovernet_loss(model(x), targets)[0].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f'parameters without gradient: {missing}'
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    hovernet_loss(model(x), targets)[0].backward()  # the encoder's units recomputed in the backward pass
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], msg=lambda m: f'{name}: {m}')


# ---------------------------------------------------------------------------------------------------------
# HoVer-Net's branches on timm encoders

# The families of the issue (MRL, ResNet, ConvNeXt) and one more pyramid (EfficientNet: strides 2..32).
ENCODERS = ['mrl_tiny', 'resnet50', 'convnext_tiny', 'efficientnet_b0']


@pytest.mark.parametrize('encoder', ENCODERS)
def test_encoder_family_shapes_and_gradients(encoder):
    model = zoo.create_model('hovernet', encoder=encoder, num_types=3).train()
    x = torch.rand(2, 3, 32, 48)  # 48 is no multiple of 32: padded, then cropped back
    outputs = model(x)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        'np': (2, 2, 32, 48),
        'hv': (2, 2, 32, 48),
        'tp': (2, 3, 32, 48),
    }
    targets = dict(
        np=torch.randint(0, 2, (2, 32, 48)), hv=torch.rand(2, 2, 32, 48) * 2 - 1, tp=torch.randint(0, 3, (2, 32, 48))
    )
    hovernet_loss(outputs, targets)[0].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f'parameters without gradient: {missing}'
    assert [info['reduction'] for info in model.feature_info] == [4, 8, 16, 32]
    reference = timm.create_model(encoder, num_classes=0)  # the decoder reads the encoder's own features
    assert [info['num_chs'] for info in model.feature_info] == [
        info['num_chs'] for info in reference.feature_info if info['reduction'] >= 4
    ][-4:]


@pytest.mark.parametrize(
    'encoder,encoder_args,reductions',
    [
        ('vit_small_patch16_224', {}, '[16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16]'),
        ('resnet18', dict(output_stride=16), '[2, 4, 8, 16, 16]'),
    ],
)
def test_encoder_that_cannot_serve_is_refused_by_its_reductions(encoder, encoder_args, reductions):
    message = (
        f"encoder '{encoder}' gives features at reductions {reductions}; the HoVer-Net decoder needs one at each of "
        f'[4, 8, 16, 32] (a CNN-like pyramid: resnet*, convnext*, efficientnet*, regnet*, mrl_*)'
    )
    with pytest.raises(EncoderError) as info:
        zoo.create_model('hovernet', encoder=encoder, encoder_args=encoder_args)
    assert str(info.value) == message


def test_encoder_errors_name_the_problem():
    with pytest.raises(zoo.UnknownModelError, match="Unknown encoder 'resnet1000': .* Did you mean: .*resnet101"):
        zoo.create_model('hovernet', encoder='resnet1000')
    with pytest.raises(
        EncoderError, match=r"encoder_args may only hold the encoder's architecture, not \['pretrained'\]"
    ):
        zoo.create_model('hovernet', encoder='resnet18', encoder_args=dict(pretrained=True))
    with pytest.raises(zoo.WeightsError, match='from .safetensors files only'):
        zoo.create_model('hovernet', encoder='resnet18', encoder_pretrained='weights.pth')
    with pytest.raises(
        zoo.WeightsError, match="timm could not load test_resnet's weights .* or give a .safetensors path"
    ):
        zoo.create_model('hovernet', encoder='test_resnet', encoder_pretrained=True)  # offline, not in the HF cache
    with pytest.raises(
        ValueError, match="mrl_seg_nano is mrl_nano with its decoder; for another encoder use 'hovernet'"
    ):
        zoo.create_model('mrl_seg_nano', encoder='resnet18')
    with pytest.raises(ValueError, match="hovernet_fast is HoVer-Net's own network"):
        zoo.create_model('hovernet_fast', encoder='resnet18')


def test_encoder_pretrained_loads_the_encoders_timm_weights_from_a_local_file(tmp_path):
    """What ``encoder_pretrained=True`` downloads, from a file (timm's ``pretrained_cfg_overlay=dict(file=...)``)."""
    source = timm.create_model('test_resnet')
    path = tmp_path / 'test_resnet.safetensors'
    save_file(source.state_dict(), str(path))
    model = zoo.create_model('hovernet', encoder='test_resnet', encoder_pretrained=str(path))
    expected = source.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.encoder.state_dict().items())
    # Where the encoder's first weights came from is no reconstruction argument of the segmenter.
    assert model._model_args == {'encoder': 'test_resnet'}
    fresh = zoo.create_model('hovernet', encoder='test_resnet')
    assert not torch.equal(fresh.encoder.conv1[0].weight, expected['conv1.0.weight'])


def test_normalisation_is_inside_with_the_encoders_statistics():
    """One normalisation: the cfg says the net takes [0, 1] images, the net applies its encoder's mean/std."""
    for name, kwargs, mean in [
        ('mrl_seg_nano', {}, (0.485, 0.456, 0.406)),
        ('hovernet', dict(encoder='test_resnet'), (0.5, 0.5, 0.5)),
        ('hovernet_fast', {}, None),
    ]:
        model = zoo.create_model(name, **kwargs)
        assert model.pretrained_cfg['mean'] == (0.0, 0.0, 0.0) and model.pretrained_cfg['std'] == (1.0, 1.0, 1.0)
        if mean is not None:
            torch.testing.assert_close(model.mean.flatten(), torch.tensor(mean))
    # A published config.json from before says ImageNet statistics: the architecture's contract wins.
    assert zoo.create_model('local-dir:hub/mrl_seg_nano_stardist').pretrained_cfg['mean'] == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------------------
# mrl_seg_* through the split (their golden outputs: tests/zoo/test_golden.py)


def test_mrl_seg_published_weights_give_the_outputs_they_gave_before_the_split():
    before = load_file(str(FIXTURES / 'mrl_seg_nano_stardist_before_split.safetensors'))
    model = zoo.create_model('mrl_seg_nano.stardist', pretrained=True).eval()
    with torch.no_grad():
        outputs = model(before['input'])
    _assert_outputs_close(outputs, {k[len('output_') :]: v for k, v in before.items() if k != 'input'}, 'mrl_seg_nano')


# ---------------------------------------------------------------------------------------------------------
# timm's model contract for segmenters


def test_timm_data_pipeline_reproduces_the_card():
    """timm's resolve_data_config + create_transform give what the net takes: the card's DICE on the held-out tiles.

    timm's eval transform resizes to the cfg's input size: a segmenter is given the image's own size."""
    model = zoo.create_model('mrl_seg_nano.stardist', pretrained=True).eval()
    (card,) = zoo.get_weights('mrl_seg_nano.stardist').metrics.values()  # one held-out split
    dice = []
    for sample in split_stardist_sample()[1]:
        config = resolve_data_config(dict(input_size=(3, *sample.image.shape[:2])), model=model)
        tensor = create_transform(**config)(Image.fromarray(sample.image))
        image = (tensor * 255).round().byte().permute(1, 2, 0).numpy()  # [0, 1] -> the uint8 predict_instances takes
        np.testing.assert_array_equal(image, sample.image)
        pred = predict_instances(model, image, tile=128, overlap=32)[0]
        dice.append(instance_stats(sample.inst_map, pred)['dice'])
    assert card['dice'] == 0.9374 and abs(np.mean(dice) - card['dice']) <= 0.01


@pytest.mark.parametrize(
    'name,kwargs',
    [('mrl_seg_nano.stardist', dict(pretrained=True)), ('hovernet', dict(encoder='test_convnext', num_types=3))],
    ids=['mrl_seg_nano.stardist', 'hovernet-test_convnext'],
)
def test_save_for_hf_and_local_dir_round_trip(tmp_path, name, kwargs):
    model = zoo.create_model(name, **kwargs).eval()
    timm.models.save_for_hf(model, tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / 'config.json').read_text())
    assert 'encoder_pretrained' not in config['model_args']
    assert config['pretrained_cfg']['mean'] == [0.0, 0.0, 0.0] and config['pretrained_cfg']['std'] == [1.0, 1.0, 1.0]
    with pytest.warns(UserWarning, match='no sha256 recorded'):  # save_for_hf records none; zoo publish does
        restored = zoo.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        expected, outputs = model(x), restored(x)
    assert set(outputs) == set(expected) and all(torch.equal(outputs[k], expected[k]) for k in expected)


SCRIPTABLE = [
    ('hovernet_fast', dict(num_types=3)),
    ('hovernet', dict(encoder='convnext_atto')),
    ('hovernet', dict(encoder='efficientnet_b0')),
]


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
@pytest.mark.parametrize('name,kwargs', SCRIPTABLE, ids=['hovernet_fast', 'convnext_atto', 'efficientnet_b0'])
def test_torchscript(name, kwargs):
    model = zoo.create_model(name, **kwargs).eval()
    scripted = torch.jit.script(model)
    x = torch.rand(1, 3, 8, 24)  # the paper's net adds 92 px of context: small inputs keep the test short
    with torch.no_grad():
        expected, outputs = model(x), scripted(x)
    assert set(outputs) == set(expected)
    for key in expected:
        torch.testing.assert_close(outputs[key], expected[key])


class _TimmTracer(torch.fx.Tracer):
    """torch.fx with timm's leaf modules and wrapped functions, as timm's own fx tests trace."""

    def __init__(self):
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))

    def is_leaf_module(self, module, qualified_name):
        return type(module) in set(get_notrace_modules()) or super().is_leaf_module(module, qualified_name)


@pytest.mark.parametrize(
    'name,kwargs',
    [('mrl_seg_nano', {}), ('hovernet', dict(encoder='resnet18')), ('hovernet_fast', dict(num_types=3))],
    ids=['mrl_seg_nano', 'resnet18', 'hovernet_fast'],
)
def test_fx_trace_is_exact(name, kwargs):
    model = zoo.create_model(name, **kwargs).eval()
    traced = torch.fx.GraphModule(model, _TimmTracer().trace(model))
    for x in (torch.rand(1, 3, 8, 40), torch.rand(2, 3, 40, 8)):  # one graph, any size
        with torch.no_grad():
            expected, outputs = model(x), traced(x)
        assert set(outputs) == set(expected) and all(torch.equal(outputs[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    'name,kwargs,reductions',
    [
        ('mrl_seg_nano', {}, [4, 8, 16, 32]),
        ('hovernet', dict(encoder='resnet18'), [4, 8, 16, 32]),
        ('hovernet_fast', {}, [1, 2, 4, 8]),
    ],
    ids=['mrl_seg_nano', 'resnet18', 'hovernet_fast'],
)
def test_features_only_and_forward_intermediates(name, kwargs, reductions):
    model = zoo.create_model(name, **kwargs).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        features = zoo.create_model(name, features_only=True, **kwargs).eval()
        # The extractor keeps the encoder only.
        assert not features.model.load_state_dict(model.state_dict(), strict=False).missing_keys
        extracted = features(x)
    assert features.feature_info.reduction() == reductions
    assert (
        [f.shape[1] for f in extracted]
        == features.feature_info.channels()
        == [i['num_chs'] for i in model.feature_info]
    )
    for feature, intermediate, reduction in zip(extracted, intermediates, reductions):
        assert feature.shape[-1] <= math.ceil(32 / reduction) + 1
        torch.testing.assert_close(feature, intermediate, rtol=0, atol=0)


def test_features_only_with_published_weights():
    features = zoo.create_model('mrl_seg_nano.stardist', pretrained=True, features_only=True).eval()
    model = zoo.create_model('mrl_seg_nano.stardist', pretrained=True).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for feature, expected in zip(features(x), model.forward_intermediates(x, intermediates_only=True)):
            torch.testing.assert_close(feature, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    'name,kwargs', [('hovernet', dict(encoder='test_resnet')), ('hovernet_fast', {})], ids=['hovernet', 'hovernet_fast']
)
def test_reset_classifier_replaces_the_type_branch(name, kwargs):
    model = zoo.create_model(name, **kwargs)
    assert model.num_types == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
    model.reset_classifier(4)
    assert model.num_types == model.num_classes == 4 and model.get_classifier().out_channels == 4
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 8, 8))['tp'].shape == (1, 4, 8, 8)
    model.reset_classifier(0)
    assert model.num_types == 0 and not any('tp' in key for key in model.state_dict())


@pytest.mark.parametrize(
    'name,kwargs', [('hovernet', dict(encoder='resnet18')), ('hovernet_fast', {})], ids=['hovernet', 'hovernet_fast']
)
def test_device_and_dtype(name, kwargs):
    model = zoo.create_model(name, device='meta', **kwargs)
    assert {p.device.type for p in model.parameters()} == {'meta'}
    model = zoo.create_model(name, dtype=torch.bfloat16, **kwargs)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.in_chans == 3 and zoo.create_model(name, in_chans=1, **kwargs).in_chans == 1
