"""MRL: Mixing Regionally and Locally (Mohta, Suganuma & Tanaka, Sony, arXiv:2208.13975).

Only the paper's abstract is public, so the block below is **this zoo's design** from that abstract,
not the authors' code. What the abstract fixes: feature mixing is split into a *regional* scale mixed
by self-attention (domain-wide receptive field) and a *local* scale mixed by convolutions restricted to
a window; the block first "mixes regional features associated with local features within a defined
region", then performs "a local-scale features mix augmented by regional features"; group
convolutions can be added for dataset-specific generalisation. The closest documented antecedent is
RegionViT (one regional token per 7x7 window of local tokens, attention across regional tokens), whose
window (7) and head width (32) the variants below share; RegionViT's local *attention* becomes a
depthwise convolution here, which is what "convolution kernels restricted to a local window" suggests.

Block (NCHW throughout, ``x`` is ``B x C x H x W``, ``ws`` the region window)::

    n = LN(x)
    r = AvgPool_ws(n)                     # one regional token per ws x ws region of local features
    r = r + DWConv3x3(r)                  # conditional position encoding on the region grid
    r = r + MHSA(LN(r))                   # regional mix: every region attends to every region
    u = n + Broadcast_ws(r)               # every local feature receives the token of its region
    x = x + DropPath(γ1 · DWConv_k(u))    # local mix (k x k depthwise), augmented by regional features
    x = x + DropPath(γ2 · FFN(LN(x)))     # 1x1 conv -> GELU -> [channel shuffle] -> 1x1 conv

* Regional tokens are parameter-free averages of the normalised local features, so the window size is
  a pure hyper-parameter (weights transfer between window sizes) and attention costs
  ``O((HW / ws²)²)`` on tokens only; at 224 px the four stages see 8x8, 4x4, 2x2 and 1x1 regions.
* Sizes that are not multiples of ``ws`` work without a separate code path: the pooling runs in ceil
  mode, which is equivalent to zero-padding to a multiple of ``ws`` and averaging the real pixels only,
  and the broadcast regional map is cropped back to ``H x W``. Nothing depends on data, so
  ``torch.fx.symbolic_trace`` gives a graph whose output is exactly the eager one. Between stages, odd
  sizes are floored by the stride-2 convs as in ConvNeXt; the segmentation nets (``mrl_seg``) pad their
  input to a multiple of 32 instead, so their outputs align with the input.
* The attention branch is the only path between regions further apart than the conditional position
  encoding (one region) plus the ``k x k`` depthwise kernel: with it zeroed, the receptive field of a
  block is local (``tests/zoo/test_mrl.py`` checks both).
* ``ffn_groups > 1`` turns both FFN convolutions into group convolutions with a channel shuffle between
  them (ShuffleNet), dividing the FFN's parameters by the group count; this is where the zoo puts the
  abstract's "group convolutions ... improve dataset-specific generalization".
* Layer scale ``γ`` (ConvNeXt's 1e-6 initialisation) and stochastic depth per block.

Network: a two-conv overlapping stem (3x3 stride 2, GELU, 3x3 stride 2) to stride 4, four stages at
strides 4/8/16/32 with LayerNorm + 2x2 stride-2 conv downsampling between them (ConvNeXt), a final
LayerNorm, and global average pooling + linear classifier.

Variants (depthwise kernel 7, window 7, FFN ratio 4, head dim 32; params and multiply-accumulates at
224x224 with 1000 classes, measured with ``zoo.profile.count_macs``; timm references in brackets):

=========  ==================  =========  ============  ========  =======
name       widths              depths     heads         params    MACs
=========  ==================  =========  ============  ========  =======
mrl_nano   32/64/128/256       2/2/6/2    1/2/4/8       3.42M     0.37G
mrl_tiny   96/192/384/768      2/2/6/2    3/6/12/24     28.58M    3.19G
mrl_small  96/192/384/768      2/2/18/2   3/6/12/24     50.17M    6.04G
mrl_base   128/256/512/1024    2/2/18/2   4/8/16/32     88.54M    10.68G
=========  ==================  =========  ============  ========  =======

[Measured the same way: convnext_tiny 28.59M / 4.46G, swin_tiny_patch4_window7_224 28.29M / 4.49G,
swin_small 49.61M / 8.74G, swin_base 87.77M / 15.43G, resnet50 25.56M / 4.09G.] Widths, depths and
heads are Swin's, so parameters match size for size; MACs are about 30 % lower because attention and
its projections run on regional tokens (1/49 of the positions), not on every pixel.
"""

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, LayerNorm2d, LayerScale2d, get_device_dtype, trunc_normal_
from timm.models import checkpoint_seq, register_model
from timm.models._features import feature_take_indices

