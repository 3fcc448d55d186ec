"""ResNets that Cuttlefish factorizes: CIFAR-style ResNet-18 and ImageNet ResNet-50 / Wide-ResNet-50-2.

Every model here is full-rank by default, which is the baseline and the network Cuttlefish trains
before its switch. ``ranks={'layer3.0.conv1': 40, ...}`` (per-layer ranks, what a Cuttlefish run
chooses and what published weights record) or ``rank_ratio=0.25`` (uniform, Pufferfish-style, applied
to ``low_rank_candidates()``) build the factorized network; ``low_rank_bn=True`` puts a BatchNorm
between the two factors.

CIFAR stem (He et al. 2016 §4.2 as used by Cuttlefish): 3×3 conv, stride 1, no max-pool, so features
are at strides 1/2/4/8. ImageNet stem: 7×7 stride-2 conv and max-pool, strides 4/8/16/32.
"""

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from timm.models import checkpoint_seq, register_model

from .._arguments import check_count, check_counts, check_head, check_rate
from .._builder import build_zoo_model
from .._registry import zoo_cfgs
from ..datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
)
from ..layers import factorize_, resolve_ranks
from ._pooled import PooledClassifier

__all__ = ['ResNet', 'BasicBlock', 'Bottleneck']


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, **dd) -> list[nn.Module]:
    return [
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False, **dd),
        nn.BatchNorm2d(out_chs, **dd),
    ]


def _shortcut(in_chs: int, out_chs: int, stride: int, **dd) -> nn.Module:
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(in_chs, out_chs, 1, stride, **dd))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, base_width: int = 64, device=None, dtype=None):
        super().__init__()
        if base_width != 64:
            raise ValueError('BasicBlock only supports base_width=64')
        dd = {'device': device, 'dtype': dtype}
        self.conv1, self.bn1 = _conv_bn(in_chs, planes, 3, stride, **dd)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, **dd)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_chs, planes, stride, **dd)

    def zero_init_last(self):
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, base_width: int = 64, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        width = planes * base_width // 64
        out_chs = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(in_chs, width, 1, **dd)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride, **dd)  # stride on the 3×3 (ResNet v1.5)
        self.conv3, self.bn3 = _conv_bn(width, out_chs, 1, **dd)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_chs, out_chs, stride, **dd)

    def zero_init_last(self):
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.downsample(x))


_BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


class ResNet(PooledClassifier):
    """ResNet with a CIFAR or ImageNet stem and four stages whose convolutions may be low-rank factorized.

    Args:
        block: ``'basic'`` or ``'bottleneck'``.
        layers: blocks in each of the four stages.
        widths: planes in each of the four stages (bottleneck outputs are 4× this).
        stem: ``'cifar'`` (3×3 stride 1, no pool) or ``'imagenet'`` (7×7 stride 2 + max-pool).
        base_width: bottleneck width per 64 planes (128 for Wide-ResNet-50-2).
        ranks: per-layer ranks by module name; those layers become ``LowRankConv2d``.
        rank_ratio: rank = round(ratio · full rank) for every ``low_rank_candidates()`` layer not in ``ranks``.
        low_rank_bn: BatchNorm between the two factors of every factorized layer.
        device, dtype: where and in which precision the parameters are created (timm's convention).
    """

    def __init__(
        self,
        block: str = 'basic',
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = 'cifar',
        base_width: int = 64,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = 'avg',
        drop_rate: float = 0.0,
        zero_init_last: bool = True,
        ranks: Mapping[str, int] | None = None,
        rank_ratio: float | None = None,
        low_rank_bn: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if stem not in ('cifar', 'imagenet'):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f'ResNet has four stages: got layers {tuple(layers)} and widths {tuple(widths)}')
        check_counts('layers', layers)
        check_counts('widths', widths)
        check_count('base_width', base_width)
        if block == 'bottleneck' and min(widths) * base_width < 64:
            raise ValueError(f'widths {tuple(widths)} at base_width {base_width} make bottlenecks of 0 channels')
        check_head(num_classes, in_chans)
        check_rate('drop_rate', drop_rate)
        dd = {'device': device, 'dtype': dtype}
        block_cls = _BLOCKS[block]
        self.grad_checkpointing = False
        self.stem_type = stem
        self.in_chans = in_chans

        # Modules are registered in execution order: timm's feature extractor replays them in that order.
        stem_chs = widths[0]
        cifar = stem == 'cifar'
        kernel_size, stride = (3, 1) if cifar else (7, 2)
        self.conv1, self.bn1 = _conv_bn(in_chans, stem_chs, kernel_size, stride, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
        self.feature_info = [dict(num_chs=stem_chs, reduction=stride, module='act1')]
        reduction = 1 if cifar else 4

        in_chs = stem_chs
        for i, (depth, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = []
            for j in range(depth):
                blocks.append(block_cls(in_chs, planes, stride if j == 0 else 1, base_width, **dd))
                in_chs = planes * block_cls.expansion
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f'layer{i + 1}'))
        self.num_features = in_chs
        self._init_head(num_classes, global_pool, drop_rate, **dd)

        ranks = resolve_ranks(self, ranks, rank_ratio)
        if ranks:
            factorize_(self, ranks, init='random', mid_norm=low_rank_bn)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, 'zero_init_last'):
                    m.zero_init_last()

    def low_rank_candidates(self) -> list[str]:
        """The convolutions the Cuttlefish paper factorizes (its hand-picked "K" split).

        CIFAR: every block conv from stage 2 on, shortcuts dense (12 convs for ResNet-18).
        ImageNet: every conv of the last stage including its downsample (10 for ResNet-50).
        ``training.cuttlefish`` can instead choose layers by timing them on the target device.
        """
        first_stage = 2 if self.stem_type == 'cifar' else 4
        names = []
        for i in range(first_stage, 5):
            for j, block in enumerate(getattr(self, f'layer{i}')):
                names += [f'layer{i}.{j}.{c}' for c in ('conv1', 'conv2', 'conv3') if hasattr(block, c)]
                if self.stem_type == 'imagenet' and isinstance(block.downsample, nn.Sequential):
                    names.append(f'layer{i}.{j}.downsample.0')
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^conv1|bn1|maxpool', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
                x = checkpoint_seq(stage, x)
            return x
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _create_resnet(variant: str, pretrained: bool = False, **kwargs) -> ResNet:
    return build_zoo_model(ResNet, variant, pretrained, **kwargs)


