"""VGG-19 with BatchNorm for 32×32 inputs (the CIFAR network Cuttlefish and Pufferfish factorize).

16 conv-BN-ReLU layers in five stages (64, 128, 256, 512, 512 channels; 2, 2, 4, 4, 4 convs), a 2×2
max-pool before stages 2–5 and after the last one, and one linear classifier on the 512-d vector.
Full-rank by default; ``ranks`` / ``rank_ratio`` / ``low_rank_bn`` factorize convolutions as in
``cf_resnet``. The paper keeps conv1–4 dense and factorizes conv5–16 (``low_rank_candidates()``).
"""

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from timm.models import checkpoint_seq, register_model

from .._arguments import check_counts, check_head, check_rate
from .._builder import build_zoo_model
from .._registry import zoo_cfgs
from ..datasets import CIFAR10_MEAN, CIFAR10_STD
from ..layers import factorize_, resolve_ranks
from ._pooled import PooledClassifier

__all__ = ['VGG']


class ConvBnAct(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(out_chs, device=device, dtype=dtype)
        self.act = nn.ReLU(inplace=True)


class VGG(PooledClassifier):
    """VGG for small images; the outputs of ``stage1`` to ``stage5`` are the features at strides 1, 2, 4, 8, 16.

    ``widths`` and ``depths`` give each of the five stages' channels and conv count; ``device``/``dtype``
    place the parameters (timm's convention).
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512, 512),
        depths: Sequence[int] = (2, 2, 4, 4, 4),
        num_classes: int = 10,
        in_chans: int = 3,
        global_pool: str = 'avg',
        drop_rate: float = 0.0,
        ranks: Mapping[str, int] | None = None,
        rank_ratio: float | None = None,
        low_rank_bn: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if len(widths) != 5 or len(depths) != 5:
            raise ValueError(f'VGG has five stages: got widths {tuple(widths)} and depths {tuple(depths)}')
        check_counts('widths', widths)
        check_counts('depths', depths)
        check_head(num_classes, in_chans)
        check_rate('drop_rate', drop_rate)
        dd = {'device': device, 'dtype': dtype}
        self.grad_checkpointing = False
        self.in_chans = in_chans
        self.feature_info = []
        in_chs = in_chans
        # Modules are registered in execution order: timm's feature extractor replays them in that order.
        for i, (width, depth) in enumerate(zip(widths, depths)):
            layers = [nn.MaxPool2d(2)] if i else []
            for _ in range(depth):
                layers.append(ConvBnAct(in_chs, width, **dd))
                in_chs = width
            self.add_module(f'stage{i + 1}', nn.Sequential(*layers))
            self.feature_info.append(dict(num_chs=width, reduction=2**i, module=f'stage{i + 1}'))
        self.final_pool = nn.MaxPool2d(2)
        self.num_features = in_chs
        self._init_head(num_classes, global_pool, drop_rate, **dd)

        ranks = resolve_ranks(self, ranks, rank_ratio)
        if ranks:
            factorize_(self, ranks, init='random', mid_norm=low_rank_bn)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def low_rank_candidates(self) -> list[str]:
        """conv5–conv16: every conv from the third stage on (the paper's choice)."""
        names = []
        for i in range(1, 6):
            stage = getattr(self, f'stage{i}')
            names += [f'stage{i}.{j}.conv' for j, m in enumerate(stage) if isinstance(m, ConvBnAct)]
        return names[4:]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^stage1\.0', blocks=r'^stage(\d+)' if coarse else r'^stage(\d+)\.(\d+)')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in (self.stage1, self.stage2, self.stage3, self.stage4, self.stage5):
                x = checkpoint_seq(stage, x)
        else:
            x = self.stage5(self.stage4(self.stage3(self.stage2(self.stage1(x)))))
        return self.final_pool(x)


default_cfgs = zoo_cfgs(
    {
        'cf_vgg19': dict(
            num_classes=10,
            input_size=(3, 32, 32),
            pool_size=(1, 1),
            crop_pct=1.0,
            interpolation='bilinear',
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            first_conv='stage1.0.conv',
            classifier='fc',
            license='apache-2.0',
            paper_name='Cuttlefish: Low-Rank Model Training without All the Tuning',
            paper_ids=('arXiv:2305.02538', 'arXiv:1409.1556'),
        ),
    },
    # What a published config.json may set: the architecture, never where weights or code come from.
    config_args=(
        'widths',
        'depths',
        'num_classes',
        'in_chans',
        'global_pool',
        'drop_rate',
        'ranks',
        'rank_ratio',
        'low_rank_bn',
    ),
)


@register_model
def cf_vgg19(pretrained: bool = False, **kwargs) -> VGG:
    """VGG-19-BN for 32×32 CIFAR images (20.04M params at 10 classes), full-rank unless ``ranks``/``rank_ratio``."""
    return build_zoo_model(VGG, 'cf_vgg19', pretrained, **kwargs)
