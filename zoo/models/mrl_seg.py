"""MRL nuclei segmentation nets: the MRL encoder with HoVer-Net-style NP / HV / TP branches.

The MRL abstract reports DICE on Kumar, CoNSeP and CPM-17, the HoVer-Net benchmark, but not its
decoder; this zoo pairs the MRL encoder (``zoo.models.mrl``) with HoVer-Net's outputs, targets, loss
(``zoo.hovernet.losses.hovernet_loss``) and watershed post-processing (``zoo.hovernet.postprocess``).

Architecture (``x`` is ``B x 3 x H x W`` RGB in ``[0, 1]``, as ``NucleiPatchDataset`` yields)::

    x = (x - mean) / std, replicate-padded to a multiple of 32
    image path: 3x3 conv-BN-ReLU at stride 1, 3x3 stride-2 conv-BN-ReLU at stride 2
    encoder:    MRL stem + 4 stages -> features at strides 4, 8, 16, 32
    trunk:      U-Net up-steps 32 -> 16 -> 8 -> 4, each: bilinear x2, concat the encoder skip,
                two 3x3 conv-BN-ReLU                                      (shared by all branches)
    branches:   per output (NP, HV, optional TP) up-steps 4 -> 2 -> 1 with the image-path skips,
                each two separable 3x3 conv-BN-ReLU, then a 1x1 conv head
    outputs are cropped back to H x W

* Like HoVer-Net, every output has its own decoder at high resolution, where boundaries are decided;
  unlike HoVer-Net the coarse part of the decoder (strides 32 to 4) is shared, and the high-resolution
  convolutions are depthwise-separable, which keeps the decoder cheaper than the encoder on CPU.
* Unlike HoVer-Net (valid convolutions: 270 px in, 80 px out), every convolution is padded, so the
  output has the input's size. Pixels near a patch border see less context; tiled inference
  (``zoo.segment.predict_maps``) overlaps tiles and down-weights their borders instead of cropping.
* The full-resolution image path gives the branches edges the stride-4 encoder cannot resolve
  (nuclei are 10-30 px across at 40x).
* Normalisation is inside the network (HoVer-Net also scales by 1/255 in-network), with the
  ``mean``/``std`` of the model's pretrained cfg (a published cfg's own values when loaded from one), so
  callers feed plain ``[0, 1]`` images.

Outputs: ``{'np': B x 2 x H x W logits, 'hv': B x 2 x H x W (x then y), 'tp': B x T x H x W logits}``,
``tp`` only when ``num_types`` (timm's ``num_classes``, background included) is non-zero.

Variants (params and MACs at 256x256 without a TP branch, measured with ``zoo.profile.count_macs``):

================  ==========  =========================  ========  =======
name              encoder     decoder widths (s16..s1)   params    MACs
================  ==========  =========================  ========  =======
mrl_seg_nano      mrl_nano    128/64/32/32/16            3.96M     1.39G
mrl_seg_tiny      mrl_tiny    256/128/64/32/16           31.91M    6.88G
mrl_seg_small     mrl_small   384/192/96/48/24           56.41M    13.01G
================  ==========  =========================  ========  =======

The encoder's state-dict keys are those of the MRL classifier under ``encoder.`` (minus its norm and
head), so ImageNet weights of ``mrl_*`` can initialise it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ConvNormAct, SeparableConvNormAct
from timm.models import register_model, resolve_pretrained_cfg

from .._builder import build_zoo_model
from .._registry import zoo_cfgs
from .mrl import CONFIG_ARGS as MRL_CONFIG_ARGS
from .mrl import MRL

__all__ = ['MRLSeg', 'DecoderBlock', 'OUTPUT_STRIDE']

OUTPUT_STRIDE = 32  # inputs are padded to a multiple of the encoder's total stride


class DecoderBlock(nn.Module):
    """Bilinear x2 upsampling, concatenation with the skip, two 3x3 conv-BN-ReLU (optionally separable)."""

    def __init__(self, in_chs: int, skip_chs: int, out_chs: int, separable: bool = False):
        super().__init__()
        conv = SeparableConvNormAct if separable else ConvNormAct
        self.conv1 = conv(in_chs + skip_chs, out_chs, 3)
        self.conv2 = conv(out_chs, out_chs, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode='bilinear', align_corners=False)
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class _Branch(nn.Module):
    """One output's high-resolution decoder: stride 4 -> 2 -> 1 with image-path skips, then a 1x1 head."""

    def __init__(self, in_chs: int, half_chs: int, full_chs: int, out_chs: int):
        super().__init__()
        self.up_half = DecoderBlock(in_chs, half_chs, half_chs, separable=True)
        self.up_full = DecoderBlock(half_chs, full_chs, full_chs, separable=True)
        self.head = nn.Conv2d(full_chs, out_chs, 1)

    def forward(self, x: torch.Tensor, half_res: torch.Tensor, full_res: torch.Tensor) -> torch.Tensor:
        return self.head(self.up_full(self.up_half(x, half_res), full_res))


