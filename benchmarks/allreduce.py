"""Benchmark the 2D-torus all-reduce against the default ring, then model it at scale.

Part 1 spawns gloo ranks on this machine (CPU, 127.0.0.1) and times
``training.torus.torus_all_reduce`` against ``dist.all_reduce`` on the same process
group for several message sizes (median over repeats of the slowest rank's time).
gloo emulates reduce-scatter with a full all-reduce, so there the torus moves more data
than the ring and is expected to be *slower*: part 1 is a correctness/overhead check,
not a speed claim.

Part 2 evaluates ``training.torus.allreduce_cost_model`` (α-β model) for a ResNet-50
gradient on 1,024 and 2,176 V100 GPUs with ABCI-like interconnect figures.

Usage::

    python benchmarks/allreduce.py          # full run; writes benchmarks/results/allreduce.md
    python benchmarks/allreduce.py --quick  # small sizes, 4 ranks, writes nothing
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout, installed or not

from training.torus import TorusGrid, allreduce_cost_model, torus_all_reduce  # noqa: E402

TIMEOUT = timedelta(seconds=300)
KIB, MIB = 2**10, 2**20

# --------------------------------------------------------------------------- interconnect
# ABCI compute node (AIST ABCI system overview): 4x Tesla V100 SXM2 linked by NVLink2,
# 2x InfiniBand EDR HCAs. Sony's 2,176-GPU run used ABCI (NVIDIA blog on the record).
GPUS_PER_NODE = 4
# NVLink2: 25 GB/s per direction per link, 6 links per V100 (V100 whitepaper: 300 GB/s
# total bidirectional). ASSUMPTION: the 4 GPUs are fully connected with 2 links per pair.
INTRA_BANDWIDTH = 2 * 25e9
# ASSUMPTION: ~1 µs per NVLink hop (the wire is sub-µs; synchronisation dominates).
INTRA_LATENCY = 1e-6
# InfiniBand EDR: 100 Gb/s per port = 12.5 GB/s per direction; 2 ports per node. This is
# the line rate; measured throughput is a few percent lower.
INTER_BANDWIDTH = 2 * 12.5e9
# InfiniBand: ~1 µs host-to-host plus ~0.1 µs per switch; ASSUMPTION: 2 µs across the
# fat tree, which is also assumed to have full bisection bandwidth (no congestion).
INTER_LATENCY = 2e-6
# ASSUMPTION: a few µs of software cost per ring step (kernel and proxy synchronisation).
STEP_OVERHEAD = 5e-6

RESNET50_PARAMS = 25.6e6

ASSUMPTIONS = [
    'gloo emulates reduce-scatter with a full all-reduce of the whole buffer (then keeps '
    "this rank's chunk), so on gloo the torus sends more bytes than the ring: the measured "
    'ratio is expected to be > 1. It shows correctness and overhead, not the torus speed-up.',
    'All ranks share one machine with few cores; timings are loopback TCP plus CPU reduction, not a network.',
    f'Cost model: {GPUS_PER_NODE} GPUs/node; NVLink2 {INTRA_BANDWIDTH / 1e9:.0f} GB/s per '
    f'GPU pair (assumed 2 links x 25 GB/s), {INTRA_LATENCY * 1e6:.0f} µs; InfiniBand 2x EDR = '
    f'{INTER_BANDWIDTH / 1e9:.0f} GB/s per node (line rate, shared by the rings leaving the '
    f'node), {INTER_LATENCY * 1e6:.0f} µs; {STEP_OVERHEAD * 1e6:.0f} µs software overhead per '
    'step (assumed).',
    "The model ignores NCCL's multi-channel pipelining and tree algorithms, fabric "
    'congestion and reduction arithmetic; times are lower bounds for comparison only.',
    'Grid shapes: X=4 puts a row on one node (Horovod/ABCI style); 32x32 and 32x68 are '
    'squarer grids (rows span 8 nodes). The shape Sony used is not known to us.',
]


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class MeasuredRow:
    world_size: int
    grid: str
    message_bytes: int
    ring_s: float
    torus_s: float


def _slowest_rank_seconds(start: float) -> float:
    """Elapsed time since ``start`` on the slowest rank (a collective finishes with it)."""
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return elapsed.item()


def _worker(
    rank: int,
    world_size: int,
    store_port: int,
    x: int,
    plan: list[tuple[int, int]],
    result_path: str,
) -> None:
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)
    store = dist.TCPStore('127.0.0.1', store_port, is_master=False, timeout=TIMEOUT)
    dist.init_process_group('gloo', store=store, rank=rank, world_size=world_size, timeout=TIMEOUT)
    grid = TorusGrid.create(x=x, timeout=TIMEOUT)
    operations = {
        'ring': lambda t: dist.all_reduce(t),
        'torus': lambda t: torus_all_reduce(t, grid),
    }
    results: dict[int, dict[str, float]] = {}
    for message_bytes, repeats in plan:
        source = torch.randn(message_bytes // 4, generator=torch.Generator().manual_seed(rank))
        buffer = torch.empty_like(source)
        times: dict[str, list[float]] = {name: [] for name in operations}
        for repeat in range(repeats + 1):  # the first round warms up connections and caches
            for name, operation in operations.items():  # interleaved: both see the same noise
                buffer.copy_(source)
                dist.barrier()
                start = time.perf_counter()
                operation(buffer)
                elapsed = _slowest_rank_seconds(start)
                if repeat:
                    times[name].append(elapsed)
        results[message_bytes] = {name: statistics.median(t) for name, t in times.items()}
    if rank == 0:
        Path(result_path).write_text(json.dumps(results))
    dist.destroy_process_group()


def measure(world_size: int, x: int, plan: list[tuple[int, int]]) -> list[MeasuredRow]:
    """Spawn ``world_size`` gloo ranks on an ``x``-wide grid and time both all-reduces."""
    store = dist.TCPStore('127.0.0.1', 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, 'results.json')
        mp.spawn(_worker, args=(world_size, store.port, x, plan, result_path), nprocs=world_size)
        results = json.loads(Path(result_path).read_text())
    grid = f'{x}x{world_size // x}'
    return [
        MeasuredRow(world_size, grid, int(size), timing['ring'], timing['torus']) for size, timing in results.items()
    ]


def _format_bytes(num_bytes: float) -> str:
    if num_bytes >= MIB:
        return f'{num_bytes / MIB:g} MiB'
    return f'{num_bytes / KIB:g} KiB'


def measured_table(rows: list[MeasuredRow]) -> list[str]:
    lines = [
        '| ranks | grid XxY | message | ring (ms) | torus (ms) | torus / ring |',
        '|---:|:---:|---:|---:|---:|---:|',
    ]
    for row in rows:
        lines.append(
            f'| {row.world_size} | {row.grid} | {_format_bytes(row.message_bytes)} '
            f'| {row.ring_s * 1e3:.3f} | {row.torus_s * 1e3:.3f} | {row.torus_s / row.ring_s:.2f} |'
        )
    return lines


# --------------------------------------------------------------------------- cost model


def cost_model_table() -> list[str]:
    lines = [
        '| GPUs | gradient | algorithm | steps | sent/GPU (MB) | inter-node/GPU (MB) | est. time (ms) | time / ring |',
        '|---:|:---|:---|---:|---:|---:|---:|---:|',
    ]
    links = dict(
        gpus_per_node=GPUS_PER_NODE,
        intra_latency_s=INTRA_LATENCY,
        intra_bandwidth=INTRA_BANDWIDTH,
        inter_latency_s=INTER_LATENCY,
        inter_bandwidth=INTER_BANDWIDTH,
        step_overhead_s=STEP_OVERHEAD,
    )
    for num_gpus, torus_widths in ((1024, (4, 32)), (2176, (4, 32))):
        for dtype, bytes_per_param in (('fp16', 2), ('fp32', 4)):
            message_bytes = RESNET50_PARAMS * bytes_per_param
            base = allreduce_cost_model(message_bytes, num_gpus, **links)
            costs = [base['ring'], base['hierarchical']] + [
                allreduce_cost_model(message_bytes, num_gpus, torus_x=x, **links)['torus'] for x in torus_widths
            ]
            gradient = f'ResNet-50 {dtype} ({message_bytes / 1e6:.1f} MB)'
            for cost in costs:
                lines.append(
                    f'| {num_gpus} | {gradient} | {cost.algorithm} | {cost.steps} '
                    f'| {cost.bytes_sent_per_gpu / 1e6:.1f} '
                    f'| {cost.inter_node_bytes_per_gpu / 1e6:.2f} '
                    f'| {cost.time_s * 1e3:.2f} | {cost.time_s / base["ring"].time_s:.2f} |'
                )
    return lines


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small sizes, 4 ranks, no results file')
    parser.add_argument('--output', type=Path, default=REPO_ROOT / 'benchmarks' / 'results' / 'allreduce.md')
    args = parser.parse_args()

    if args.quick:
        configs = [(4, 2)]
        plan = [(4 * KIB, 5), (64 * KIB, 5), (1 * MIB, 3)]
    else:
        configs = [(4, 2), (6, 2)]
        # Fewer repeats for big messages keep the run to a couple of minutes on 2 cores.
        plan = [(4 * KIB, 20), (64 * KIB, 20), (1 * MIB, 10), (16 * MIB, 5), (64 * MIB, 3)]

    started = time.perf_counter()
    measured: list[MeasuredRow] = []
    for world_size, x in configs:
        print(f'timing {world_size} gloo ranks as {x}x{world_size // x} ...', flush=True)
        measured += measure(world_size, x, plan)

    header = (
        f'torch {torch.__version__}, gloo on {platform.machine()} with {os.cpu_count()} CPU cores, '
        f'float32, median of {min(r for _, r in plan)}-{max(r for _, r in plan)} repeats '
        '(slowest rank), after one warm-up round'
    )
    report = [
        '# 2D-torus all-reduce benchmark',
        '',
        '## Measured: torus_all_reduce vs dist.all_reduce (gloo)',
        '',
        header,
        '',
        *measured_table(measured),
        '',
        '## Cost model: ring vs hierarchical vs 2D torus (α-β)',
        '',
        *cost_model_table(),
        '',
        '## Notes and assumptions',
        '',
        *[f'- {note}' for note in ASSUMPTIONS],
        '',
    ]
    text = '\n'.join(report)
    print()
    print(text)
    print(f'(benchmark took {time.perf_counter() - started:.0f} s)')
    if not args.quick:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f'wrote {args.output.relative_to(REPO_ROOT)}')


if __name__ == '__main__':
    main()
