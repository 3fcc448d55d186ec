"""Tests for the 2D-torus all-reduce in ``training.torus``.

The multi-process checks spawn gloo ranks on 127.0.0.1 (CPU only). Starting a rank costs
a few seconds of interpreter and torch import on a small CI machine, so one spawn runs
every check for its world size: 4 ranks (2x2, 1x4 and 4x1 grids) and 6 ranks (2x3 and
3x2 grids). A failing rank raises, ``mp.spawn`` kills the others and re-raises in the
parent, and every rendezvous and collective has a 60 s timeout, so nothing hangs.
"""

import copy
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.torus import (
    TorusGrid,
    allreduce_cost_model,
    choose_grid_shape,
    register_torus_hook,
    torus_all_reduce,
    torus_layout,
)

TIMEOUT = timedelta(seconds=60)

# Sizes that hit the padding edge cases for X in 1..4: 1, below X, not a multiple of X.
FLAT_SIZES = (1, 2, 3, 5, 7, 12, 97, 1000, 4099)
SHAPES = ((3, 5, 7), (2, 1), (1, 1, 1), (4, 1, 3, 2))
TOLERANCES = {
    torch.float32: {'rtol': 1e-5, 'atol': 1e-6},
    torch.float64: {'rtol': 1e-12, 'atol': 1e-12},
    torch.int64: {'rtol': 0, 'atol': 0},
}


# --------------------------------------------------------------------------- rank-side checks


def _rank_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Different data on every rank, reproducible per (seed, rank)."""
    generator = torch.Generator().manual_seed(seed * 1000 + dist.get_rank())
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator, dtype=dtype)
    return torch.randint(-1000, 1000, shape, generator=generator, dtype=dtype)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float, atol: float) -> None:
    # torch.testing.assert_close would import DTensor in every rank (~1 s each on 2 cores).
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if not torch.allclose(actual, expected, rtol=rtol, atol=atol):
        difference = (actual.double() - expected.double()).abs().max().item()
        raise AssertionError(f'{what}: max |difference| {difference:g}')


def _assert_matches_all_reduce(tensor: torch.Tensor, grid: TorusGrid, op: str) -> None:
    expected = tensor.clone()
    dist.all_reduce(expected)
    if op == 'avg':
        expected /= dist.get_world_size()
    result = torus_all_reduce(tensor, grid, op=op)
    assert result is tensor, 'torus_all_reduce must work in place'
    what = f'{tuple(tensor.shape)} {tensor.dtype} {op}'
    _assert_close(tensor, expected, what, **TOLERANCES[tensor.dtype])


def _check_layout(grid: TorusGrid) -> None:
    rank = dist.get_rank()
    rows, cols = torus_layout(grid.x, grid.y)
    assert grid.world_size == dist.get_world_size()
    assert (grid.row, grid.col) == (rank // grid.x, rank % grid.x)
    assert dist.get_process_group_ranks(grid.row_group) == rows[grid.row]
    assert dist.get_process_group_ranks(grid.col_group) == cols[grid.col]


def _check_all_reduce(grid: TorusGrid) -> None:
    cases = [((size,), torch.float32, 'sum') for size in FLAT_SIZES]
    cases += [(shape, torch.float32, 'sum') for shape in SHAPES]
    # avg (divide, then sum) and float64 only change the arithmetic: a few shapes suffice.
    for dtype, op in ((torch.float32, 'avg'), (torch.float64, 'sum'), (torch.float64, 'avg')):
        cases += [(shape, dtype, op) for shape in ((1,), (3,), (97,), (3, 5, 7))]
    cases += [((size,), torch.int64, 'sum') for size in (1, 3, 1001)]  # exact integer sums
    for seed, (shape, dtype, op) in enumerate(cases):
        _assert_matches_all_reduce(_rank_tensor(shape, dtype, seed), grid, op)
    # Strided input: the result must land back in the original view.
    strided_cases = [(torch.float32, 'sum'), (torch.float64, 'avg')]
    for seed, (dtype, op) in enumerate(strided_cases, start=len(cases)):
        _assert_matches_all_reduce(_rank_tensor((5, 6), dtype, seed).t(), grid, op)
    empty = torch.empty(0)
    assert torus_all_reduce(empty, grid) is empty
    # fp16 averages of values whose sum overflows fp16 (max 65504): divided before summing, they stay finite.
    for dtype in (torch.float16, torch.bfloat16):
        values = torch.tensor([30000.0, -30000.0, 1.5, 0.0], dtype=dtype)
        average = torus_all_reduce(values.clone(), grid, op='avg')
        assert torch.equal(average, values), f'{dtype} avg: {average.tolist()}'


def _check_ddp_hook(grid: TorusGrid) -> None:
    """DDP with the torus hook must track DDP's default all-reduce step for step."""
    torch.manual_seed(0)  # identical initial weights on every rank
    # Odd parameter counts force bucket padding; a 1 KiB cap gives one bucket per layer.
    model = nn.Sequential(nn.Linear(30, 61), nn.ReLU(), nn.Linear(61, 33), nn.ReLU(), nn.Linear(33, 7))
    bucket_cap_mb = 1024 / 2**20
    reference = DistributedDataParallel(copy.deepcopy(model), bucket_cap_mb=bucket_cap_mb)
    torus = DistributedDataParallel(copy.deepcopy(model), bucket_cap_mb=bucket_cap_mb)
    register_torus_hook(torus, grid)

    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (reference, torus)]
    generator = torch.Generator().manual_seed(100 + dist.get_rank())  # different data per rank
    for step in range(6):
        inputs = torch.randn(16, 30, generator=generator)
        targets = torch.randn(16, 7, generator=generator)
        for ddp_model, optimizer in zip((reference, torus), optimizers):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.mse_loss(ddp_model(inputs), targets).backward()
            optimizer.step()
        for (name, expected), actual in zip(reference.named_parameters(), torus.parameters()):
            what = f'step {step}, {name}'
            _assert_close(actual.detach(), expected.detach(), what, rtol=1e-5, atol=1e-6)

    # Guard the premise: DDP really reduced several buckets (private logging API).
    assert torus._get_ddp_logging_data()['num_buckets_reduced'] >= 3

    # The torus result is replicated bit for bit, so replicas cannot drift apart.
    flat = torch.cat([p.detach().reshape(-1) for p in torus.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(other, gathered[0]) for other in gathered[1:])


def _worker(rank: int, world_size: int, store_port: int, grids: list[tuple[int, int]]) -> None:
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)
    store = dist.TCPStore('127.0.0.1', store_port, is_master=False, timeout=TIMEOUT)
    dist.init_process_group('gloo', store=store, rank=rank, world_size=world_size, timeout=TIMEOUT)
    try:
        for x, y in grids:
            grid = TorusGrid.create(x=x, y=y, timeout=TIMEOUT)
            assert (grid.x, grid.y) == (x, y)
            _check_layout(grid)
            _check_all_reduce(grid)
            _check_ddp_hook(grid)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- multi-process tests