class MRLSeg(nn.Module):
    """MRL encoder + U-Net trunk + HoVer-Net NP / HV (/ TP) branches, full-resolution outputs.

    Args:
        dims, depths, num_heads: the MRL encoder's stage widths, depths and attention heads.
        decoder_dims: decoder widths at strides 16, 8, 4 (shared trunk) and 2, 1 (per branch and image path).
        num_classes: nuclear types of the TP branch, background included; 0 = no TP branch.
        in_chans: input channels; ``mean``/``std`` must have one entry per channel.
        mean, std: normalisation applied inside the network to ``[0, 1]`` inputs.
        **encoder_kwargs: further ``MRL`` arguments (``drop_path_rate``, ``window_size``, ``ffn_groups``...).
    """

    def __init__(
        self,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        decoder_dims: Sequence[int] = (256, 128, 64, 32, 16),
        num_classes: int = 0,
        in_chans: int = 3,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        **encoder_kwargs,
    ):
        super().__init__()
        if len(decoder_dims) != 5:
            raise ValueError(f'decoder_dims needs widths at strides 16, 8, 4, 2, 1; got {tuple(decoder_dims)}')
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f'mean {tuple(mean)} and std {tuple(std)} need one entry per input channel ({in_chans})')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = decoder_dims[-1]  # channels each output head reads
        # Non-persistent: part of the architecture's cfg, not of the weights.
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

        s16, s8, s4, s2, s1 = decoder_dims
        self.full_res = ConvNormAct(in_chans, s1, 3)
        self.half_res = ConvNormAct(s1, s2, 3, stride=2)
        self.encoder = MRL(dims, depths, num_heads, in_chans=in_chans, num_classes=0, global_pool='', **encoder_kwargs)
        self.encoder.prune_intermediate_layers((0, 1, 2, 3), prune_norm=True, prune_head=True)
        self.trunk = nn.ModuleList(
            [
                DecoderBlock(dims[3], dims[2], s16),
                DecoderBlock(s16, dims[1], s8),
                DecoderBlock(s8, dims[0], s4),
            ]
        )
        outputs = {'np': 2, 'hv': 2} | ({'tp': num_classes} if num_classes else {})
        self.branches = nn.ModuleDict({name: _Branch(s4, s2, s1, chs) for name, chs in outputs.items()})

    @property
    def num_types(self) -> int:
        return self.num_classes

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        x = (x - self.mean) / self.std
        x = F.pad(x, (0, -width % OUTPUT_STRIDE, 0, -height % OUTPUT_STRIDE), mode='replicate')
        full_res = self.full_res(x)
        half_res = self.half_res(full_res)
        *skips, x = self.encoder.forward_intermediates(x, intermediates_only=True)
        for block, skip in zip(self.trunk, reversed(skips)):
            x = block(x, skip)
        return {name: branch(x, half_res, full_res)[..., :height, :width] for name, branch in self.branches.items()}


def _create_mrl_seg(variant: str, pretrained: bool = False, **kwargs) -> MRLSeg:
    # `num_types` is the task's name for what timm passes around as `num_classes` (the TP channels).
    if 'num_types' in kwargs:
        num_types = kwargs.pop('num_types') or 0
        if kwargs.get('num_classes', num_types) != num_types:
            raise ValueError(f'num_types={num_types} and num_classes={kwargs["num_classes"]} disagree')
        kwargs['num_classes'] = num_types
    # The network normalises its own input, with the statistics its (possibly published) cfg states.
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
    )
    kwargs.setdefault('mean', cfg.mean)
    kwargs.setdefault('std', cfg.std)
    return build_zoo_model(MRLSeg, variant, pretrained, **kwargs)


def _cfg(**kwargs) -> dict:
    # `classifier` lists the TP branch (skipped whole when weights without one are loaded into a model
    # with one) and its head (dropped by timm when the number of types changes).
    return (
        dict(
            num_classes=0,
            input_size=(3, 256, 256),
            pool_size=None,
            crop_pct=1.0,
            interpolation='bilinear',
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            first_conv=('encoder.stem.0', 'full_res.conv'),
            classifier=('branches.tp', 'branches.tp.head'),
            license='apache-2.0',
            paper_name='MRL: Learning to Mix with Attention and Convolutions',
            paper_ids=('arXiv:2208.13975', 'arXiv:1812.06499'),
            notes=('MRL encoder with HoVer-Net NP/HV/TP outputs; decoder designed by this zoo.',),
        )
        | kwargs
    )


default_cfgs = zoo_cfgs(
    {
        'mrl_seg_nano': _cfg(),
        'mrl_seg_tiny': _cfg(),
        'mrl_seg_small': _cfg(),
    },
    # What a published config.json may set: the architecture, never where weights or code come from.
    config_args=(*MRL_CONFIG_ARGS, 'decoder_dims', 'mean', 'std'),
)


@register_model
def mrl_seg_nano(pretrained: bool = False, **kwargs) -> MRLSeg:
    """MRL-Nano encoder, light decoder (3.96M params, 1.39 GMACs at 256 without TP)."""
    model_args = dict(
        dims=(32, 64, 128, 256), depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), decoder_dims=(128, 64, 32, 32, 16)
    )
    return _create_mrl_seg('mrl_seg_nano', pretrained, **dict(model_args, **kwargs))


@register_model
def mrl_seg_tiny(pretrained: bool = False, **kwargs) -> MRLSeg:
    """MRL-Tiny encoder (31.91M params, 6.88 GMACs at 256 without TP)."""
    model_args = dict(
        dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), decoder_dims=(256, 128, 64, 32, 16)
    )
    return _create_mrl_seg('mrl_seg_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def mrl_seg_small(pretrained: bool = False, **kwargs) -> MRLSeg:
    """MRL-Small encoder (56.41M params, 13.01 GMACs at 256 without TP)."""
    model_args = dict(
        dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), decoder_dims=(384, 192, 96, 48, 24)
    )
    return _create_mrl_seg('mrl_seg_small', pretrained, **dict(model_args, **kwargs))
