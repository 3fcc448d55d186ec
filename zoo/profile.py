"""Measuring models: multiply-accumulates and wall-clock timings shared by the zoo, the Cuttlefish
profiler and the benchmarks."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from ._arguments import check_count

__all__ = ['alternating_seconds', 'count_macs', 'median_seconds', 'paired_median_seconds']


def count_macs(model: torch.nn.Module, input_size) -> int:
    """Multiply-accumulates of one forward pass on a batch of one (torch counts a MAC as 2 FLOPs).

    Runs in eval mode (restored after), so counting never moves a BatchNorm's running statistics."""
    param = next(model.parameters())
    x = torch.zeros((1, *input_size), device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def median_seconds(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs, timed by ``torch.utils.benchmark.Timer``
    (which synchronises CUDA around each run) with the process's own thread count."""
    from torch.utils.benchmark import Timer  # imported when timing: importing it probes for a CUDA toolchain

    check_count('repeats', repeats)
    check_count('warmup', warmup, 0)
    timer = Timer(stmt='fn()', globals={'fn': fn}, num_threads=torch.get_num_threads())
    if warmup:
        timer.timeit(warmup)
    return statistics.median(timer.timeit(1).times[0] for _ in range(repeats))


def alternating_seconds(fns: Sequence[Callable[[], object]], repeats: int = 10, warmup: int = 2) -> list[list[float]]:
    """Seconds of every run of each of ``fns`` over ``repeats`` rounds, one run of each per round in turn, so
    that a change in the machine's load during the measurement affects all alike and their ratios stay
    meaningful. ``warmup`` untimed rounds come first."""
    check_count('repeats', repeats)
    check_count('warmup', warmup, 0)
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, samples in zip(fns, times):
            samples.append(median_seconds(fn, repeats=1, warmup=0))
    return times


def paired_median_seconds(
    fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int = 10, warmup: int = 2
) -> tuple[float, float]:
    """Median seconds of ``fn_a`` and ``fn_b`` timed alternately (:func:`alternating_seconds`)."""
    a, b = alternating_seconds((fn_a, fn_b), repeats, warmup)
    return statistics.median(a), statistics.median(b)