@pytest.mark.parametrize(
    ('world_size', 'grids'),
    [(4, [(2, 2), (1, 4), (4, 1)]), (6, [(2, 3), (3, 2)])],
    ids=['4-ranks', '6-ranks'],
)
def test_torus_matches_all_reduce_and_ddp(world_size: int, grids: list[tuple[int, int]]) -> None:
    # The parent hosts the rendezvous store on a port the OS picks: no race for a free port.
    store = dist.TCPStore('127.0.0.1', 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    mp.spawn(_worker, args=(world_size, store.port, grids), nprocs=world_size, join=True)


# --------------------------------------------------------------------------- pure functions


def test_layout_rows_are_contiguous_ranks() -> None:
    rows, cols = torus_layout(3, 2)
    assert rows == [[0, 1, 2], [3, 4, 5]]
    assert cols == [[0, 3], [1, 4], [2, 5]]
    rows, cols = torus_layout(2, 3)
    assert rows == [[0, 1], [2, 3], [4, 5]]
    assert cols == [[0, 2, 4], [1, 3, 5]]


@pytest.mark.parametrize(
    ('world_size', 'local_world_size', 'expected'),
    [
        (8, 4, (4, 2)),  # rows = nodes
        (16, 8, (8, 2)),
        (2176, 4, (4, 544)),  # ABCI-like: 4 GPUs per node
        (8, None, (2, 4)),  # no torchrun: squarest grid with X <= Y
        (8, 8, (2, 4)),  # single node: X = world would be a flat ring
        (8, 1, (2, 4)),  # one rank per node: X = 1 would be a flat ring
        (12, 5, (3, 4)),  # local size does not divide the world
        (1024, None, (32, 32)),
        (2176, None, (34, 64)),
        (7, None, (1, 7)),  # prime: no 2D grid exists
        (1, None, (1, 1)),
    ],
)
def test_choose_grid_shape_automatic(world_size: int, local_world_size: int | None, expected: tuple[int, int]) -> None:
    assert choose_grid_shape(world_size, local_world_size=local_world_size) == expected


def test_choose_grid_shape_explicit() -> None:
    assert choose_grid_shape(6, x=3) == (3, 2)
    assert choose_grid_shape(6, y=3) == (2, 3)
    assert choose_grid_shape(6, x=2, y=3, local_world_size=3) == (2, 3)
    assert choose_grid_shape(8, x=8, local_world_size=4) == (8, 1)
    for bad in ({'x': 4}, {'x': 8}, {'y': 4}, {'x': 2, 'y': 2}):
        with pytest.raises(ValueError, match='x \\* y must equal the world size 6'):
            choose_grid_shape(6, **bad)
    with pytest.raises(ValueError, match='positive'):
        choose_grid_shape(6, x=0)


def test_create_needs_initialised_process_group() -> None:
    if dist.is_initialized():
        pytest.skip('a default process group already exists in this process')
    with pytest.raises(RuntimeError, match='initialised'):
        TorusGrid.create()


def test_torus_all_reduce_rejects_bad_op() -> None:
    # Arguments are validated before the grid is touched, so no process group is needed.
    no_grid: TorusGrid = None  # type: ignore[assignment]
    with pytest.raises(ValueError, match="'sum' or 'avg'"):
        torus_all_reduce(torch.ones(3), no_grid, op='max')  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='floating-point'):
        torus_all_reduce(torch.ones(3, dtype=torch.int64), no_grid, op='avg')


