"""Low-rank factorized layers (Cuttlefish / Pufferfish style) and conversion to and from dense layers.

A dense weight ``W`` of shape ``(out, in·k·k)`` is replaced by ``U @ Vᵀ`` with ``U: (out, r)`` and
``V: (in·k·k, r)``. For a convolution the ``Vᵀ`` factor is a ``k×k`` conv with ``r`` output channels (same
stride, padding and dilation as the dense conv) and ``U`` is a ``1×1`` conv ``r → out``; an optional
BatchNorm over the ``r`` channels may sit between the two (no nonlinearity). The SVD initialisation
splits the singular values evenly: ``U = U_r·√Σ_r``, ``V = V_r·√Σ_r``, so both factors have the same scale.
"""

import fnmatch
import math
from collections.abc import Iterable, Mapping
from typing import Self

import torch
import torch.nn as nn

__all__ = [
    'LowRankConv2d',
    'LowRankLinear',
    'LowRankLayer',
    'full_rank',
    'factorization_is_smaller',
    'weight_matrix',
    'factorize_',
    'factorizable_layers',
    'select_layers',
    'svd_factors',
    'frobenius_norm_sq',
    'add_frobenius_decay_',
    'low_rank_like',
    'resolve_ranks',
    'stable_rank',
    'scaled_rank',
]


def full_rank(module: nn.Module) -> int:
    """min(out, in·k·k): the rank of the layer's weight matrix when it is unconstrained."""
    if isinstance(module, (LowRankConv2d, LowRankLinear)):
        return min(module.out_features_, module.in_features_)
    out_features, in_features = weight_matrix(module).shape
    return min(out_features, in_features)


def factorization_is_smaller(module: nn.Module, rank: int) -> bool:
    """Whether factors of ``rank`` hold fewer weights than the layer's ``(out, in·k·k)`` matrix:
    ``rank·(out + in·k·k) < out·in·k·k``."""
    out_features, in_features = weight_matrix(module).shape
    return rank * (out_features + in_features) < out_features * in_features


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's (effective) weight as an ``(out, in·k·k)`` matrix; for low-rank layers ``U @ Vᵀ``."""
    if isinstance(module, (LowRankConv2d, LowRankLinear)):
        return module.u_matrix() @ module.v_matrix().t()
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return module.weight.reshape(module.weight.shape[0], -1)
    raise TypeError(f'{type(module).__name__} has no weight matrix; expected Conv2d, Linear or a low-rank layer')


@torch.no_grad()
def stable_rank(matrix: torch.Tensor) -> int:
    """``floor(‖W‖²_F / σ_max²)``; σ_max² is the top eigenvalue of the smaller Gram matrix (float64)."""
    w = matrix.detach().double()
    gram = w @ w.t() if w.shape[0] <= w.shape[1] else w.t() @ w
    top = torch.linalg.eigvalsh(gram)[-1].item()
    if top <= 0:
        return 0
    # The small tolerance keeps an exact integer ratio (e.g. an orthogonal matrix) from flooring one lower.
    return int(math.floor(gram.trace().item() / top + 1e-9))


def scaled_rank(sr: int, xi: float, full: int, floor: float = 0.0) -> int:
    """Cuttlefish's rank ``min(full, ceil(ξ·sr))``, at least ``floor·full`` and 1; ``ξ = full / sr(W at
    initialisation)`` maps a random matrix to full rank."""
    rank = min(full, math.ceil(xi * sr))
    return max(rank, int(math.floor(floor * full)), 1)


