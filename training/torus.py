"""2D-torus all-reduce (Mikami et al., "Massively Distributed SGD: ImageNet/ResNet-50
Training in a Flash", arXiv:1811.05233) for ``torch.distributed``.

The N = X * Y ranks form a logical grid with ``rank = row * X + col``, so each row is X
consecutive ranks (the GPUs of one node under ``torchrun`` when X = LOCAL_WORLD_SIZE).
An all-reduce then runs in three phases:

1. reduce-scatter along each row (horizontal ring), leaving every rank a 1/X shard;
2. all-reduce of that shard along each column (vertical ring);
3. all-gather along each row.

It sends exactly as many bytes as a flat ring (2M(N-1)/N per rank) but needs only
2(X+Y-2) sequential steps instead of 2(N-1), and only the small vertical phase crosses
nodes when rows are node-local. See :func:`allreduce_cost_model` for the α-β model.

Public API:

* :class:`TorusGrid` / :meth:`TorusGrid.create` build the row and column process groups;
* :func:`torus_all_reduce` is an in-place all-reduce for any tensor;
* :func:`torus_allreduce_hook` / :func:`register_torus_hook` plug it into DDP;
* :func:`choose_grid_shape` and :func:`torus_layout` are the pure grid helpers;
* :func:`allreduce_cost_model` compares ring, hierarchical and 2D-torus all-reduce.

Works with gloo on CPU and NCCL on GPU. On gloo, reduce-scatter is emulated with a full
all-reduce, so the torus is a correctness path there and is not expected to be faster.
"""

# No `from __future__ import annotations`: DDP compares the hook's annotations with the
# real `dist.GradBucket` / `Future[Tensor]` objects and rejects strings.
import math
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

__all__ = [
    'AllReduceCost',
    'TorusGrid',
    'TorusHookState',
    'allreduce_cost_model',
    'choose_grid_shape',
    'register_torus_hook',
    'torus_all_reduce',
    'torus_allreduce_hook',
    'torus_layout',
]

# Recent torch (2.14 here) deprecates reduce_scatter_tensor / all_gather_into_tensor in
# favour of the *_single names; older releases only have the old ones.
_reduce_scatter_single = getattr(dist, 'reduce_scatter_single', None) or dist.reduce_scatter_tensor
_all_gather_single = getattr(dist, 'all_gather_single', None) or dist.all_gather_into_tensor


# --------------------------------------------------------------------------- grid


def choose_grid_shape(
    world_size: int,
    x: int | None = None,
    y: int | None = None,
    local_world_size: int | None = None,
) -> tuple[int, int]:
    """Return the grid shape ``(X, Y)`` with ``X * Y == world_size``.

    Explicit ``x`` and/or ``y`` are validated and completed. Otherwise X is the number of
    ranks per node (``local_world_size``) when it divides the world size and
    ``1 < X < world_size``, so that rows stay intra-node; failing that, X is the divisor of
    ``world_size`` closest to ``sqrt(world_size)`` with ``X <= Y`` (the largest divisor not
    above the square root, which is never farther from it than its cofactor).
    """
    if world_size < 1:
        raise ValueError(f'world_size must be positive, got {world_size}')
    for name, value in (('x', x), ('y', y)):
        if value is not None and value < 1:
            raise ValueError(f'torus {name} must be a positive integer, got {value}')

    if x is not None or y is not None:
        grid_x = x if x is not None else world_size // y
        grid_y = y if y is not None else world_size // x
        if grid_x * grid_y != world_size:
            raise ValueError(
                f'cannot arrange {world_size} ranks as a torus with x={x}, y={y}: '
                f'x * y must equal the world size {world_size}'
            )
        return grid_x, grid_y

    if local_world_size is not None and 1 < local_world_size < world_size:
        if world_size % local_world_size == 0:
            return local_world_size, world_size // local_world_size

    x = max(d for d in range(1, math.isqrt(world_size) + 1) if world_size % d == 0)
    return x, world_size // x


def torus_layout(x: int, y: int) -> tuple[list[list[int]], list[list[int]]]:
    """Return ``(rows, cols)``: the ranks of every row ring and every column ring.

    ``rows[r] == [r*x, ..., r*x + x-1]`` (contiguous ranks) and
    ``cols[c] == [c, c+x, ..., c+(y-1)*x]``.
    """
    rows = [[row * x + col for col in range(x)] for row in range(y)]
    cols = [[row * x + col for row in range(y)] for col in range(x)]
    return rows, cols


