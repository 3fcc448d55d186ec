"""HoVer-Net (Graham et al. 2019, arXiv:1812.06499): the paper's network, and its NP / HV / TP branches on any
timm encoder.

Two architectures, both taking ``B x C x H x W`` images in ``[0, 1]`` (``zoo.segment`` and the training task feed
exactly that) and returning ``{'np': B x 2 x H x W logits, 'hv': B x 2 x H x W (x then y), 'tp': B x T x H x W
logits}`` at the input's size, ``tp`` only when ``num_types`` (timm's ``num_classes``, background included) is set.
Every pretrained cfg therefore says ``mean=(0, 0, 0), std=(1, 1, 1)``: timm's ``resolve_data_config`` +
``create_transform`` give ``[0, 1]`` tensors, and whatever normalisation the encoder needs happens inside.

**The paper's network** (``hovernet_original``, ``hovernet_fast``; :class:`HoVerNet`), as github:vqdang/hover_net
(``models/hovernet/net_desc.py``, ``net_utils.py``) defines it: a pre-activation ResNet-50 without the stem's
stride or max-pool (stages at strides 1, 2, 4, 8), a 1x1 bottleneck to 1024 channels, and one full decoder per
output, each three up-steps of nearest x2 upsampling + an *added* encoder skip, with valid convolutions and dense
blocks. Layer names, and so the state-dict keys, are the reference's (``conv0./.weight``,
``d0.units.0.conv1/bn.weight``, ``decoder.np.u3.dense.units.0.conv2.weight``...), so its checkpoints load once
converted to safetensors. Parameters (tested): original 45,028,676, fast 33,625,412; with types original
(``num_types=5``, CoNSeP) 54,744,457, fast (``num_types=6``, PanNuke) 37,639,626.

* ``'original'`` (the paper): valid 7x7 stem and 5x5 decoder convolutions; 270 px in, 80 px out.
  ``'fast'`` (the PyTorch release's PanNuke/MoNuSAC mode): 'same' stem, 3x3 decoder convolutions; 256 in, 164 out.
* ``same_size=False`` is the reference's forward exactly (``HoVerNet.valid_input_size`` says which sizes work).
  ``same_size=True`` (the default) makes it a zoo segmenter: the image is mirror-padded by the context the valid
  convolutions consume (95 px a side for original, 46 for fast; HoVer-Net also mirror-pads images at their
  borders) and to the next valid size, and the output is cropped back to ``H x W``, so the training task, tiled
  inference and the benchmark use it like any other net. It costs what valid convolutions cost: a 128 px
  tile runs at 318 px (original) or 224 px (fast).
* Not reproduced: the reference's ``freeze`` (phase-1 training of the decoders under an ImageNet-pretrained,
  gradient-free encoder), which is a training schedule, not architecture.

**Any timm encoder** (``hovernet``, and the named configurations ``mrl_seg_nano/tiny/small``; :class:`TimmHoVerNet`),
an encoder/decoder split as segmentation_models.pytorch does it: ``timm.create_model(encoder)`` pruned to the
features the decoder reads (timm's ``forward_intermediates``, the contract behind ``features_only`` with
``feature_cls='getter'``), so the encoder keeps timm's own parameter names under ``encoder.`` and timm's
ImageNet weights load into it (``encoder_pretrained=True``, or a local safetensors file). Architecture::

    x = (x - mean) / std                   mean/std: the encoder's own pretrained cfg (ImageNet for most)
    x replicate-padded to a multiple of 32
    image path: 3x3 conv-BN-ReLU at stride 1, 3x3 stride-2 conv-BN-ReLU at stride 2
    encoder:    features at strides 4, 8, 16, 32 (required; others are ignored)
    trunk:      U-Net up-steps 32 -> 16 -> 8 -> 4, each: bilinear x2, concat the encoder skip,
                two 3x3 conv-BN-ReLU                                      (shared by all branches)
    branches:   per output (NP, HV, optional TP) up-steps 4 -> 2 -> 1 with the image-path skips,
                each two separable 3x3 conv-BN-ReLU, then a 1x1 conv head
    outputs are cropped back to H x W

* Like HoVer-Net, every output has its own decoder at high resolution, where boundaries are decided; unlike
  HoVer-Net the coarse part of the decoder (strides 32 to 4) is shared, its convolutions are padded (output size =
  input size) and the high-resolution ones depthwise-separable, which keeps the decoder cheaper than the encoder.
* The full-resolution image path gives the branches edges a stride-4 encoder cannot resolve (nuclei are 10-30 px
  across at 40x).
* Encoders must give features at reductions 4, 8, 16 and 32 (resnet*, convnext*, efficientnet*, regnet*, mrl_*
  ...); any other pyramid (a plain ViT's: all 16; ``output_stride=16``) is refused with one error naming the
  encoder and its reductions.

Variants (params and MACs at 256x256 without a TP branch, measured with ``zoo.profile.count_macs``):

=================  ==============  =========================  ========  ========
name               encoder         decoder widths (s16..s1)   params    MACs
=================  ==============  =========================  ========  ========
mrl_seg_nano       mrl_nano        128/64/32/32/16            3.96M     1.39G
mrl_seg_tiny       mrl_tiny        256/128/64/32/16           31.91M    6.88G
mrl_seg_small      mrl_small       384/192/96/48/24           56.41M    13.01G
hovernet           resnet50 (any)  256/128/64/32/16           32.49M    9.90G
hovernet_fast      HoVer-Net's     (the paper's decoders)     33.63M    254.20G
hovernet_original  HoVer-Net's     (the paper's decoders)     45.03M    543.61G
=================  ==============  =========================  ========  ========

(The paper's networks at 256x256 include the mirrored context their valid convolutions need: 352 px and 446 px.)
"""

