"""Low-rank layers: exactness at full rank, Eckart-Young optimality, back-conversion, Frobenius decay; device,
dtype, meta device, TorchScript and torch.fx."""

import pytest
import torch
import torch.fx
import torch.nn as nn

import zoo
from zoo.layers import (
    LowRankConv2d,
    LowRankLinear,
    add_frobenius_decay_,
    factorize_,
    frobenius_norm_sq,
    full_rank,
    low_rank_like,
    weight_matrix,
)


@pytest.mark.parametrize(
    'conv',
    [
        nn.Conv2d(6, 10, 3, padding=1, bias=True),
        nn.Conv2d(12, 5, 3, stride=2, padding=2, dilation=2, bias=False),
        nn.Conv2d(8, 16, 1, stride=2, bias=False),
        nn.Conv2d(4, 7, (3, 5), padding=(1, 2), padding_mode='reflect'),
    ],
    ids=['3x3-bias', 'strided-dilated', '1x1-stride2', 'rect-reflect'],
)
def test_conv_full_rank_reproduces_dense(conv):
    x = torch.randn(2, conv.in_channels, 11, 9, dtype=torch.float64)
    conv = conv.double()
    low = LowRankConv2d.from_dense(conv, full_rank(conv))
    torch.testing.assert_close(low(x), conv(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(low.to_dense()(x), conv(x), rtol=1e-10, atol=1e-10)


def test_linear_full_rank_reproduces_dense():
    linear = nn.Linear(20, 7).double()
    low = LowRankLinear.from_dense(linear, 7)
    x = torch.randn(3, 5, 20, dtype=torch.float64)
    torch.testing.assert_close(low(x), linear(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(low.to_dense().weight, linear.weight)


def test_truncation_is_the_best_rank_r_approximation():
    """Eckart-Young: the error of the rank-r factorization is the energy of the dropped singular values."""
    linear = nn.Linear(30, 20, bias=False).double()
    s = torch.linalg.svdvals(linear.weight)
    for rank in (1, 5, 12):
        low = LowRankLinear.from_dense(linear, rank)
        error = (weight_matrix(low) - linear.weight).norm() ** 2
        torch.testing.assert_close(error, (s[rank:] ** 2).sum())
        # the split puts the same scale on both factors: U'ᵀU' = V'ᵀV' = diag(σ)
        torch.testing.assert_close(low.u_matrix().t() @ low.u_matrix(), torch.diag(s[:rank]))
        torch.testing.assert_close(low.v_matrix().t() @ low.v_matrix(), torch.diag(s[:rank]))


def test_to_dense_folds_the_mid_batchnorm():
    conv = nn.Conv2d(5, 9, 3, padding=1, bias=False)
    low = LowRankConv2d.from_dense(conv, 4, mid_norm=True)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        low.norm.running_mean.uniform_(-1, 1)
        low.norm.running_var.uniform_(0.5, 2)
        low.norm.weight.uniform_(0.5, 1.5)
        low.norm.bias.uniform_(-0.5, 0.5)
    low.eval()
    x = torch.randn(2, 5, 8, 8)
    torch.testing.assert_close(low.to_dense()(x), low(x), rtol=1e-5, atol=1e-5)


def test_frobenius_decay_gradient_matches_autograd():
    for layer in (LowRankConv2d(6, 8, 3, 4), LowRankLinear(10, 7, 3)):
        penalty = 0.5 * 1e-2 * frobenius_norm_sq(layer)
        expected = torch.autograd.grad(penalty, [layer.u_weight, layer.v_weight])
        add_frobenius_decay_(layer, 1e-2)
        torch.testing.assert_close(layer.u_weight.grad, expected[0])
        torch.testing.assert_close(layer.v_weight.grad, expected[1])
        torch.testing.assert_close(frobenius_norm_sq(layer), weight_matrix(layer).norm() ** 2)


def test_factorize_in_place_and_errors():
    model = zoo.create_model('cf_resnet18', num_classes=10, widths=(8, 16, 32, 64)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        full = {n: full_rank(m) for n, m in model.named_modules() if n in ('layer3.0.conv1', 'fc')}
        factorize_(model, full)  # SVD at full rank: the same function
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)
    assert isinstance(model.layer3[0].conv1, LowRankConv2d) and isinstance(model.fc, LowRankLinear)
    with pytest.raises(ValueError, match=r'layer2.0.conv1: rank 17 outside \[1, 16\]'):
        factorize_(model, {'layer2.0.conv1': 17})
    with pytest.raises(ValueError, match="not factorizable layers of ResNet: \\['nope'\\]"):
        factorize_(model, {'nope': 2})


def test_rank_ratio_matches_the_papers_parameter_count():
    # 3.39M for ResNet-18 at ratio 1/4 on the paper's layers (the research notes' arithmetic).
    model = zoo.create_model('cf_resnet18', num_classes=10, rank_ratio=0.25)
    assert sum(p.numel() for p in model.parameters()) == 3_389_514
    assert len(model.low_rank_candidates()) == 12
    assert isinstance(model.layer2[0].conv1, LowRankConv2d)
    assert isinstance(model.layer2[0].downsample[0], nn.Conv2d)  # shortcuts stay dense
    assert model.layer4[1].conv2.rank == 128


def _tensors(module):
    return [*module.parameters(), *module.buffers()]


LAYERS = [
    pytest.param(lambda **dd: LowRankConv2d(4, 6, 3, 2, stride=2, padding=1, mid_norm=True, **dd), id='conv'),
    pytest.param(lambda **dd: LowRankLinear(5, 3, 2, **dd), id='linear'),
]


@pytest.mark.parametrize('make', LAYERS)
def test_low_rank_layers_take_device_and_dtype(make):
    assert {t.device.type for t in _tensors(make(device='meta'))} == {'meta'}
    assert {t.dtype for t in _tensors(make(dtype=torch.bfloat16)) if t.is_floating_point()} == {torch.bfloat16}


@pytest.mark.parametrize('device,dtype', [('meta', torch.float32), ('cpu', torch.float64), ('cpu', torch.bfloat16)])
def test_conversions_keep_the_dense_layers_device_and_dtype(device, dtype):
    for dense in (nn.Conv2d(4, 6, 3, device=device, dtype=dtype), nn.Linear(5, 3, device=device, dtype=dtype)):
        for low in (low_rank_like(dense, 2, svd=False), low_rank_like(dense, 2, svd=True)):
            for module in (low, low.to_dense()):
                assert {(t.device.type, t.dtype) for t in _tensors(module)} == {(device, dtype)}


def test_factorize_on_the_meta_device():
    """Shapes (params, MACs) of a factorized model without allocating it, for either initialisation."""
    for init in ('random', 'svd'):
        model = zoo.create_model('cf_resnet18', widths=(8, 16, 32, 64), device='meta')
        factorize_(model, {'layer3.0.conv1': 4, 'fc': 3}, init=init, mid_norm=False)
        assert isinstance(model.layer3[0].conv1, LowRankConv2d) and isinstance(model.fc, LowRankLinear)
        assert {t.device.type for t in _tensors(model)} == {'meta'}


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')
@pytest.mark.filterwarnings('ignore:The TorchScript type system:UserWarning')  # torch's GraphModule.__init__
@pytest.mark.parametrize('make', LAYERS)
def test_low_rank_layers_script_and_trace(make):
    layer = make().eval()
    x = torch.randn(2, 4, 9, 9) if isinstance(layer, LowRankConv2d) else torch.randn(2, 5)
    with torch.no_grad():
        expected = layer(x)
        traced = torch.fx.symbolic_trace(layer)
        assert torch.equal(traced(x), expected)
        for scripted in (torch.jit.script(layer), torch.jit.script(traced)):
            torch.testing.assert_close(scripted(x), expected)
