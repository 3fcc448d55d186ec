"""Measuring models: multiply-accumulates and wall-clock timings shared by the zoo, the Cuttlefish
profiler, ``zoo.compress`` and the benchmarks."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from ._arguments import check_count
from .layers import low_rank_like, weight_matrix

__all__ = [
    'alternating_seconds',
    'count_macs',
    'inference_seconds',
    'median_seconds',
    'paired_median_seconds',
    'profile_layers',
]


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


def inference_seconds(
    models: Sequence[torch.nn.Module], inputs: torch.Tensor, repeats: int = 10, warmup: int = 2
) -> list[list[float]]:
    """Seconds of one eval-mode forward pass of each model on ``inputs`` per repeat, the models timed in turn
    (:func:`alternating_seconds`), in eager PyTorch under ``torch.inference_mode``. The one place where
    ``zoo.compress``, ``zoo compress`` and ``benchmarks/compress.py`` run a model to time it."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()

    def forward(model):
        @torch.inference_mode()
        def run():
            return model(inputs)

        return run

    try:
        return alternating_seconds([forward(model) for model in models], repeats, warmup)
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def profile_layers(
    layers: Mapping[str, torch.nn.Module],
    ranks: Mapping[str, int],
    input_shapes: Mapping[str, tuple],
    repeats: int = 7,
    mid_norm: bool = False,
    amp_dtype: torch.dtype | None = None,
    backward: bool = True,
) -> list[dict]:
    """Time each layer dense and factorized at its rank (fresh factors: timing does not depend on values) on
    a random input of its recorded shape, alternately, on the layer's device; forward + backward for training
    (under the training's autocast dtype ``amp_dtype``, if any), or the forward alone under
    ``torch.inference_mode`` with ``backward=False``. One row per layer: shape, ranks, milliseconds, speed-up
    and the factorization's share of the dense parameters."""
    rows = []
    for name, layer in layers.items():
        weight = layer.weight
        # Inside a network every layer also computes the gradient of its input; without requires_grad
        # the dense layer would skip it while the factorized pair still pays it between its factors.
        x = torch.randn(input_shapes[name], device=weight.device, dtype=weight.dtype, requires_grad=backward)
        dense, low = layer, low_rank_like(layer, ranks[name], mid_norm)
        autocast = torch.autocast(weight.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

        def step(module):
            if not backward:
                with torch.inference_mode(), autocast:
                    return module(x)
            module.zero_grad(set_to_none=True)
            x.grad = None
            with autocast:
                out = module(x)
            out.float().sum().backward()

        dense_s, low_s = paired_median_seconds(lambda: step(dense), lambda: step(low), repeats)
        dense.zero_grad(set_to_none=True)  # the dense layer may be training: leave no gradient of the timing
        m, n = weight_matrix(layer).shape
        rows.append(
            dict(
                layer=name,
                shape=f'{m}x{n}',
                full_rank=min(m, n),
                rank=ranks[name],
                dense_ms=dense_s * 1e3,
                low_rank_ms=low_s * 1e3,
                speedup=dense_s / low_s,
                params_ratio=ranks[name] * (m + n) / (m * n),
            )
        )
    return rows