from .._arguments import check_count, check_counts, check_finite, check_head, check_positive, check_rate
from .._builder import build_zoo_model
from .._registry import zoo_cfgs
from ..datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
)
from ..layers import factorize_

__all__ = ['MRL', 'MRLBlock', 'MRLStage', 'PadToMultiple', 'RegionalMixer', 'RegionalAttention', 'GroupedFFN']


class RegionalAttention(nn.Module):
    """Multi-head self-attention over the tokens of a ``B x C x Gh x Gw`` region grid (NCHW in and out)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        dd = {'device': device, 'dtype': dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=qkv_bias, **dd)
        self.proj = nn.Conv2d(dim, dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, grid_h, grid_w = x.shape
        # (B, 3C, Gh, Gw) -> 3 x (B, heads, tokens, head_dim)
        qkv = self.qkv(x).reshape(batch, 3, self.num_heads, self.head_dim, grid_h * grid_w).transpose(-1, -2)
        q, k, v = qkv.unbind(1)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(-1, -2).reshape(batch, channels, grid_h, grid_w)
        return self.proj(x)


class RegionalMixer(nn.Module):
    """Pool local features into one token per ``window_size`` region, mix all tokens by attention and
    broadcast each mixed token back over the pixels of its region (cropped to the input size)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.window_size = window_size
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.norm = LayerNorm2d(dim, **dd)
        self.attn = RegionalAttention(dim, num_heads, qkv_bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        ws = self.window_size
        # Ceil mode = zero-pad to a multiple of ws, averaging over the real pixels only.
        regions = F.avg_pool2d(x, ws, ws, ceil_mode=True)
        regions = regions + self.pos_embed(regions)
        regions = regions + self.attn(self.norm(regions))
        return regions.repeat_interleave(ws, dim=2).repeat_interleave(ws, dim=3)[..., :height, :width]


class GroupedFFN(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv; with ``groups > 1`` both are group convs with a channel shuffle between."""

    def __init__(self, dim: int, hidden_dim: int, groups: int = 1, device=None, dtype=None):
        super().__init__()
        if dim % groups or hidden_dim % groups:
            raise ValueError(f'ffn_groups={groups} must divide the width {dim} and the FFN width {hidden_dim}')
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1, groups=groups, **dd)
        self.act = nn.GELU()
        self.shuffle = nn.ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1, groups=groups, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.shuffle(self.act(self.fc1(x))))


class MRLBlock(nn.Module):
    """Regional attention mixed into a local depthwise conv, then an FFN (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        kernel_size: int = 7,
        mlp_ratio: float = 4.0,
        ffn_groups: int = 1,
        qkv_bias: bool = True,
        ls_init_value: float | None = 1e-6,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = LayerNorm2d(dim, **dd)
        self.regional = RegionalMixer(dim, num_heads, window_size, qkv_bias, **dd)
        self.local_mix = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd)
        self.ls1 = LayerScale2d(dim, ls_init_value, **dd) if ls_init_value is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = LayerNorm2d(dim, **dd)
        self.ffn = GroupedFFN(dim, int(dim * mlp_ratio), ffn_groups, **dd)
        self.ls2 = LayerScale2d(dim, ls_init_value, **dd) if ls_init_value is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.norm1(x)
        mixed = self.local_mix(local + self.regional(local))
        x = x + self.drop_path1(self.ls1(mixed))
        return x + self.drop_path2(self.ls2(self.ffn(self.norm2(x))))


class PadToMultiple(nn.Module):
    """Zero-pad the bottom and right so height and width are multiples of the network's total stride,
    so any input size works (28x28 Fashion-MNIST becomes 32x32); a no-op for divisible sizes."""

    def __init__(self, multiple: int):
        super().__init__()
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, -x.shape[-1] % self.multiple, 0, -x.shape[-2] % self.multiple))