@dataclass(frozen=True)
class TorusGrid:
    """This rank's view of an ``x`` (ranks per row) by ``y`` (rows) torus.

    Build it with :meth:`create`; ``row_group`` holds the ranks of this rank's row and
    ``col_group`` those of its column.
    """

    x: int
    y: int
    rank: int
    row_group: dist.ProcessGroup
    col_group: dist.ProcessGroup

    @property
    def world_size(self) -> int:
        return self.x * self.y

    @property
    def row(self) -> int:
        return self.rank // self.x

    @property
    def col(self) -> int:
        return self.rank % self.x

    @classmethod
    def create(
        cls,
        x: int | None = None,
        y: int | None = None,
        backend: str | None = None,
        timeout: timedelta | None = None,
    ) -> 'TorusGrid':
        """Create the row and column process groups of the default (world) group.

        Collective: every rank must call it, with the same arguments. Group creation is
        itself collective over the whole world, so every rank creates *all* row groups and
        then *all* column groups in the same order, including the ones it is not in.

        Args:
            x: Ranks per row. ``None`` picks it with :func:`choose_grid_shape`, using the
                ``LOCAL_WORLD_SIZE`` that ``torchrun`` sets.
            y: Number of rows; inferred from ``x`` when ``None``.
            backend: Backend of the subgroups; ``None`` uses the world group's backend.
            timeout: Collective timeout of the subgroups; ``None`` uses the backend's
                default (10 min for NCCL, 30 min for gloo).
        """
        if not dist.is_initialized():
            raise RuntimeError('TorusGrid.create() needs torch.distributed to be initialised')
        world_size = dist.get_world_size()
        local_world_size = os.environ.get('LOCAL_WORLD_SIZE')
        x, y = choose_grid_shape(world_size, x, y, int(local_world_size) if local_world_size else None)
        rows, cols = torus_layout(x, y)
        row_group, _ = dist.new_subgroups_by_enumeration(rows, timeout=timeout, backend=backend)
        col_group, _ = dist.new_subgroups_by_enumeration(cols, timeout=timeout, backend=backend)
        return cls(x=x, y=y, rank=dist.get_rank(), row_group=row_group, col_group=col_group)


# --------------------------------------------------------------------------- all-reduce


