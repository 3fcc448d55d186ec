"""DeiT (Touvron et al. 2021) with the Cuttlefish factorization: each block's fused ``attn.qkv``,
``mlp.fc1`` and ``mlp.fc2`` may be low-rank; ``attn.proj``, the patch embedding, the class and position
tokens and the head stay dense, as in the authors' DeiT code.

The transformer itself is timm's ``VisionTransformer`` (this family adds only the factorization),
built with ``dynamic_img_size=True`` so any input size divisible by 16 works.
"""

import inspect
from collections.abc import Mapping

from timm.layers import to_2tuple
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from .._arguments import check_count, check_counts, check_finite, check_head, check_positive, check_rate
from .._builder import build_zoo_model
from .._registry import zoo_cfgs
from ..layers import factorize_, resolve_ranks

__all__ = ['LowRankDeiT']

_VIT_DEFAULTS = {name: p.default for name, p in inspect.signature(VisionTransformer).parameters.items()}
_VIT_RATES = ('drop_rate', 'pos_drop_rate', 'patch_drop_rate', 'proj_drop_rate', 'attn_drop_rate', 'drop_path_rate')


def _check_vit_arguments(kwargs: Mapping) -> None:
    """timm's VisionTransformer arguments that would otherwise fail at the first forward (or in an assert)."""
    args = {**_VIT_DEFAULTS, **kwargs}
    check_head(args['num_classes'], args['in_chans'])
    img_size, patch_size = to_2tuple(args['img_size']), to_2tuple(args['patch_size'])
    check_counts('img_size', img_size)
    check_counts('patch_size', patch_size)
    if not args['dynamic_img_pad'] and any(side % patch for side, patch in zip(img_size, patch_size)):
        raise ValueError(
            f'img_size {args["img_size"]} is not a multiple of patch_size {args["patch_size"]}; '
            f'give a multiple, or dynamic_img_pad=True to pad the input'
        )
    for name in ('embed_dim', 'depth', 'num_heads'):
        check_count(name, args[name])
    if args['embed_dim'] % args['num_heads']:
        raise ValueError(f'embed_dim {args["embed_dim"]} is not divisible by num_heads {args["num_heads"]}')
    check_positive('mlp_ratio', args['mlp_ratio'])
    if args['init_values'] is not None:
        check_finite('init_values', args['init_values'])
    for name in _VIT_RATES:
        check_rate(name, args[name])


class LowRankDeiT(VisionTransformer):
    """timm's VisionTransformer plus ``ranks`` (per layer) or ``rank_ratio`` (on qkv, fc1, fc2)."""

    def __init__(self, ranks: Mapping[str, int] | None = None, rank_ratio: float | None = None, **kwargs):
        kwargs.setdefault('dynamic_img_size', True)
        _check_vit_arguments(kwargs)
        super().__init__(**kwargs)
        ranks = resolve_ranks(self, ranks, rank_ratio)
        if ranks:
            factorize_(self, ranks, init='random')
            self.init_weights()  # timm's ViT init (trunc-normal) for the new factors too

    def low_rank_candidates(self) -> list[str]:
        return [f'blocks.{i}.{name}' for i in range(len(self.blocks)) for name in ('attn.qkv', 'mlp.fc1', 'mlp.fc2')]


def _cfg(**kwargs) -> dict:
    return (
        dict(
            num_classes=1000,
            input_size=(3, 224, 224),
            pool_size=None,
            crop_pct=0.875,
            interpolation='bicubic',
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            first_conv='patch_embed.proj',
            classifier='head',
            fixed_input_size=False,
            license='apache-2.0',
            paper_name='Cuttlefish: Low-Rank Model Training without All the Tuning',
            paper_ids=('arXiv:2305.02538', 'arXiv:2012.12877'),
        )
        | kwargs
    )


default_cfgs = zoo_cfgs(
    {
        'cf_deit_small': _cfg(),
        'cf_deit_base': _cfg(),
    },
    # What a published config.json may set: the architecture, never where weights or code come from
    # (VisionTransformer's layer and function arguments are left out).
    config_args=(
        'img_size',
        'patch_size',
        'in_chans',
        'num_classes',
        'global_pool',
        'embed_dim',
        'depth',
        'num_heads',
        'mlp_ratio',
        'qkv_bias',
        'qk_norm',
        'init_values',
        'class_token',
        'reg_tokens',
        'no_embed_class',
        'pre_norm',
        'fc_norm',
        'dynamic_img_size',
        'dynamic_img_pad',
        'drop_rate',
        'pos_drop_rate',
        'patch_drop_rate',
        'proj_drop_rate',
        'attn_drop_rate',
        'drop_path_rate',
        'ranks',
        'rank_ratio',
    ),
)


def _create_deit(variant: str, pretrained: bool = False, **kwargs) -> LowRankDeiT:
    return build_zoo_model(
        LowRankDeiT, variant, pretrained, feature_cfg=dict(out_indices=3, feature_cls='getter'), **kwargs
    )


@register_model
def cf_deit_small(pretrained: bool = False, **kwargs) -> LowRankDeiT:
    """DeiT-Small/16 (22M params), full-rank unless ``ranks``/``rank_ratio`` are given."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_deit('cf_deit_small', pretrained, **dict(model_args, **kwargs))


@register_model
def cf_deit_base(pretrained: bool = False, **kwargs) -> LowRankDeiT:
    """DeiT-Base/16 (86M params), full-rank unless ``ranks``/``rank_ratio`` are given."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_deit('cf_deit_base', pretrained, **dict(model_args, **kwargs))
