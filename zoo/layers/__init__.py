"""Layers shared by the zoo's model families."""

from .low_rank import (
    LowRankConv2d,
    LowRankLayer,
    LowRankLinear,
    add_frobenius_decay_,
    factorizable_layers,
    factorization_is_smaller,
    factorize_,
    frobenius_norm_sq,
    full_rank,
    low_rank_like,
    resolve_ranks,
    scaled_rank,
    select_layers,
    stable_rank,
    svd_factors,
    weight_matrix,
)

__all__ = [
    'LowRankConv2d',
    'LowRankLayer',
    'LowRankLinear',
    'add_frobenius_decay_',
    'factorizable_layers',
    'factorization_is_smaller',
    'factorize_',
    'frobenius_norm_sq',
    'full_rank',
    'low_rank_like',
    'resolve_ranks',
    'scaled_rank',
    'select_layers',
    'stable_rank',
    'svd_factors',
    'weight_matrix',
]