def svd_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD ``matrix ≈ U @ Vᵀ`` with ``√Σ`` folded into both factors (computed in float64)."""
    matrix64 = matrix.detach().double()
    if matrix64.shape[0] < matrix64.shape[1]:
        # LAPACK is several times faster on tall matrices: factor Wᵀ = V Σ Uᵀ and swap the roles.
        v, s, uh = torch.linalg.svd(matrix64.t(), full_matrices=False)
        u, vh = uh.t(), v.t()
    else:
        u, s, vh = torch.linalg.svd(matrix64, full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(matrix.dtype), (vh[:rank].t() * root).to(matrix.dtype)


class _Factorized(nn.Module):
    """``W ≈ U Vᵀ``: ``u_weight`` holds ``U`` (out, r[, 1, 1]) and ``v_weight`` holds ``Vᵀ`` (r, in[, k, k])."""

    rank: int
    out_features_: int
    u_weight: nn.Parameter
    v_weight: nn.Parameter

    def u_matrix(self) -> torch.Tensor:
        return self.u_weight.reshape(self.out_features_, self.rank)

    def v_matrix(self) -> torch.Tensor:
        return self.v_weight.reshape(self.rank, -1).t()


class LowRankConv2d(_Factorized):
    """``k×k`` conv to ``rank`` channels, optional BatchNorm, then ``1×1`` conv to ``out_channels``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple,
        rank: int,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = False,
        mid_norm: bool = False,
        padding_mode: str = 'zeros',
        device=None,
        dtype=None,
    ):
        super().__init__()
        if rank < 1:
            raise ValueError(f'rank must be >= 1, got {rank}')
        dd = {'device': device, 'dtype': dtype}
        self.rank = rank
        self.conv_v = nn.Conv2d(
            in_channels, rank, kernel_size, stride, padding, dilation, bias=False, padding_mode=padding_mode, **dd
        )
        self.norm = nn.BatchNorm2d(rank, **dd) if mid_norm else nn.Identity()
        self.conv_u = nn.Conv2d(rank, out_channels, 1, bias=bias, **dd)
        self.in_features_ = self.conv_v.weight[0].numel()
        self.out_features_ = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_u(self.norm(self.conv_v(x)))

    @property
    def u_weight(self) -> nn.Parameter:
        return self.conv_u.weight

    @property
    def v_weight(self) -> nn.Parameter:
        return self.conv_v.weight

    @classmethod
    def like(cls, conv: nn.Conv2d, rank: int, mid_norm: bool = False) -> Self:
        """A freshly initialised factorization with ``conv``'s geometry, device and dtype."""
        return cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            rank,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.bias is not None,
            mid_norm,
            conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, rank: int, mid_norm: bool = False) -> Self:
        """Truncated-SVD factorization of a trained conv; at full rank (no mid norm) it is exact."""
        if conv.groups != 1:
            raise ValueError(f'cannot factorize a grouped conv (groups={conv.groups})')
        layer = cls.like(conv, rank, mid_norm)
        u, v = svd_factors(weight_matrix(conv), rank)
        with torch.no_grad():
            layer.conv_u.weight.copy_(u.reshape(layer.conv_u.weight.shape))
            layer.conv_v.weight.copy_(v.t().reshape(layer.conv_v.weight.shape))
            if conv.bias is not None:
                layer.conv_u.bias.copy_(conv.bias)
        return layer

    def to_dense(self) -> nn.Conv2d:
        """The equivalent dense conv (exact; a mid BatchNorm is folded in with its running statistics)."""
        v = self.conv_v
        conv = nn.Conv2d(
            v.in_channels,
            self.out_features_,
            v.kernel_size,
            v.stride,
            v.padding,
            v.dilation,
            bias=self.conv_u.bias is not None or isinstance(self.norm, nn.BatchNorm2d),
            padding_mode=v.padding_mode,
            device=v.weight.device,
            dtype=v.weight.dtype,
        )
        scale, shift = _norm_affine(self.norm, self.rank, v.weight)
        with torch.no_grad():
            weight = self.u_matrix() @ (scale[:, None] * self.v_matrix().t())
            conv.weight.copy_(weight.reshape(conv.weight.shape))
            if conv.bias is not None:
                bias = self.u_matrix() @ shift
                conv.bias.copy_(bias + (self.conv_u.bias if self.conv_u.bias is not None else 0))
        return conv


