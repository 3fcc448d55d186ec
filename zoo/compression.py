"""Compressing a trained network after the fact: Cuttlefish's low-rank factorization without its training history.

:func:`compress` measures the stable rank of every candidate layer's trained weight (Cuttlefish's measure,
``sr(W) = floor(‖W‖²_F / σ_max²)``), chooses a rank for each, keeps a layer dense where its factorization would not
be smaller or, timed on the model's device, not faster, and replaces the others by the truncated SVD of their trained
weights (``zoo.layers.factorize_``). What is lost is recovered by a short distillation from the dense network
(``zoo compress``, in the application); :func:`plan_compression` only decides.

Rank rules (``ranks=``):

* ``'stable'``: the stable rank itself (the authors' ``vanilla-stable-rank``);
* ``'scaled'``: Cuttlefish's ``min(full, ceil(ξ·sr))`` with ``ξ = full / sr(G)``, ``G`` an i.i.d. Gaussian matrix of
  the layer's shape (seeded). Cuttlefish measures ξ on the network at initialisation, of which a trained network
  keeps no record; for i.i.d. entries, which is how the zoo's and timm's initialisers draw them, the stable rank
  depends on the shape alone. So a layer whose spectrum is still that of a random matrix keeps its full rank;
* a number in ``(0, 1]``: that fraction of each layer's full rank (Pufferfish's fixed ratio);
* a mapping ``{layer: rank}``.

``target_macs=R`` then scales the rule's ranks by the largest common factor ``t`` (each layer ``ceil(t·rank)``, at
least 1, at most full rank) whose network needs at most ``1/R`` of the dense network's multiply-accumulates, so the
layers keep the proportions of their stable ranks and the target is reached with the least loss of rank.

Candidates (``layers=``): ``'all'`` (every dense ``Conv2d`` with ``groups=1`` and ``Linear`` except the stem and the
classifier named by the model's timm cfg), ``'paper'`` (a ``cf_*`` model's ``low_rank_candidates()``) or names /
shell-style patterns. Layers already factorized keep their ranks. A zoo model records the ranks as its ``ranks``
argument, so ``zoo.create_model(name, ranks=plan.ranks)`` rebuilds the compressed architecture, and with
``pretrained=True`` from dense weights, the same SVD initialisation.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from timm.models._input import update_model_args

from ._registry import config_args
from .layers import (
    LowRankLayer,
    factorization_is_smaller,
    factorize_,
    full_rank,
    select_layers,
    stable_rank,
    weight_matrix,
)
from .profile import count_macs, profile_layers

__all__ = ['CompressionError', 'CompressionPlan', 'compress', 'plan_compression', 'RANK_RULES']

RANK_RULES = ('stable', 'scaled')
_XI_SEED = 0


class CompressionError(ValueError):
    """A model or an option that cannot be compressed as asked; the one-line message says why."""


@dataclass
class CompressionPlan:
    """What :func:`plan_compression` decided: ``ranks`` of every low-rank layer of the compressed network (those it
    already had included), one row per candidate layer in ``layers`` (``layer, shape, full_rank, stable_rank, rank,
    macs, factorize, note``, and ``dense_ms, low_rank_ms, speedup`` where timed), and the whole network's parameters
    and multiply-accumulates per image, dense and compressed."""

    ranks: dict[str, int]
    layers: list[dict]
    dense_params: int
    params: int
    dense_macs: int
    macs: int
    input_size: tuple[int, ...]
    batch_size: int
    rule: str
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class _Candidate:
    name: str
    layer: nn.Module
    input_shape: tuple
    positions: int  # output positions per image: MACs per image = positions x out x in·k·k
    stable_rank: int
    base_rank: float  # the rule's rank before rounding and scaling to a target

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(weight_matrix(self.layer).shape)

    @property
    def full(self) -> int:
        return full_rank(self.layer)

    def rank(self, scale: float = 1.0) -> int:
        return min(self.full, max(1, math.ceil(scale * self.base_rank - 1e-9)))

    def macs(self, rank: int | None) -> int:
        """MACs per image, dense (``None``) or factorized at ``rank``."""
        m, n = self.shape
        return self.positions * (m * n if rank is None else rank * (m + n))

    def smaller(self, rank: int) -> bool:
        return factorization_is_smaller(self.layer, rank)


def _record_layers(model: nn.Module, layers: Mapping[str, nn.Module], x: torch.Tensor) -> dict[str, tuple]:
    """``{name: (input shape, output positions per image)}`` of the layers one forward pass runs."""
    seen: dict[str, tuple] = {}

    def hook(name):
        def record(module, args, out):
            channels = out.shape[1] if isinstance(module, nn.Conv2d) else out.shape[-1]
            seen.setdefault(name, (tuple(args[0].shape), out.numel() // channels // x.shape[0]))

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return seen


def _base_rank(rule: str | float | Mapping[str, int], name: str, matrix: torch.Tensor, sr: int) -> float:
    full = min(matrix.shape)
    if isinstance(rule, Mapping):
        return float(rule[name])
    if rule == 'stable':
        return float(max(sr, 1))
    if rule == 'scaled':
        generator = torch.Generator().manual_seed(_XI_SEED)
        xi = full / max(stable_rank(torch.randn(matrix.shape, generator=generator, dtype=torch.float64)), 1)
        return float(min(full, math.ceil(xi * max(sr, 1))))
    return rule * full


def _check_rule(ranks, target_macs: float | None) -> None:
    if isinstance(ranks, Mapping):
        if target_macs is not None:
            raise CompressionError('give explicit ranks or a MAC target, not both')
        return
    if isinstance(ranks, str):
        if ranks not in RANK_RULES:
            raise CompressionError(f"ranks must be 'stable', 'scaled', a ratio in (0, 1] or a mapping, got {ranks!r}")
    elif not (isinstance(ranks, (int, float)) and 0 < ranks <= 1):
        raise CompressionError(f"ranks must be 'stable', 'scaled', a ratio in (0, 1] or a mapping, got {ranks!r}")
    if target_macs is not None and not target_macs > 1:
        raise CompressionError(f'target_macs is how many times fewer MACs the result needs, above 1; got {target_macs}')


def _describe_rule(ranks, target_macs: float | None) -> str:
    if isinstance(ranks, Mapping):
        return 'ranks given per layer'
    rule = f'{ranks} stable rank' if isinstance(ranks, str) else f'{ranks:g} of full rank'
    return rule + (f', scaled to {target_macs:g}x fewer MACs' if target_macs else '')


def plan_compression(
    model: nn.Module,
    ranks: str | float | Mapping[str, int] = 'stable',
    target_macs: float | None = None,
    layers: str | Iterable[str] = 'all',
    profile: bool = True,
    input_size: tuple[int, ...] | None = None,
    batch_size: int = 1,
    min_speedup: float = 1.05,
    repeats: int = 7,
) -> CompressionPlan:
    """Decide which layers of a trained ``model`` to factorize and at which rank (see the module docstring).

    Args:
        ranks: the rank rule: ``'stable'``, ``'scaled'``, a ratio of full rank, or ``{layer: rank}``.
        target_macs: scale the rule's ranks to the largest that need at most ``1/target_macs`` of the dense MACs.
        layers: the candidates (``'all'``, ``'paper'``, or names / patterns).
        profile: time each layer the rule would factorize, dense and factorized, forward only, on the model's
            device at its input in a batch of ``batch_size``, and keep it dense unless factorizing is at least
            ``min_speedup`` times faster (median of ``repeats`` alternating timings).
        input_size: ``(C, H, W)`` of one image (default: the model's ``pretrained_cfg['input_size']``).

    Raises :class:`CompressionError` when no layer can be factorized or the target cannot be reached.
    """
    _check_rule(ranks, target_macs)
    architecture = type(model).__name__
    input_size = input_size or getattr(model, 'pretrained_cfg', {}).get('input_size')
    if input_size is None:
        raise CompressionError(f'{architecture} has no pretrained_cfg input_size; give input_size=(C, H, W)')
    input_size = tuple(input_size)
    try:
        chosen_layers = select_layers(model, layers)
    except ValueError as e:
        raise CompressionError(str(e)) from None
    if isinstance(ranks, Mapping):
        unknown = sorted(set(ranks) - set(chosen_layers))
        if unknown:
            raise CompressionError(f'{architecture} has no factorizable layers named {unknown} among the candidates')
        chosen_layers = {n: m for n, m in chosen_layers.items() if n in ranks}
    if not chosen_layers:
        raise CompressionError(
            f'{architecture} has no dense Conv2d (groups=1) or Linear layer to factorize besides its stem and '
            f'classifier'
        )
    param = next(model.parameters())
    x = torch.zeros((batch_size, *input_size), device=param.device, dtype=param.dtype)
    recorded = _record_layers(model, chosen_layers, x)
    candidates, rows = [], {}
    for name, layer in chosen_layers.items():
        matrix = weight_matrix(layer)
        sr = stable_rank(matrix)
        m, n = matrix.shape
        rows[name] = dict(layer=name, shape=f'{m}x{n}', full_rank=min(m, n), stable_rank=sr)
        if name not in recorded:
            rows[name].update(rank=None, macs=0, factorize=False, note='not run by the forward pass')
            continue
        shape, positions = recorded[name]
        candidates.append(_Candidate(name, layer, shape, positions, sr, _base_rank(ranks, name, matrix, sr)))
    dense_macs = count_macs(model, input_size)
    fixed_macs = dense_macs - sum(c.macs(None) for c in candidates)  # what no factorization here changes
    allowed = {c.name for c in candidates}
    timings: dict[tuple[str, int], dict] = {}
    while True:
        scale = 1.0 if target_macs is None else _scale_for(candidates, allowed, fixed_macs, dense_macs / target_macs)
        if scale is None:
            best = fixed_macs + sum(c.macs(1 if c.name in allowed and c.smaller(1) else None) for c in candidates)
            raise CompressionError(
                f'{architecture} cannot reach {target_macs:g}x fewer MACs: rank 1 in every layer that a '
                f'factorization {"makes smaller and faster" if profile else "makes smaller"} gives '
                f'{dense_macs / best:.2f}x ({best:,} of {dense_macs:,} MACs per image)'
            )
        proposal = {c.name: c.rank(scale) for c in candidates if c.name in allowed and c.smaller(c.rank(scale))}
        untimed = {n: r for n, r in proposal.items() if (n, r) not in timings} if profile else {}
        if untimed:
            layers_ = {c.name: c.layer for c in candidates if c.name in untimed}
            shapes = {c.name: c.input_shape for c in candidates if c.name in untimed}
            with torch.random.fork_rng(devices=[param.device] if param.is_cuda else []):
                for row in profile_layers(layers_, untimed, shapes, repeats, backward=False):
                    timings[row['layer'], row['rank']] = row
        slow = {n for n, r in proposal.items() if profile and timings[n, r]['speedup'] < min_speedup}
        if not slow:
            break
        allowed -= slow  # a slower layer stays dense; the others are scaled again to reach the target without it
    for c in candidates:
        rank = c.rank(scale)
        row = rows[c.name]
        row.update(rank=rank, macs=c.macs(proposal.get(c.name)), factorize=c.name in proposal)
        if (c.name, rank) in timings:
            row.update({k: timings[c.name, rank][k] for k in ('dense_ms', 'low_rank_ms', 'speedup')})
        if not c.smaller(rank):
            row['note'] = 'not smaller'
        elif c.name not in allowed:
            row['note'] = f'not {min_speedup:g}x faster'
    if not proposal:
        raise CompressionError(
            f'{architecture}: no factorization of its {len(chosen_layers)} candidate layers is smaller'
            + (f' and at least {min_speedup:g}x faster on {param.device.type}' if profile else '')
            + ' at the ranks asked for; nothing to compress'
        )
    existing = {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRankLayer)}
    dense_params = sum(p.numel() for p in model.parameters())
    saved = sum(math.prod(c.shape) - proposal[c.name] * sum(c.shape) for c in candidates if c.name in proposal)
    return CompressionPlan(
        ranks=existing | proposal,
        layers=list(rows.values()),
        dense_params=dense_params,
        params=dense_params - saved,
        dense_macs=dense_macs,
        macs=fixed_macs + sum(c.macs(proposal.get(c.name)) for c in candidates),
        input_size=input_size,
        batch_size=batch_size,
        rule=_describe_rule(ranks, target_macs),
        settings=dict(
            ranks=ranks if not isinstance(ranks, Mapping) else dict(ranks),
            target_macs=target_macs,
            layers=layers if isinstance(layers, str) else list(layers),
            profile=profile,
            min_speedup=min_speedup,
            device=str(param.device),
        ),
    )


def _scale_for(candidates: list[_Candidate], allowed: set[str], fixed_macs: int, budget: float) -> float | None:
    """The largest scale of the base ranks whose network needs at most ``budget`` MACs, or ``None`` if even
    rank 1 everywhere needs more. MACs only grow with the scale, so bisection finds it."""

    def macs(scale: float) -> int:
        total = fixed_macs
        for c in candidates:
            rank = c.rank(scale)
            total += c.macs(rank if c.name in allowed and c.smaller(rank) else None)
        return total

    low = 0.0
    if macs(low) > budget:
        return None
    high = max(c.full / c.base_rank for c in candidates)
    if macs(high) <= budget:
        return high
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if macs(middle) <= budget else (low, middle)
    return low


def compress(model: nn.Module, **options) -> tuple[nn.Module, CompressionPlan]:
    """A compressed copy of ``model`` and its :class:`CompressionPlan` (``options``: :func:`plan_compression`'s):
    the planned layers are the truncated SVD of the trained weights, the rest is the trained network unchanged.
    A zoo model records the ranks among its arguments (``timm.models.get_model_args``), so it publishes and
    rebuilds as itself."""
    plan = plan_compression(model, **options)
    compressed = copy.deepcopy(model)
    existing = {n for n, m in model.named_modules() if isinstance(m, LowRankLayer)}
    factorize_(compressed, {n: r for n, r in plan.ranks.items() if n not in existing}, init='svd')
    architecture = model.pretrained_cfg.get('architecture') if hasattr(model, 'pretrained_cfg') else None
    if 'ranks' in config_args(architecture):
        update_model_args(compressed, ranks=plan.ranks)
    return compressed, plan