def _torus_sum_(flat: torch.Tensor, grid: TorusGrid) -> None:
    """Sum a contiguous 1-D tensor over all ranks of ``grid``, in place.

    Every collective is blocking and issued from the calling thread, in the same order
    on every rank (see :func:`torus_allreduce_hook` for why that matters).
    """
    if grid.x == 1:  # one rank per row: the torus degenerates to a ring over the column
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=grid.col_group)
        return
    numel = flat.numel()
    # reduce-scatter needs input size == X * shard size; zero padding adds nothing to the sum.
    padded_numel = (numel + grid.x - 1) // grid.x * grid.x
    if padded_numel == numel:
        padded = flat
    else:
        padded = flat.new_zeros(padded_numel)
        padded[:numel].copy_(flat)
    shard = flat.new_empty(padded_numel // grid.x)
    _reduce_scatter_single(shard, padded, op=dist.ReduceOp.SUM, group=grid.row_group)
    if grid.y > 1:
        dist.all_reduce(shard, op=dist.ReduceOp.SUM, group=grid.col_group)
    _all_gather_single(padded, shard, group=grid.row_group)
    if padded is not flat:
        flat.copy_(padded[:numel])


def torus_all_reduce(tensor: torch.Tensor, grid: TorusGrid, op: Literal['sum', 'avg'] = 'sum') -> torch.Tensor:
    """All-reduce ``tensor`` in place over the torus and return it.

    Any shape, size (including sizes below X) or dtype the backend supports; it runs on
    the tensor's device. Collective: every rank of the world must call it. ``"avg"``
    divides by the world size and then sums (older gloo builds lack ``ReduceOp.AVG``), so
    an fp16 average does not overflow where the sum would; it is only defined for
    floating-point and complex tensors.
    """
    if op not in ('sum', 'avg'):
        raise ValueError(f"op must be 'sum' or 'avg', got {op!r}")
    if op == 'avg' and not (tensor.is_floating_point() or tensor.is_complex()):
        raise TypeError(f"op='avg' needs a floating-point or complex tensor, got {tensor.dtype}")
    if tensor.numel() == 0:
        return tensor
    contiguous = tensor.contiguous()  # a no-op unless the tensor is strided
    flat = contiguous.view(-1)
    if op == 'avg':
        flat.div_(grid.world_size)
    _torus_sum_(flat, grid)
    if contiguous is not tensor:
        tensor.copy_(contiguous)
    return tensor


# --------------------------------------------------------------------------- DDP hook


@dataclass
class TorusHookState:
    """State of :func:`torus_allreduce_hook`: the grid and, on GPU, a side stream."""

    grid: TorusGrid
    _cuda_stream: torch.cuda.Stream | None = field(default=None, init=False, repr=False)

    def cuda_stream(self, device: torch.device) -> torch.cuda.Stream:
        if self._cuda_stream is None:
            self._cuda_stream = torch.cuda.Stream(device=device)
        return self._cuda_stream


def torus_allreduce_hook(state: TorusHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook that averages each gradient bucket with the 2D torus.

    DDP does not pre-divide gradients, so the bucket is divided by the world size first
    (before summing, as DDP's own ``allreduce_hook`` does, to keep fp16 from overflowing).

    Serialization: the three collectives of a bucket are issued synchronously, from the
    thread that runs the hook, and a completed Future is returned. DDP calls hooks in
    bucket order on every rank, so every rank issues the row and column collectives in the
    identical order. That is what NCCL requires of operations on different communicators
    ("submitted in the same order across ranks"), and what gloo requires too: gloo matches
    operations of a group by their issue order, and its emulated reduce-scatter has no
    ``Work.get_future()``, so PowerSGD-style ``fut.then(...)`` chaining is impossible there;
    on NCCL that chaining would let bucket k's column all-reduce (in a callback) interleave
    with bucket k+1's row reduce-scatter (from the autograd thread) differently per rank.
    On gloo this blocks backward while the bucket is reduced. On CUDA, blocking NCCL calls
    only make the *current stream* wait, so the collectives are issued on a side stream:
    the host never blocks, backward kernels keep running on their stream, and the Future,
    created for the bucket's device, makes DDP's consumers wait on the side stream.
    """
    buffer = bucket.buffer()
    if buffer.is_cuda:
        stream = state.cuda_stream(buffer.device)
        stream.wait_stream(torch.cuda.current_stream(buffer.device))  # gradients are written
        with torch.cuda.stream(stream):
            buffer.div_(state.grid.world_size)
            _torus_sum_(buffer, state.grid)
            future = torch.futures.Future(devices=[buffer.device])
            future.set_result(buffer)  # records a CUDA event on the side stream
        return future
    buffer.div_(state.grid.world_size)
    _torus_sum_(buffer, state.grid)
    future = torch.futures.Future()
    future.set_result(buffer)
    return future


def register_torus_hook(ddp_model: torch.nn.parallel.DistributedDataParallel, grid: TorusGrid) -> TorusHookState:
    """Register :func:`torus_allreduce_hook` on ``ddp_model`` (once, before backward)."""
    state = TorusHookState(grid)
    ddp_model.register_comm_hook(state, torus_allreduce_hook)
    return state


# --------------------------------------------------------------------------- cost model


@dataclass(frozen=True)
class AllReduceCost:
    """Cost of one all-reduce under :func:`allreduce_cost_model`.

    ``bytes_sent_per_gpu`` and ``inter_node_bytes_per_gpu`` are the maximum over GPUs.
    """

    algorithm: str
    steps: int
    bytes_sent_per_gpu: float
    inter_node_bytes_per_gpu: float
    time_s: float


def allreduce_cost_model(
    message_bytes: float,
    num_gpus: int,
    *,
    gpus_per_node: int,
    intra_latency_s: float,
    intra_bandwidth: float,
    inter_latency_s: float,
    inter_bandwidth: float,
    step_overhead_s: float = 0.0,
    torus_x: int | None = None,
) -> dict[str, AllReduceCost]:
    r"""Latency-bandwidth (α-β) cost of a flat ring, hierarchical and 2D-torus all-reduce.

    M = ``message_bytes`` per GPU, N = ``num_gpus``, G = ``gpus_per_node`` (ranks
    ``k*G .. k*G+G-1`` share node k), torus X = ``torus_x`` (default G) and Y = N / X.
    A ring step moves one chunk c over every hop of the ring at once and lasts as long
    as its slowest hop:

        t_step(c) = o + max(α_intra + c / β_intra           [if the ring has a hop inside a node],
                            α_inter + c * f / β_inter)       [if it crosses nodes]

    where o = ``step_overhead_s``, β_intra is the bandwidth of one GPU-to-GPU link and
    β_inter is the per-node network bandwidth, shared by the f rings that leave the
    node concurrently. All bandwidths are per direction, in bytes/s.

    Flat ring over N (one ring, f = 1)::

        steps = 2(N-1)
        bytes = 2M(N-1)/N
        time  = 2(N-1) t_step(M/N)

    Hierarchical (binomial-tree reduce to one leader per node, ring all-reduce among the
    N/G leaders with f = 1, binomial-tree broadcast), L = ceil(log2 G), P = N/G::

        steps = 2L + 2(P-1)
        bytes = 2M(P-1)/P + L*M       (leader: ring + broadcast)
        time  = 2L (α_intra + M/β_intra + o) + 2(P-1) t_step(M/P)

    2D torus X×Y (reduce-scatter on rows, all-reduce on columns, all-gather on rows)::

        steps = 2(X-1) + 2(Y-1) = 2(X+Y-2)
        bytes = 2M(X-1)/X + 2M(Y-1)/(XY) = 2M(N-1)/N      (same as the ring)
        time  = 2(X-1) t_row(M/X) + 2(Y-1) t_col(M/N)

    Rows are node-local when X divides G; otherwise X must be a multiple of G and a row
    spans X/G nodes (f = 1). Columns cross nodes with f = min(X, G) concurrent rings per
    node (every GPU of a node is in its own column when X >= G).

    ``inter_node_bytes_per_gpu`` counts only the bytes of phases that cross nodes:
    2M(N-1)/N for the ring, 2M(P-1)/P for a leader, and 2M(Y-1)/N (+ 2M(X-1)/X when rows
    span nodes) for the torus.

    The model ignores pipelining over multiple channels, tree algorithms, congestion in
    the fabric and the cost of the reduction arithmetic.

    Returns:
        ``{"ring": ..., "hierarchical": ..., "torus": ...}``.
    """
    n, g, m = num_gpus, gpus_per_node, float(message_bytes)
    x = g if torus_x is None else torus_x
    if n < 1 or g < 1 or n % min(g, n):
        raise ValueError(f'num_gpus ({n}) must be a positive multiple of gpus_per_node ({g})')
    if n % x:
        raise ValueError(f'torus_x ({x}) must divide num_gpus ({n})')
    if g % x and x % g:
        raise ValueError(f'torus_x ({x}) must divide or be a multiple of gpus_per_node ({g})')
    y = n // x
    nodes = max(1, n // g)

    def ring_step(chunk: float, members_per_node: int, nodes_spanned: int, flows: int) -> float:
        hops = []
        if members_per_node > 1:
            hops.append(intra_latency_s + chunk / intra_bandwidth)
        if nodes_spanned > 1:
            hops.append(inter_latency_s + chunk * flows / inter_bandwidth)
        return step_overhead_s + max(hops, default=0.0)

    ring_bytes = 2 * m * (n - 1) / n
    ring = AllReduceCost(
        algorithm=f'flat ring ({n})',
        steps=2 * (n - 1),
        bytes_sent_per_gpu=ring_bytes,
        inter_node_bytes_per_gpu=ring_bytes if nodes > 1 else 0.0,
        time_s=2 * (n - 1) * ring_step(m / n, min(g, n), nodes, flows=1),
    )

    tree_depth = math.ceil(math.log2(g)) if g > 1 else 0
    leader_ring_bytes = 2 * m * (nodes - 1) / nodes
    hierarchical = AllReduceCost(
        algorithm=f'hierarchical ({g}/node, {nodes} leaders)',
        steps=2 * tree_depth + 2 * (nodes - 1),
        bytes_sent_per_gpu=leader_ring_bytes + tree_depth * m,
        inter_node_bytes_per_gpu=leader_ring_bytes,
        time_s=2 * tree_depth * (step_overhead_s + intra_latency_s + m / intra_bandwidth)
        + 2 * (nodes - 1) * ring_step(m / nodes, 1, nodes, flows=1),
    )

    row_members_per_node = min(x, g)
    row_nodes = x // row_members_per_node
    col_members_per_node = max(1, g // x)
    col_nodes = y // col_members_per_node if n > g else 1
    row_bytes = 2 * m * (x - 1) / x
    col_bytes = 2 * m * (y - 1) / n
    torus = AllReduceCost(
        algorithm=f'2D torus {x}x{y}',
        steps=2 * (x + y - 2),
        bytes_sent_per_gpu=row_bytes + col_bytes,
        inter_node_bytes_per_gpu=(row_bytes if row_nodes > 1 else 0.0) + (col_bytes if col_nodes > 1 else 0.0),
        time_s=2 * (x - 1) * ring_step(m / x, row_members_per_node, row_nodes, flows=1)
        + 2 * (y - 1) * ring_step(m / n, col_members_per_node, col_nodes, flows=min(x, g)),
    )
    return {'ring': ring, 'hierarchical': hierarchical, 'torus': torus}