class LowRankLinear(_Factorized):
    """``Linear(in → rank)`` without bias, then ``Linear(rank → out)`` carrying the dense layer's bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if rank < 1:
            raise ValueError(f'rank must be >= 1, got {rank}')
        dd = {'device': device, 'dtype': dtype}
        self.rank = rank
        self.fc_v = nn.Linear(in_features, rank, bias=False, **dd)
        self.fc_u = nn.Linear(rank, out_features, bias=bias, **dd)
        self.in_features_ = in_features
        self.out_features_ = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_u(self.fc_v(x))

    @property
    def u_weight(self) -> nn.Parameter:
        return self.fc_u.weight

    @property
    def v_weight(self) -> nn.Parameter:
        return self.fc_v.weight

    @classmethod
    def like(cls, linear: nn.Linear, rank: int) -> Self:
        """A freshly initialised factorization with ``linear``'s shape, device and dtype."""
        weight = linear.weight
        return cls(linear.in_features, linear.out_features, rank, linear.bias is not None, weight.device, weight.dtype)

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int) -> Self:
        layer = cls.like(linear, rank)
        u, v = svd_factors(linear.weight, rank)
        with torch.no_grad():
            layer.fc_u.weight.copy_(u)
            layer.fc_v.weight.copy_(v.t())
            if linear.bias is not None:
                layer.fc_u.bias.copy_(linear.bias)
        return layer

    def to_dense(self) -> nn.Linear:
        weight = self.fc_u.weight
        linear = nn.Linear(
            self.in_features_, self.out_features_, self.fc_u.bias is not None, weight.device, weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(self.u_matrix() @ self.v_matrix().t())
            if linear.bias is not None:
                linear.bias.copy_(self.fc_u.bias)
        return linear


LowRankLayer = (LowRankConv2d, LowRankLinear)


def _norm_affine(norm: nn.Module, rank: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` of an eval-mode BatchNorm (identity for ``nn.Identity``)."""
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale
    return torch.ones(rank, device=like.device, dtype=like.dtype), torch.zeros(
        rank, device=like.device, dtype=like.dtype
    )


def factorizable_layers(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """Dense ``Conv2d`` (groups=1) and ``Linear`` layers of ``model`` by qualified name, optionally only
    those matching ``names`` (exact names or shell-style patterns such as ``'blocks.*.mlp.fc*'``).

    Only layers of exactly these types count: a subclass may compute something else from its weight (timm's
    ``Conv2dSame`` pads in its forward, ``StdConv2d`` standardises the weight, ``MultiheadAttention`` reads
    ``out_proj.weight`` itself), and the factors inside a low-rank layer are already factorized."""
    factorized = tuple(f'{n}.' for n, m in model.named_modules() if isinstance(m, LowRankLayer))
    layers = {
        n: m
        for n, m in model.named_modules()
        if (type(m) is nn.Linear or (type(m) is nn.Conv2d and m.groups == 1)) and not n.startswith(factorized)
    }
    if names is None:
        return layers
    names = list(names)
    missing = [p for p in names if not any(fnmatch.fnmatchcase(n, p) for n in layers)]
    if missing:
        raise ValueError(
            f'not factorizable layers of {type(model).__name__}: {missing}; candidates include {sorted(layers)[:12]}'
        )
    picked = {}
    for pattern in names:
        picked.update((n, m) for n, m in layers.items() if fnmatch.fnmatchcase(n, pattern))
    return picked


def select_layers(model: nn.Module, spec: str | Iterable[str] = 'all') -> dict[str, nn.Module]:
    """The factorizable layers a spec names: ``'all'`` (every one but the stem and the classifier that the
    model's timm ``pretrained_cfg`` names as ``first_conv`` and ``classifier``), ``'paper'`` (the model's
    ``low_rank_candidates()``, Cuttlefish's hand-picked set) or names / shell-style patterns."""
    if spec == 'paper':
        return factorizable_layers(model, model.low_rank_candidates())
    if spec == 'all':
        cfg = getattr(model, 'pretrained_cfg', {})
        stem_and_head = [cfg.get('first_conv') or (), cfg.get('classifier') or ()]
        skip = {name for names in stem_and_head for name in ((names,) if isinstance(names, str) else names)}
        return {n: m for n, m in factorizable_layers(model).items() if n not in skip}
    # A single name or pattern is one entry, not a sequence of characters.
    return factorizable_layers(model, [spec] if isinstance(spec, str) else spec)


def low_rank_like(
    dense: nn.Conv2d | nn.Linear, rank: int, mid_norm: bool = False, svd: bool = False
) -> LowRankConv2d | LowRankLinear:
    """The low-rank version of a dense layer: its truncated SVD, or fresh factors of the same geometry."""
    if isinstance(dense, nn.Conv2d):
        return LowRankConv2d.from_dense(dense, rank, mid_norm) if svd else LowRankConv2d.like(dense, rank, mid_norm)
    if mid_norm:
        raise ValueError('a BatchNorm between the factors is only supported for convolutions')
    return LowRankLinear.from_dense(dense, rank) if svd else LowRankLinear.like(dense, rank)


def resolve_ranks(model: nn.Module, ranks: Mapping[str, int] | None, rank_ratio: float | None) -> dict[str, int]:
    """Explicit per-layer ``ranks``, plus round(ratio · full rank) for the model's other
    ``low_rank_candidates()`` when ``rank_ratio`` is given."""
    ranks = dict(ranks or {})
    if rank_ratio is not None:
        if not 0 < rank_ratio <= 1:
            raise ValueError(f'rank_ratio must be in (0, 1], got {rank_ratio}')
        for name, layer in factorizable_layers(model, model.low_rank_candidates()).items():
            ranks.setdefault(name, max(1, round(rank_ratio * full_rank(layer))))
    return ranks


def factorize_(model: nn.Module, ranks: Mapping[str, int], init: str = 'svd', mid_norm: bool = False) -> nn.Module:
    """Replace each named dense layer of ``model`` by its low-rank version, in place.

    ``init='svd'`` starts from the truncated SVD of the current weights (the Cuttlefish switch);
    ``init='random'`` only builds the shapes (a model constructed with known ranks, to be loaded).
    """
    if init not in ('svd', 'random'):
        raise ValueError(f"init must be 'svd' or 'random', got {init!r}")
    layers = factorizable_layers(model, ranks)
    for name, dense in layers.items():
        rank = int(ranks[name])
        limit = full_rank(dense)
        if not 1 <= rank <= limit:
            raise ValueError(f'{name}: rank {rank} outside [1, {limit}] for weight {tuple(dense.weight.shape)}')
        layer = low_rank_like(dense, rank, mid_norm, svd=init == 'svd')
        parent_name, _, child = name.rpartition('.')
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return model


def frobenius_norm_sq(layer: LowRankConv2d | LowRankLinear) -> torch.Tensor:
    """‖U Vᵀ‖²_F computed as ⟨UᵀU, VᵀV⟩ on ``r×r`` matrices, without forming the product."""
    u, v = layer.u_matrix(), layer.v_matrix()
    return ((u.t() @ u) * (v.t() @ v)).sum()


@torch.no_grad()
def add_frobenius_decay_(layer: LowRankConv2d | LowRankLinear, strength: float) -> None:
    """Add the gradient of ``strength/2 · ‖U Vᵀ‖²_F`` to the factors' gradients (Frobenius decay).

    ∂/∂U = strength · U (VᵀV) and ∂/∂V = strength · V (UᵀU): a penalty on the product the layer
    computes, unlike weight decay on each factor, which also depends on how the product is split.
    """
    u, v = layer.u_matrix(), layer.v_matrix()
    grad_u = strength * (u @ (v.t() @ v))
    grad_v = strength * (v @ (u.t() @ u))
    for param, grad in ((layer.u_weight, grad_u), (layer.v_weight, grad_v.t())):
        grad = grad.reshape(param.shape)
        if param.grad is None:
            param.grad = grad.clone()
        else:
            param.grad.add_(grad)