import difflib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct, SeparableConvNormAct, register_notrace_function, register_notrace_module
from timm.models import checkpoint, register_model
from timm.models._features import feature_take_indices

from .._arguments import check_count, check_counts, check_head, check_rate
from .._builder import build_zoo_model
from .._registry import UnknownModelError, split_tag, zoo_cfgs
from ..hub import WeightsError
from ..layers import factorize_

__all__ = ['HoVerNet', 'TimmHoVerNet', 'DecoderBlock', 'EncoderError']

# The decoder of TimmHoVerNet reads one encoder feature map at each of these strides.
DECODER_REDUCTIONS = (4, 8, 16, 32)
# timm.create_model arguments that say where weights or code come from, or that the wrapper sets itself.
_NOT_ENCODER_ARGS = frozenset(
    {
        'pretrained',
        'pretrained_cfg',
        'pretrained_cfg_overlay',
        'checkpoint_path',
        'cache_dir',
        'features_only',
        'feature_cls',
        'feature_cfg',
        'out_indices',
        'num_classes',
        'in_chans',
        'scriptable',
        'exportable',
        'no_jit',
        'device',
        'dtype',
    }
)
# A segmenter reads [0, 1] images: its normalisation, if any, is inside the network.
_UNIT_NORM = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class EncoderError(ValueError):
    """An encoder that cannot serve the HoVer-Net decoder (or cannot be built as one)."""


def _recorded_args(*not_recorded: str) -> property:
    """A ``_model_args`` that leaves out ``not_recorded``: timm's ``create_model`` records every keyword as a
    reconstruction argument (what ``save_for_hf`` exports), but ``num_types`` only names ``num_classes`` (which timm
    exports from the model), and where an encoder's first weights came from is no part of the architecture."""

    def get(self) -> dict:
        return self.__dict__.get('_recorded_model_args', {})

    def set(self, value: dict) -> None:
        self.__dict__['_recorded_model_args'] = {k: v for k, v in value.items() if k not in not_recorded}

    return property(get, set)


# ---------------------------------------------------------------------------------------------------------
# The paper's network


def _same_pad_amounts(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    # TensorFlow 'SAME': an odd total puts the extra pixel at the end (bottom/right), as HoVer-Net's
    # TFSamepaddingLayer does (which reads the height only; per axis here, identical for square inputs).
    rest = size % stride
    total = max(kernel_size - (stride if rest == 0 else rest), 0)
    return total // 2, total - total // 2


@register_notrace_module  # padding computed from the input's shape: one opaque step for torch.fx
class TFSamePad2d(nn.Module):
    """Zero padding that makes a ``kernel_size`` / ``stride`` convolution behave like TensorFlow's 'SAME'."""

    def __init__(self, kernel_size: int, stride: int = 1):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_pad_amounts(x.shape[-2], self.kernel_size, self.stride)
        left, right = _same_pad_amounts(x.shape[-1], self.kernel_size, self.stride)
        return F.pad(x, (left, right, top, bottom))


def _crop(x: torch.Tensor, amount_h: int, amount_w: int) -> torch.Tensor:
    """Remove ``amount`` rows / columns, ``amount // 2`` of them at the top / left (HoVer-Net's ``crop_op``)."""
    top, left = amount_h // 2, amount_w // 2
    return x[..., top : x.shape[-2] - (amount_h - top), left : x.shape[-1] - (amount_w - left)]


def _bn(channels: int, **dd) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, **dd)


def _preact_unit(in_chs: int, mid_chs: int, out_chs: int, stride: int, preact: bool, **dd) -> nn.Sequential:
    """Bottleneck unit 1x1 -> 3x3 (carrying the stride) -> 1x1; the first unit of a stage has no pre-activation
    because the stage before it ends in BN + ReLU."""
    layers = [('preact/bn', _bn(in_chs, **dd)), ('preact/relu', nn.ReLU(inplace=True))] if preact else []
    layers += [
        ('conv1', nn.Conv2d(in_chs, mid_chs, 1, bias=False, **dd)),
        ('conv1/bn', _bn(mid_chs, **dd)),
        ('conv1/relu', nn.ReLU(inplace=True)),
        ('conv2/pad', TFSamePad2d(3, stride)),
        ('conv2', nn.Conv2d(mid_chs, mid_chs, 3, stride=stride, bias=False, **dd)),
        ('conv2/bn', _bn(mid_chs, **dd)),
        ('conv2/relu', nn.ReLU(inplace=True)),
        ('conv3', nn.Conv2d(mid_chs, out_chs, 1, bias=False, **dd)),
    ]
    return nn.Sequential(OrderedDict(layers))


def _bn_relu(channels: int, **dd) -> nn.Sequential:
    return nn.Sequential(OrderedDict([('bn', _bn(channels, **dd)), ('relu', nn.ReLU(inplace=True))]))