_CIFAR = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD)
_PAPERS = dict(
    paper_name='Cuttlefish: Low-Rank Model Training without All the Tuning',
    paper_ids=('arXiv:2305.02538', 'arXiv:1512.03385'),
)


# What a published config.json may set: the architecture, never where weights or code come from.
_CONFIG_ARGS = (
    'block',
    'layers',
    'widths',
    'stem',
    'base_width',
    'num_classes',
    'in_chans',
    'global_pool',
    'drop_rate',
    'zero_init_last',
    'ranks',
    'rank_ratio',
    'low_rank_bn',
)


def _cfg(**kwargs) -> dict:
    return (
        dict(
            num_classes=1000,
            input_size=(3, 224, 224),
            pool_size=(7, 7),
            crop_pct=0.875,
            interpolation='bilinear',
            first_conv='conv1',
            classifier='fc',
            license='apache-2.0',
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            **_PAPERS,
        )
        | kwargs
    )


def _cifar_cfg(**kwargs) -> dict:
    return _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0, **_CIFAR) | kwargs


def _fmnist_cfg(**kwargs) -> dict:
    return (
        _cfg(
            num_classes=10,
            input_size=(1, 28, 28),
            pool_size=(4, 4),
            crop_pct=1.0,
            mean=FASHION_MNIST_MEAN,
            std=FASHION_MNIST_STD,
            label_names=FASHION_MNIST_CLASSES,
        )
        | kwargs
    )


default_cfgs = zoo_cfgs(
    {
        'cf_resnet18': _cifar_cfg(),
        'cf_resnet18_fmnist': _fmnist_cfg(),
        'cf_resnet50': _cfg(),
        'cf_wide_resnet50_2': _cfg(),
    },
    config_args=_CONFIG_ARGS,
)


@register_model
def cf_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR ResNet-18 (11.17M params at 10 classes), full-rank unless ``ranks``/``rank_ratio`` are given."""
    model_args = dict(block='basic', layers=(2, 2, 2, 2), stem='cifar')
    return _create_resnet('cf_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def cf_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet ResNet-50 (v1.5), full-rank unless ``ranks``/``rank_ratio`` are given."""
    model_args = dict(block='bottleneck', layers=(3, 4, 6, 3), stem='imagenet')
    return _create_resnet('cf_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def cf_wide_resnet50_2(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet Wide-ResNet-50-2 (bottlenecks twice as wide), full-rank unless ``ranks``/``rank_ratio`` are given."""
    model_args = dict(block='bottleneck', layers=(3, 4, 6, 3), stem='imagenet', base_width=128)
    return _create_resnet('cf_wide_resnet50_2', pretrained, **dict(model_args, **kwargs))


@register_model
def cf_resnet18_fmnist(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-18 at 1/4 width for 28×28 grey Fashion-MNIST (0.70M params full-rank): small
    enough to train on two CPU cores; its published weights record the ranks Cuttlefish chose."""
    model_args = dict(block='basic', layers=(2, 2, 2, 2), widths=(16, 32, 64, 128), stem='cifar')
    return _create_resnet('cf_resnet18_fmnist', pretrained, **dict(model_args, **kwargs))