def test_cost_model_hand_computed() -> None:
    """N = 4 GPUs, 2 per node, M = 1000 B; torus 2x2 (rows = nodes)."""
    costs = allreduce_cost_model(
        1000,
        4,
        gpus_per_node=2,
        intra_latency_s=1.0,
        intra_bandwidth=1000.0,
        inter_latency_s=10.0,
        inter_bandwidth=100.0,
    )
    ring, hierarchical, torus = costs['ring'], costs['hierarchical'], costs['torus']
    # Ring: 2(N-1) = 6 steps of 250 B; the inter-node hop is slowest: 10 + 250/100 = 12.5 s.
    assert ring.steps == 6
    assert ring.bytes_sent_per_gpu == pytest.approx(1500)
    assert ring.time_s == pytest.approx(75.0)
    # Torus: rows 2(X-1) = 2 steps of 500 B on NVLink-like links: 1 + 0.5 = 1.5 s each;
    # columns 2(Y-1) = 2 steps of 250 B with both GPUs of a node sharing the NIC:
    # 10 + 250*2/100 = 15 s each.
    assert torus.steps == 4 == 2 * (2 + 2 - 2)
    assert torus.bytes_sent_per_gpu == pytest.approx(1500)
    assert torus.inter_node_bytes_per_gpu == pytest.approx(500)
    assert torus.time_s == pytest.approx(2 * 1.5 + 2 * 15.0)
    # Hierarchical: reduce (1 + 1000/1000 = 2 s), ring of 2 leaders (2 steps of 500 B,
    # 10 + 5 = 15 s each), broadcast (2 s). The leader sends 1000 (ring) + 1000 (bcast).
    assert hierarchical.steps == 4
    assert hierarchical.bytes_sent_per_gpu == pytest.approx(2000)
    assert hierarchical.inter_node_bytes_per_gpu == pytest.approx(1000)
    assert hierarchical.time_s == pytest.approx(2 + 30 + 2)


def test_cost_model_at_sony_scale() -> None:
    n, m = 2176, 51.2e6
    links = dict(
        gpus_per_node=4,
        intra_latency_s=1e-6,
        intra_bandwidth=50e9,
        inter_latency_s=2e-6,
        inter_bandwidth=25e9,
    )
    costs = allreduce_cost_model(m, n, torus_x=32, **links)
    assert costs['ring'].steps == 4350
    assert costs['torus'].steps == 196
    # The torus is bandwidth-optimal: it sends exactly what a flat ring sends.
    assert costs['torus'].bytes_sent_per_gpu == pytest.approx(costs['ring'].bytes_sent_per_gpu)
    assert costs['torus'].time_s < costs['ring'].time_s
    assert allreduce_cost_model(m, n, **links)['torus'].steps == 2 * (4 + 544 - 2)
    with pytest.raises(ValueError, match='torus_x'):
        allreduce_cost_model(m, n, torus_x=6, **links)