class ResidualStage(nn.Module):
    """A pre-activation ResNet stage (HoVer-Net's ``ResidualBlock``): ``count`` bottleneck units, a 1x1 projection
    shortcut for the first, identity shortcuts after, and BN + ReLU at the end."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, count: int, stride: int = 1, **dd):
        super().__init__()
        units = []
        for i in range(count):  # the first unit changes the width and carries the stride
            first = i == 0
            units.append(
                _preact_unit(in_chs if first else out_chs, mid_chs, out_chs, stride if first else 1, not first, **dd)
            )
        self.units = nn.ModuleList(units)
        needs_projection = in_chs != out_chs or stride != 1
        shortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd) if needs_projection else nn.Identity()
        self.shortcut = shortcut
        self.blk_bna = _bn_relu(out_chs, **dd)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        for unit in self.units:
            x = (
                checkpoint(unit, x) if self.grad_checkpointing and not torch.jit.is_scripting() else unit(x)
            ) + shortcut
            shortcut = x
        return self.blk_bna(x)


class DenseBlock(nn.Module):
    """HoVer-Net's dense block: each unit (BN-ReLU, 1x1 conv to 128, BN-ReLU, valid ``k x k`` group conv to 32)
    is concatenated to its input, centre-cropped to the unit's smaller output; BN + ReLU at the end."""

    def __init__(
        self, in_chs: int, kernel_size: int, count: int, mid_chs: int = 128, growth: int = 32, groups: int = 4, **dd
    ):
        super().__init__()
        self.units = nn.ModuleList()
        for i in range(count):
            chs = in_chs + i * growth
            layers = [
                ('preact_bna/bn', _bn(chs, **dd)),
                ('preact_bna/relu', nn.ReLU(inplace=True)),
                ('conv1', nn.Conv2d(chs, mid_chs, 1, bias=False, **dd)),
                ('conv1/bn', _bn(mid_chs, **dd)),
                ('conv1/relu', nn.ReLU(inplace=True)),
                ('conv2', nn.Conv2d(mid_chs, growth, kernel_size, groups=groups, bias=False, **dd)),
            ]
            self.units.append(nn.Sequential(OrderedDict(layers)))
        self.blk_bna = _bn_relu(in_chs + count * growth, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            new = unit(x)
            x = torch.cat([_crop(x, x.shape[-2] - new.shape[-2], x.shape[-1] - new.shape[-1]), new], dim=1)
        return self.blk_bna(x)


def _paper_branch(out_chs: int, kernel_size: int, **dd) -> nn.Sequential:
    """One output's decoder: u3 and u2 (valid conv, dense block, 1x1), u1 ('same' conv), u0 (BN-ReLU, 1x1 head)."""

    def up_unit(in_chs: int, chs: int, count: int) -> nn.Sequential:
        dense_out = chs + count * 32
        layers = [
            ('conva', nn.Conv2d(in_chs, chs, kernel_size, bias=False, **dd)),
            ('dense', DenseBlock(chs, kernel_size, count, **dd)),
            ('convf', nn.Conv2d(dense_out, dense_out, 1, bias=False, **dd)),
        ]
        return nn.Sequential(OrderedDict(layers))

    u1 = [('conva/pad', TFSamePad2d(kernel_size)), ('conva', nn.Conv2d(256, 64, kernel_size, bias=False, **dd))]
    u0 = [('bn', _bn(64, **dd)), ('relu', nn.ReLU(inplace=True)), ('conv', nn.Conv2d(64, out_chs, 1, **dd))]
    units = [
        ('u3', up_unit(1024, 256, 8)),
        ('u2', up_unit(512, 128, 4)),
        ('u1', nn.Sequential(OrderedDict(u1))),
        ('u0', nn.Sequential(OrderedDict(u0))),
    ]
    return nn.Sequential(OrderedDict(units))


class UpSample2x(nn.Module):
    """Nearest-neighbour x2 as HoVer-Net's fixed unpooling: each pixel times a 2x2 matrix of ones, which is a
    buffer (``unpool_mat``) of the reference's state dict."""

    def __init__(self, device=None, dtype=None):
        super().__init__()
        self.register_buffer('unpool_mat', torch.ones(2, 2, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        x = x.reshape(batch, channels, height, 1, width, 1) * self.unpool_mat.to(x.dtype).reshape(1, 1, 1, 2, 1, 2)
        return x.reshape(batch, channels, 2 * height, 2 * width)


@register_notrace_function  # size arithmetic on the input's shape: one opaque step for torch.fx (a public
# name: fx wraps no function whose name starts with an underscore)
def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflection padding of any width, reflecting again where one reflection is not enough (as ``np.pad``)."""
    while top > 0 or bottom > 0 or left > 0 or right > 0:
        height, width = x.shape[-2], x.shape[-1]
        step = [min(left, width - 1), min(right, width - 1), min(top, height - 1), min(bottom, height - 1)]
        if max(step) == 0:  # a 1-pixel side has nothing to reflect
            return F.pad(x, (left, right, top, bottom), mode='replicate')
        x = F.pad(x, step, mode='reflect')
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x


@register_notrace_function
def check_valid_size(x: torch.Tensor, offset: int, margin: int) -> None:
    height, width = x.shape[-2], x.shape[-1]
    if (height - offset) % 8 or (width - offset) % 8 or min(height, width) <= 2 * margin:
        raise ValueError(
            f'HoVer-Net with same_size=False takes sides of {offset} + a multiple of 8, over {2 * margin} px '
            f'(the paper: 270 -> 80 original, 256 -> 164 fast), got {height}x{width}; same_size=True takes any size'
        )


class HoVerNet(nn.Module):
    """HoVer-Net as github:vqdang/hover_net defines it (see the module docstring).

    Args:
        mode: ``'original'`` (the paper's: valid stem, 5x5 decoder convolutions) or ``'fast'``.
        num_classes: nuclear types of the TP branch, background included (the reference's ``nr_types``);
            0 = no TP branch.
        in_chans: input channels.
        same_size: mirror-pad the input so that the output has its size (the zoo's convention); ``False`` is the
            reference's valid forward (270 -> 80, 256 -> 164).
        ranks: per-layer ranks by module name (what ``zoo.compress`` chose); those layers become low-rank
            factorizations (``zoo.layers``).
    """

    __jit_unused_properties__ = ['_model_args', 'num_types']
    _model_args = _recorded_args('num_types')

    def __init__(
        self,
        mode: str = 'original',
        num_classes: int = 0,
        in_chans: int = 3,
        same_size: bool = True,
        ranks: Mapping[str, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if mode not in ('original', 'fast'):
            raise ValueError(f"HoVer-Net mode must be 'original' or 'fast', got {mode!r}")
        check_head(num_classes, in_chans)
        self.mode, self.same_size = mode, same_size
        self.num_classes, self.in_chans = num_classes, in_chans
        # Channels each output head reads: its pre-logit features (timm's head_hidden_size), one vector a pixel.
        self.num_features = self.head_hidden_size = 64
        original = mode == 'original'
        # Input pixels before the first output pixel (valid stem 3 + decoder crop 92, or 46), and the offset
        # of valid input sizes from a multiple of 8 (the valid 7x7 stem removes 6).
        self.valid_margin = 95 if original else 46
        self.size_offset = 6 if original else 0
        self.crop_d0, self.crop_d1 = (184, 72) if original else (92, 36)
        self.kernel_size = 5 if original else 3

        stem = [
            ('/', nn.Conv2d(in_chans, 64, 7, bias=False, **dd)),
            ('bn', _bn(64, **dd)),
            ('relu', nn.ReLU(inplace=True)),
        ]
        self.conv0 = nn.Sequential(OrderedDict(stem if original else [('pad', TFSamePad2d(7))] + stem))
        self.d0 = ResidualStage(64, 64, 256, 3, stride=1, **dd)
        self.d1 = ResidualStage(256, 128, 512, 4, stride=2, **dd)
        self.d2 = ResidualStage(512, 256, 1024, 6, stride=2, **dd)
        self.d3 = ResidualStage(1024, 512, 2048, 3, stride=2, **dd)
        self.conv_bot = nn.Conv2d(2048, 1024, 1, bias=False, **dd)
        self.feature_info = [
            dict(num_chs=chs, reduction=2**i, module=f'd{i}') for i, chs in enumerate((256, 512, 1024, 2048))
        ]
        self.decoder = nn.ModuleDict(self._branches(num_classes, **dd))
        self.upsample2x = UpSample2x(**dd)
        if ranks:
            factorize_(self, ranks, init='random')
        self.apply(self._init_weights)

    def _branches(self, num_classes: int, **dd) -> dict[str, nn.Module]:
        outputs = ({'tp': num_classes} if num_classes else {}) | {'np': 2, 'hv': 2}  # the reference's order
        return {name: _paper_branch(chs, self.kernel_size, **dd) for name, chs in outputs.items()}

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The reference's weights_init: He (fan-out) for every conv; conv biases keep PyTorch's default.
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def num_types(self) -> int:
        return self.num_classes

    @staticmethod
    def valid_input_size(mode: str, output_size: int) -> int:
        """The input side whose valid forward (``same_size=False``) gives at least ``output_size`` pixels."""
        margin, offset = (95, 6) if mode == 'original' else (46, 0)
        size = output_size + 2 * margin
        return size + (offset - size) % 8

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.decoder['tp'].u0.conv if 'tp' in self.decoder else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, randomly initialised TP branch for ``num_classes`` types (0 removes it)."""
        check_count('num_classes', num_classes, 0)
        param = self.conv0[-3].weight  # the stem conv: kept by every pruning
        branches = {k: v for k, v in self.decoder.items() if k != 'tp'}
        if num_classes:
            tp = _paper_branch(num_classes, self.kernel_size, device=param.device, dtype=param.dtype)
            tp.apply(self._init_weights)
            branches = {'tp': tp.train(self.training)} | branches  # its BatchNorms in the model's mode
        self.decoder = nn.ModuleDict(branches)
        self.num_classes = num_classes

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in (self.d0, self.d1, self.d2, self.d3):
            if isinstance(stage, ResidualStage):  # not pruned
                stage.grad_checkpointing = enable

    def _encode(self, x: torch.Tensor, count: int = 4) -> list[torch.Tensor]:
        features = []
        x = self.conv0(x)
        for stage in (self.d0, self.d1, self.d2, self.d3)[:count]:
            x = stage(x)
            features.append(x)
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1024-channel bottleneck (stride 8) every decoder branch starts from."""
        return self.conv_bot(self._encode(x)[-1])

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder stage outputs ``d0..d3`` (strides 1, 2, 4, 8; valid stem in 'original' mode), as timm's
        ``forward_intermediates``; the final output is :meth:`forward_features`."""
        if output_fmt != 'NCHW':
            raise ValueError(f'HoVer-Net features are NCHW, got output_fmt={output_fmt!r}')
        take_indices, max_index = feature_take_indices(4, indices)
        features = self._encode(x, max_index + 1 if stop_early or intermediates_only else 4)
        intermediates = [features[i] for i in take_indices]
        if intermediates_only:
            return intermediates
        # An early stop returns the last stage it ran, as timm's models do.
        return (self.conv_bot(features[-1]) if len(features) == 4 else features[-1]), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep the encoder up to the last wanted stage; the decoders go (a feature extractor has no outputs)."""
        take_indices, max_index = feature_take_indices(4, indices)
        for i in range(max_index + 1, 4):
            setattr(self, f'd{i}', nn.Identity())
        if prune_head:
            self.decoder = nn.ModuleDict()
            self.conv_bot = nn.Identity()
            self.num_classes = 0
            # What forward_features now returns; no head is left to read anything else.
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        return take_indices

    def forward_valid(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reference's forward: valid convolutions, output smaller than the input (270 -> 80, 256 -> 164)."""
        check_valid_size(x, self.size_offset, self.valid_margin)
        d0 = self.d0(self.conv0(x))
        d1 = self.d1(d0)
        d2 = self.d2(d1)
        d3 = self.conv_bot(self.d3(d2))
        d0 = _crop(d0, self.crop_d0, self.crop_d0)
        d1 = _crop(d1, self.crop_d1, self.crop_d1)
        outputs: dict[str, torch.Tensor] = {}
        for name, branch in self.decoder.items():
            u = branch.u3(self.upsample2x(d3) + d2)
            u = branch.u2(self.upsample2x(u) + d1)
            u = branch.u1(self.upsample2x(u) + d0)
            outputs[name] = branch.u0(u)
        return outputs

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.same_size:
            return self.forward_valid(x)
        height, width = x.shape[-2], x.shape[-1]
        margin = self.valid_margin
        extra_h = (self.size_offset - height - 2 * margin) % 8
        extra_w = (self.size_offset - width - 2 * margin) % 8
        x = mirror_pad(x, margin, margin + extra_h, margin, margin + extra_w)
        outputs = self.forward_valid(x)
        return {name: value[..., :height, :width] for name, value in outputs.items()}


# ---------------------------------------------------------------------------------------------------------
# HoVer-Net's branches on a timm encoder


class DecoderBlock(nn.Module):
    """Bilinear x2 upsampling, concatenation with the skip, two 3x3 conv-BN-ReLU (optionally separable)."""

    def __init__(self, in_chs: int, skip_chs: int, out_chs: int, separable: bool = False, **dd):
        super().__init__()
        conv = SeparableConvNormAct if separable else ConvNormAct
        self.conv1 = conv(in_chs + skip_chs, out_chs, 3, **dd)
        self.conv2 = conv(out_chs, out_chs, 3, **dd)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode='bilinear', align_corners=False)
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class _Branch(nn.Module):
    """One output's high-resolution decoder: stride 4 -> 2 -> 1 with image-path skips, then a 1x1 head."""

    def __init__(self, in_chs: int, half_chs: int, full_chs: int, out_chs: int, **dd):
        super().__init__()
        self.up_half = DecoderBlock(in_chs, half_chs, half_chs, separable=True, **dd)
        self.up_full = DecoderBlock(half_chs, full_chs, full_chs, separable=True, **dd)
        self.head = nn.Conv2d(full_chs, out_chs, 1, **dd)

    def forward(self, x: torch.Tensor, half_res: torch.Tensor, full_res: torch.Tensor) -> torch.Tensor:
        return self.head(self.up_full(self.up_half(x, half_res), full_res))


def _encoder_weights_args(encoder: str, encoder_pretrained: bool | str) -> dict:
    """``timm.create_model`` arguments that load the encoder's timm weights: its default tag (downloaded, or
    from the Hugging Face cache) for ``True``, a local safetensors file for a path."""
    if encoder_pretrained is False:
        return {}
    if encoder_pretrained is True:
        return dict(pretrained=True)
    path = Path(encoder_pretrained).expanduser()
    if path.suffix != '.safetensors':
        raise WeightsError(
            f'encoder_pretrained={str(path)!r}: encoder weights load from .safetensors files only (never pickles); '
            f'convert with safetensors.torch.save_file(timm.create_model({encoder!r}).state_dict(), "w.safetensors")'
        )
    if not path.is_file():
        raise WeightsError(f'encoder_pretrained={str(path)!r}: no such file')
    return dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def _decoder_feature_indices(encoder: str, feature_info: list[dict]) -> list[int]:
    """Indices of the encoder's deepest feature at each of the decoder's strides, or one clear error."""
    reductions = [int(info['reduction']) for info in feature_info]
    indices = [max((i for i, r in enumerate(reductions) if r == wanted), default=-1) for wanted in DECODER_REDUCTIONS]
    if min(indices) < 0 or indices != sorted(indices):
        raise EncoderError(
            f'encoder {encoder!r} gives features at reductions {reductions}; the HoVer-Net decoder needs one at each '
            f'of {list(DECODER_REDUCTIONS)} (a CNN-like pyramid: resnet*, convnext*, efficientnet*, regnet*, mrl_*)'
        )
    return indices


class TimmHoVerNet(nn.Module):
    """HoVer-Net's NP / HV (/ TP) branches on a timm encoder (see the module docstring).

    Args:
        encoder: a timm model name (zoo models included), optionally with a tag (``'resnet50.a1_in1k'``).
        decoder_dims: decoder widths at strides 16, 8, 4 (shared trunk) and 2, 1 (per branch and image path).
        num_classes: nuclear types of the TP branch, background included; 0 = no TP branch.
        in_chans: input channels.
        encoder_args: further architecture arguments of the encoder (``window_size`` for ``mrl_*``...); never
            where its weights come from.
        encoder_pretrained: ``True`` loads the encoder's timm weights (its default tag, downloaded or from the
            Hugging Face cache), a path loads them from that safetensors file. Not a reconstruction argument: a
            published model's own weights replace the encoder's.
        drop_path_rate: the encoder's stochastic depth.
        ranks: per-layer ranks by module name, encoder (``encoder.*``) and decoder alike (what ``zoo.compress``
            chose); those layers become low-rank factorizations (``zoo.layers``).
    """

    __jit_unused_properties__ = ['_model_args', 'num_types']
    _model_args = _recorded_args('num_types', 'encoder_pretrained')

    def __init__(
        self,
        encoder: str = 'resnet50',
        decoder_dims: Sequence[int] = (256, 128, 64, 32, 16),
        num_classes: int = 0,
        in_chans: int = 3,
        encoder_args: dict | None = None,
        encoder_pretrained: bool | str = False,
        drop_path_rate: float | None = None,
        ranks: Mapping[str, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if len(decoder_dims) != 5:
            raise ValueError(f'decoder_dims needs widths at strides 16, 8, 4, 2, 1; got {tuple(decoder_dims)}')
        check_counts('decoder_dims', decoder_dims)
        check_head(num_classes, in_chans)
        if drop_path_rate is not None:
            check_rate('drop_path_rate', drop_path_rate)
        encoder_args = dict(encoder_args or {})
        refused = sorted(set(encoder_args) & _NOT_ENCODER_ARGS)
        if refused:
            raise EncoderError(
                f"encoder_args may only hold the encoder's architecture, not {refused}: use encoder_pretrained for "
                f'its weights, and num_classes / in_chans of the segmenter'
            )
        if drop_path_rate is not None:
            encoder_args['drop_path_rate'] = drop_path_rate
        weights_args = _encoder_weights_args(encoder, encoder_pretrained)
        if split_tag(encoder)[0] not in timm.list_models():
            close = difflib.get_close_matches(split_tag(encoder)[0], timm.list_models(), n=5, cutoff=0.7)
            hint = f' Did you mean: {", ".join(close)}?' if close else ''
            raise UnknownModelError(f'Unknown encoder {encoder!r}: not a timm model (timm.list_models()).{hint}')
        try:
            model = timm.create_model(encoder, num_classes=0, in_chans=in_chans, **encoder_args, **weights_args, **dd)
        except OSError as e:  # no network and not in the Hugging Face cache, or an unreadable file
            if not weights_args:
                raise
            raise WeightsError(
                f"encoder_pretrained={encoder_pretrained!r}: timm could not load {encoder}'s weights ({e}). Online "
                f'timm downloads them; offline they must be in the Hugging Face cache, or give a .safetensors path'
            ) from e
        if not hasattr(model, 'forward_intermediates') or not hasattr(model, 'prune_intermediate_layers'):
            raise EncoderError(
                f"encoder {encoder!r} has no forward_intermediates / prune_intermediate_layers (timm's "
                f"feature_cls='getter' contract), which the HoVer-Net decoder reads its features through"
            )
        indices = _decoder_feature_indices(encoder, model.feature_info)
        self.feature_info = [
            dict(model.feature_info[i], module=f'encoder.{model.feature_info[i]["module"]}') for i in indices
        ]
        self.encoder_indices = model.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
        self.encoder = model
        self.encoder_name = encoder
        self.num_classes, self.in_chans = num_classes, in_chans
        # Channels each output head reads: its pre-logit features (timm's head_hidden_size), one vector a pixel.
        self.num_features = self.head_hidden_size = decoder_dims[-1]
        self.pad_multiple = DECODER_REDUCTIONS[-1]
        # What the encoder was trained on (its pretrained cfg), averaged for another channel count.
        mean, std = model.pretrained_cfg.get('mean', (0.0,)), model.pretrained_cfg.get('std', (1.0,))
        if len(mean) != in_chans:
            mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
        # Non-persistent: part of the architecture, not of the weights.
        buffer = dict(device=device, dtype=dtype or torch.float32)
        self.register_buffer('mean', torch.tensor(mean, **buffer).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, **buffer).view(1, -1, 1, 1), persistent=False)
        first_conv = model.pretrained_cfg.get('first_conv') or ()
        first_conv = (first_conv,) if isinstance(first_conv, str) else tuple(first_conv)
        self._traits = dict(first_conv=(*(f'encoder.{name}' for name in first_conv), 'full_res.conv'))

        s16, s8, s4, s2, s1 = decoder_dims
        chs = [info['num_chs'] for info in self.feature_info]
        self.full_res = ConvNormAct(in_chans, s1, 3, **dd)
        self.half_res = ConvNormAct(s1, s2, 3, stride=2, **dd)
        self.trunk = nn.ModuleList(
            [
                DecoderBlock(chs[3], chs[2], s16, **dd),
                DecoderBlock(s16, chs[1], s8, **dd),
                DecoderBlock(s8, chs[0], s4, **dd),
            ]
        )
        self.branch_dims = (s4, s2, s1)
        outputs = {'np': 2, 'hv': 2} | ({'tp': num_classes} if num_classes else {})
        self.branches = nn.ModuleDict({name: _Branch(*self.branch_dims, chs, **dd) for name, chs in outputs.items()})
        if ranks:
            factorize_(self, ranks, init='random')

    @property
    def num_types(self) -> int:
        return self.num_classes

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.branches['tp'].head if 'tp' in self.branches else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, randomly initialised TP branch for ``num_classes`` types (0 removes it)."""
        check_count('num_classes', num_classes, 0)
        branches = {k: v for k, v in self.branches.items() if k != 'tp'}
        if num_classes:
            param = self.branches['np'].head.weight
            tp = _Branch(*self.branch_dims, num_classes, device=param.device, dtype=param.dtype)
            branches['tp'] = tp.train(self.training)  # its BatchNorms in the model's mode
        self.branches = nn.ModuleDict(branches)
        self.num_classes = num_classes

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def _encode(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """Encoder features of a normalised image."""
        features = self.encoder.forward_intermediates(x, indices=indices, intermediates_only=True)
        assert isinstance(features, list)  # intermediates_only; refines timm's Union return for TorchScript
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's deepest feature map (stride 32) the decoder starts from."""
        return self._encode(self._normalise(x), self.encoder_indices[-1:])[0]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder features the decoder reads (strides 4, 8, 16, 32), as timm's ``forward_intermediates``; the
        final output is :meth:`forward_features`. Inputs are what :meth:`forward` takes (normalised inside, as
        there), so ``features_only`` models take the images the pretrained cfg describes; no padding."""
        if output_fmt != 'NCHW':
            raise ValueError(f'HoVer-Net features are NCHW, got output_fmt={output_fmt!r}')
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        wanted = sorted(set(take_indices) | {len(self.feature_info) - 1})
        features = self._encode(self._normalise(x), [self.encoder_indices[i] for i in wanted])
        intermediates = [features[wanted.index(i)] for i in take_indices]
        if intermediates_only:
            return intermediates
        return features[-1], intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep the encoder up to the last wanted feature; the decoder goes (a feature extractor has no outputs)."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self.encoder.prune_intermediate_layers(self.encoder_indices[: max_index + 1], prune_norm=True)
        self.encoder_indices = self.encoder_indices[: max_index + 1]
        self.feature_info = self.feature_info[: max_index + 1]
        if prune_head:
            self.trunk, self.branches = nn.ModuleList(), nn.ModuleDict()
            self.full_res = self.half_res = nn.Identity()
            self.num_classes = 0
            # What forward_features now returns; no head is left to read anything else.
            self.num_features = self.head_hidden_size = self.feature_info[-1]['num_chs']
        return take_indices

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = x.shape[-2], x.shape[-1]
        x = self._normalise(x)
        x = F.pad(x, (0, -width % self.pad_multiple, 0, -height % self.pad_multiple), mode='replicate')
        full_res = self.full_res(x)
        half_res = self.half_res(full_res)
        features = self._encode(x, self.encoder_indices)
        x = features[-1]
        for i, block in enumerate(self.trunk):
            x = block(x, features[len(features) - 2 - i])
        outputs: dict[str, torch.Tensor] = {}
        for name, branch in self.branches.items():
            outputs[name] = branch(x, half_res, full_res)[..., :height, :width]
        return outputs


# ---------------------------------------------------------------------------------------------------------
# Registration


def _num_types_to_classes(kwargs: dict) -> dict:
    # `num_types` is the task's name for what timm passes around as `num_classes` (the TP channels).
    if 'num_types' in kwargs:
        num_types = kwargs.pop('num_types') or 0
        check_count('num_types', num_types, 0)
        if kwargs.get('num_classes', num_types) != num_types:
            raise ValueError(f'num_types={num_types} and num_classes={kwargs["num_classes"]} disagree')
        kwargs['num_classes'] = num_types
    if kwargs.get('num_classes') == 1:  # a TP branch of background alone would type every nucleus as nothing
        raise ValueError(
            'num_types=1 is the background alone: use 0 (no type branch) or at least 2 (background '
            'and the nuclear types)'
        )
    # The architecture fixes the input contract: [0, 1] images, whatever an older config.json says.
    kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, **_UNIT_NORM)
    return kwargs


def _create_hovernet(variant: str, pretrained: bool = False, **kwargs) -> TimmHoVerNet:
    kwargs = _num_types_to_classes(kwargs)
    if pretrained:  # the published weights replace the encoder's: nothing to download
        kwargs.pop('encoder_pretrained', None)
    feature_cfg = dict(feature_cls='getter', out_indices=(0, 1, 2, 3))
    return build_zoo_model(TimmHoVerNet, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


def _create_named_hovernet(
    variant: str, pretrained: bool, encoder: str, decoder_dims: tuple, kwargs: dict
) -> TimmHoVerNet:
    """A named configuration: its encoder is part of its name."""
    if kwargs.setdefault('encoder', encoder) != encoder:
        raise ValueError(
            f"{variant} is {encoder} with its decoder; for another encoder use 'hovernet' "
            f'(encoder={kwargs["encoder"]!r}, decoder_dims={list(decoder_dims)} for the same decoder)'
        )
    kwargs.setdefault('decoder_dims', decoder_dims)
    return _create_hovernet(variant, pretrained, **kwargs)


def _create_paper_hovernet(variant: str, pretrained: bool = False, **kwargs) -> HoVerNet:
    if 'encoder' in kwargs:
        raise ValueError(
            f"{variant} is HoVer-Net's own network (its pre-activation ResNet-50); for another encoder use 'hovernet'"
        )
    kwargs = _num_types_to_classes(kwargs)
    feature_cfg = dict(feature_cls='getter', out_indices=(0, 1, 2, 3))
    return build_zoo_model(HoVerNet, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


def _cfg(**kwargs) -> dict:
    # `classifier` lists the TP branch (skipped whole when weights without one are loaded into a model with
    # one) and its head (dropped by timm when the number of types changes).
    return (
        dict(
            num_classes=0,
            input_size=(3, 256, 256),
            pool_size=None,
            crop_pct=1.0,
            interpolation='bilinear',
            classifier=('branches.tp', 'branches.tp.head'),
            license='apache-2.0',
            paper_name=(
                'HoVer-Net: Simultaneous Segmentation and Classification of Nuclei in Multi-Tissue Histology Images'
            ),
            paper_ids=('arXiv:1812.06499',),
            notes=('HoVer-Net NP/HV/TP branches on a timm encoder; decoder designed by this zoo.',),
        )
        | _UNIT_NORM
        | kwargs
    )


def _mrl_cfg() -> dict:
    return _cfg(
        first_conv=('encoder.stem.0', 'full_res.conv'),
        paper_name='MRL: Learning to Mix with Attention and Convolutions',
        paper_ids=('arXiv:2208.13975', 'arXiv:1812.06499'),
        notes=('MRL encoder with HoVer-Net NP/HV/TP outputs; decoder designed by this zoo.',),
    )


def _paper_cfg() -> dict:
    return _cfg(
        first_conv='conv0./',
        classifier=('decoder.tp', 'decoder.tp.u0.conv'),
        notes=('HoVer-Net as github:vqdang/hover_net defines it (models/hovernet/net_desc.py).',),
    )


default_cfgs = zoo_cfgs(
    {
        'hovernet': _cfg(first_conv=('encoder.conv1', 'full_res.conv')),
        'mrl_seg_nano': _mrl_cfg(),
        'mrl_seg_tiny': _mrl_cfg(),
        'mrl_seg_small': _mrl_cfg(),
    },
    # What a published config.json may set: the architecture, never where weights or code come from.
    config_args=('encoder', 'encoder_args', 'decoder_dims', 'num_classes', 'in_chans', 'drop_path_rate', 'ranks'),
) | zoo_cfgs(
    {'hovernet_original': _paper_cfg(), 'hovernet_fast': _paper_cfg()},
    config_args=('num_classes', 'in_chans', 'same_size', 'ranks'),
)


@register_model
def hovernet(pretrained: bool = False, **kwargs) -> TimmHoVerNet:
    """HoVer-Net's NP/HV/TP branches on any timm encoder (``encoder='resnet50'`` by default; 32.49M params,
    9.90 GMACs at 256 without TP). The paper's network is ``hovernet_original``."""
    return _create_hovernet('hovernet', pretrained, **kwargs)


@register_model
def mrl_seg_nano(pretrained: bool = False, **kwargs) -> TimmHoVerNet:
    """MRL-Nano encoder, light decoder (3.96M params, 1.39 GMACs at 256 without TP)."""
    return _create_named_hovernet('mrl_seg_nano', pretrained, 'mrl_nano', (128, 64, 32, 32, 16), kwargs)


@register_model
def mrl_seg_tiny(pretrained: bool = False, **kwargs) -> TimmHoVerNet:
    """MRL-Tiny encoder (31.91M params, 6.88 GMACs at 256 without TP)."""
    return _create_named_hovernet('mrl_seg_tiny', pretrained, 'mrl_tiny', (256, 128, 64, 32, 16), kwargs)


@register_model
def mrl_seg_small(pretrained: bool = False, **kwargs) -> TimmHoVerNet:
    """MRL-Small encoder (56.41M params, 13.01 GMACs at 256 without TP)."""
    return _create_named_hovernet('mrl_seg_small', pretrained, 'mrl_small', (384, 192, 96, 48, 24), kwargs)


@register_model
def hovernet_original(pretrained: bool = False, **kwargs) -> HoVerNet:
    """HoVer-Net as in the paper (mode 'original': 270 px in, 80 out; 45,028,676 params without TP)."""
    return _create_paper_hovernet('hovernet_original', pretrained, mode='original', **kwargs)


@register_model
def hovernet_fast(pretrained: bool = False, **kwargs) -> HoVerNet:
    """HoVer-Net's 'fast' mode (PanNuke / MoNuSAC: 256 px in, 164 out; 33,625,412 params without TP)."""
    return _create_paper_hovernet('hovernet_fast', pretrained, mode='fast', **kwargs)