class MRLStage(nn.Module):
    """Optional LayerNorm + 2x2 stride-2 conv downsampling, then ``depth`` MRL blocks."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        depth: int,
        num_heads: int,
        downsample: bool,
        drop_path_rates: Sequence[float],
        device=None,
        dtype=None,
        **block_kwargs,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.grad_checkpointing = False
        if downsample:
            self.downsample = nn.Sequential(LayerNorm2d(in_chs, **dd), nn.Conv2d(in_chs, out_chs, 2, stride=2, **dd))
        elif in_chs != out_chs:
            raise ValueError(f'a stage without downsampling keeps its width, got {in_chs} -> {out_chs}')
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            *[MRLBlock(out_chs, num_heads, drop_path=drop_path_rates[i], **block_kwargs, **dd) for i in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MRL(nn.Module):
    """MRL classifier: conv stem to stride 4, four MRL stages at strides 4/8/16/32, norm, pool, linear.

    Args:
        dims: width of each stage.
        depths: blocks per stage.
        num_heads: regional-attention heads per stage.
        window_size: side of the region that becomes one regional token, in pixels of each stage.
        kernel_size: depthwise kernel of the local mixing.
        mlp_ratio: FFN width / block width.
        ffn_groups: group count of the FFN's 1x1 convolutions (1 = dense).
        ls_init_value: layer-scale initial value, ``None`` for no layer scale.
        ranks: per-layer ranks by module name (what ``zoo.compress`` chose); those layers become low-rank
            factorizations (``zoo.layers``).
        device, dtype: where and in which precision the parameters are created (timm's convention).
    """

    def __init__(
        self,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        kernel_size: int = 7,
        mlp_ratio: float = 4.0,
        ffn_groups: int = 1,
        qkv_bias: bool = True,
        ls_init_value: float | None = 1e-6,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = 'avg',
        output_stride: int = 32,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        ranks: Mapping[str, int] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not len(dims) == len(depths) == len(num_heads):
            raise ValueError(
                f'dims {tuple(dims)}, depths {tuple(depths)} and num_heads {tuple(num_heads)} '
                f'must have one entry per stage'
            )
        if output_stride != 32:
            raise ValueError(f'MRL only supports output_stride=32, got {output_stride}')
        check_counts('dims', dims, 2)  # the stem's first conv has dims[0] // 2 channels
        check_counts('depths', depths)
        check_counts('num_heads', num_heads)
        check_count('window_size', window_size)
        check_count('kernel_size', kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be odd (a depthwise conv that keeps the size), got {kernel_size}')
        check_positive('mlp_ratio', mlp_ratio)
        if min(dims) * mlp_ratio < 1:
            raise ValueError(f'mlp_ratio {mlp_ratio} makes an FFN of 0 channels at width {min(dims)}')
        check_count('ffn_groups', ffn_groups)
        if ls_init_value is not None:
            check_finite('ls_init_value', ls_init_value)
        check_head(num_classes, in_chans)
        check_rate('drop_rate', drop_rate)
        check_rate('drop_path_rate', drop_path_rate)
        dd = {'device': device, 'dtype': dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans

        # Registered first: timm's feature extractors replay the modules in registration order.
        self.pad = PadToMultiple(4 * 2 ** (len(dims) - 1))
        # Overlapping stem: finer edges than a 4x4 patchify conv, which dense prediction heads need.
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1, **dd),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1, **dd),
            LayerNorm2d(dims[0], **dd),
        )
        # Stochastic depth grows linearly over blocks; plain Python so meta-device construction works.
        num_blocks = sum(depths)
        rates = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        stages, self.feature_info = [], []
        in_chs, first_block = dims[0], 0
        for i, (dim, depth, heads) in enumerate(zip(dims, depths, num_heads)):
            stages.append(
                MRLStage(
                    in_chs,
                    dim,
                    depth,
                    heads,
                    downsample=i > 0,
                    drop_path_rates=rates[first_block : first_block + depth],
                    window_size=window_size,
                    kernel_size=kernel_size,
                    mlp_ratio=mlp_ratio,
                    ffn_groups=ffn_groups,
                    qkv_bias=qkv_bias,
                    ls_init_value=ls_init_value,
                    **dd,
                )
            )
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f'stages.{i}'))
            in_chs, first_block = dim, first_block + depth
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs
        self.norm = LayerNorm2d(in_chs, **dd)
        self.head = ClassifierHead(in_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head_hidden_size = self.head.num_features
        if ranks:
            factorize_(self, ranks, init='random')
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)'
            if coarse
            else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none) on the model's device and dtype; the pooling
        changes only when ``global_pool`` is given."""
        check_count('num_classes', num_classes, 0)
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs at strides 4/8/16/32 (``indices`` as in timm: last n if int, else positions).

        ``norm`` applies the final norm to the last stage's output; without ``intermediates_only`` the
        result is ``(forward_features(x), intermediates)``.
        """
        if output_fmt != 'NCHW':
            raise ValueError('MRL features are NCHW, got output_fmt=' + output_fmt)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_index = len(self.stages) - 1
        stop_index = max_index if stop_early else last_index
        intermediates = []
        x = self.stem(self.pad(x))
        for index, stage in enumerate(self.stages):  # no slice of the stages: TorchScript unrolls this loop
            if index <= stop_index:
                x = stage(x)
                if index in take_indices:
                    intermediates.append(self.norm(x) if norm and index == last_index else x)
        if intermediates_only:
            return intermediates
        # The final norm belongs to the last stage; an early stop returns that stage's raw output.
        return (self.norm(x) if stop_index == last_index else x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last wanted intermediate (and the norm / head) for a backbone."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        pruned_end = max_index < len(self.feature_info) - 1
        if prune_norm or pruned_end:
            self.norm = nn.Identity()  # sized for the last stage only
        if pruned_end:
            self.num_features = self.feature_info[max_index]['num_chs']
        if prune_head or pruned_end:
            self.head.reset(0, '', in_features=self.num_features)
            self.num_classes = 0
            self.head_hidden_size = self.head.num_features
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.stem(self.pad(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_mrl(variant: str, pretrained: bool = False, **kwargs) -> MRL:
    return build_zoo_model(
        MRL, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True), **kwargs
    )


# What a published config.json may set: the architecture, never where weights or code come from.
CONFIG_ARGS = (
    'dims',
    'depths',
    'num_heads',
    'window_size',
    'kernel_size',
    'mlp_ratio',
    'ffn_groups',
    'qkv_bias',
    'ls_init_value',
    'num_classes',
    'in_chans',
    'global_pool',
    'output_stride',
    'drop_rate',
    'drop_path_rate',
    'ranks',
)


def _cfg(**kwargs) -> dict:
    return (
        dict(
            num_classes=1000,
            input_size=(3, 224, 224),
            pool_size=(7, 7),
            crop_pct=0.9,
            interpolation='bicubic',
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            first_conv='stem.0',
            classifier='head.fc',
            license='apache-2.0',
            paper_name='MRL: Learning to Mix with Attention and Convolutions',
            paper_ids=('arXiv:2208.13975',),
            notes=("Block designed by this zoo from the paper abstract; the authors' code is not public.",),
        )
        | kwargs
    )


default_cfgs = zoo_cfgs(
    {
        'mrl_nano': _cfg(),
        'mrl_nano_fmnist': _cfg(
            num_classes=10,
            input_size=(1, 28, 28),
            pool_size=(1, 1),
            crop_pct=1.0,
            interpolation='bilinear',
            mean=FASHION_MNIST_MEAN,
            std=FASHION_MNIST_STD,
            label_names=FASHION_MNIST_CLASSES,
        ),
        'mrl_tiny': _cfg(),
        'mrl_small': _cfg(),
        'mrl_base': _cfg(),
    },
    config_args=CONFIG_ARGS,
)


@register_model
def mrl_nano(pretrained: bool = False, **kwargs) -> MRL:
    """MRL-Nano: widths 32-256, depths 2/2/6/2 (3.42M params, 0.37 GMACs at 224)."""
    model_args = dict(dims=(32, 64, 128, 256), depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8))
    return _create_mrl('mrl_nano', pretrained, **dict(model_args, **kwargs))


@register_model
def mrl_tiny(pretrained: bool = False, **kwargs) -> MRL:
    """MRL-Tiny: Swin-T widths and depths (28.58M params, 3.19 GMACs at 224)."""
    model_args = dict(dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
    return _create_mrl('mrl_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def mrl_small(pretrained: bool = False, **kwargs) -> MRL:
    """MRL-Small: Swin-S widths and depths (50.17M params, 6.04 GMACs at 224)."""
    model_args = dict(dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
    return _create_mrl('mrl_small', pretrained, **dict(model_args, **kwargs))


@register_model
def mrl_base(pretrained: bool = False, **kwargs) -> MRL:
    """MRL-Base: Swin-B widths and depths (88.54M params, 10.68 GMACs at 224)."""
    model_args = dict(dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
    return _create_mrl('mrl_base', pretrained, **dict(model_args, **kwargs))


@register_model
def mrl_nano_fmnist(pretrained: bool = False, **kwargs) -> MRL:
    """MRL-Nano for 28×28 grey Fashion-MNIST (padded to 32): 2×2-pixel regions so the first stages still
    mix several regional tokens (16 at stride 4, 4 at stride 8)."""
    model_args = dict(dims=(32, 64, 128, 256), depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), window_size=2)
    return _create_mrl('mrl_nano_fmnist', pretrained, **dict(model_args, **kwargs))
