"""``backend='auto'``: time the candidates on a probe batch on this machine and take the fastest whose outputs
stay within :data:`TOLERANCE` of eager fp32 on that probe; the choice and the figures are logged in one line."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence

import torch

from ..profile import alternating_seconds

__all__ = ['TOLERANCE', 'choose_fastest', 'output_error']

# Largest difference from eager fp32 allowed on every output, as a fraction of max(1, its largest magnitude).
TOLERANCE = {'fp32': 1e-4, 'bf16': 5e-2}
SLOWER_THAN_BEST = 4.0  # a candidate this much slower than the fastest on its first run is not timed further
ROUNDS = 3

_log = logging.getLogger('zoo.inference')


def _leaves(outputs) -> list[torch.Tensor]:
    return list(outputs.values()) if isinstance(outputs, dict) else [outputs]


def output_error(outputs, reference) -> float:
    """Largest absolute difference over all outputs, each divided by max(1, the reference output's largest
    magnitude)."""
    return max(
        float((a.detach().float() - b.detach().float()).abs().max()) / max(1.0, float(b.detach().abs().max()))
        for a, b in zip(_leaves(outputs), _leaves(reference))
    )


def choose_fastest(candidates: Sequence, probe: torch.Tensor, notes: Sequence[str], name: str):
    """The fastest of ``candidates`` (``InferenceModel``s, torch fp32 first: the reference) on ``probe`` among
    those within :data:`TOLERANCE` of it; one log line says what was chosen and why."""
    first, outputs = [], []
    for candidate in candidates:  # the outputs to check, and a rough time (after a warm-up run) to drop hopeless ones
        outputs.append(candidate(probe))
        start = time.perf_counter()
        candidate(probe)
        first.append(time.perf_counter() - start)
    errors = [output_error(out, outputs[0]) for out in outputs]
    timed = [i for i, s in enumerate(first) if s <= SLOWER_THAN_BEST * min(first)]
    samples = alternating_seconds([lambda c=candidates[i]: c(probe) for i in timed], repeats=ROUNDS, warmup=0)
    seconds = dict(zip(timed, map(statistics.median, samples)))
    within = [i for i in timed if errors[i] <= TOLERANCE[candidates[i].precision]]
    best = min(within, key=seconds.__getitem__)
    figures = []
    for i, candidate in enumerate(candidates):
        rate = f'{len(probe) / seconds[i]:.3g}/s' if i in seconds else f'{len(probe) / first[i]:.3g}/s once'
        figures.append(f'{candidate.backend} {candidate.precision} {rate} (error {errors[i]:.1e})')
    shape = 'x'.join(map(str, probe.shape))
    _log.info(
        'auto: %s %s for %s (%s; images/s on a %s probe, %d threads, error of %s)%s',
        candidates[best].backend,
        candidates[best].precision,
        name,
        ', '.join(figures),
        shape,
        candidates[best].threads,
        ', '.join(f'{p} within {t:g}' for p, t in TOLERANCE.items()),
        ''.join(f'; {note}' for note in notes),
    )
    return candidates[best]
