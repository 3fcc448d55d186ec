"""Batch-size control and the learning-rate schedule, as pure functions of training progress.

Mikami et al. (Sony, arXiv:1811.05233) grow the global batch during training (34K → 68K) to keep
large-batch SGD stable early and fast late. ``BatchSchedule`` holds the stages; two rules couple
the learning rate to the batch:

* ``'linear'`` (Goyal et al. 2017): lr = base_lr · B(epoch) / base_batch, so a larger batch gets a
  proportionally larger step.
* ``'smith'`` (Smith et al. 2018, "Don't decay the learning rate, increase the batch size"): the
  batch grows *instead of* the learning rate decaying; lr stays at base_lr · B(0) / base_batch and
  the growth stages sit where the decay milestones would have been.

On top of that: linear warmup (restartable, e.g. after the Cuttlefish switch) and a step or cosine
decay. Because the learning rate is a function of (epoch, step) and the schedule's own fields,
resuming a run needs no scheduler state, only the position.

With DDP each rank takes ``B / world`` samples per step; when that exceeds ``max_per_rank`` the step
is split into ``accumulation`` micro-batches so memory stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ['BatchSchedule', 'LRSchedule', 'per_rank_batch']


@dataclass(frozen=True)
class BatchSchedule:
    """Global batch size per epoch: ``stages`` is ``[(start_epoch, global_batch), ...]``."""

    stages: Sequence[tuple[int, int]]
    base_batch: int  # the batch at which the optimizer's lr is specified
    rule: str = 'linear'

    def __post_init__(self):
        if self.rule not in ('linear', 'smith'):
            raise ValueError(f"batch rule must be 'linear' or 'smith', got {self.rule!r}")
        epochs = [int(e) for e, _ in self.stages]
        if not epochs or epochs[0] != 0 or epochs != sorted(set(epochs)):
            raise ValueError(f'batch stages must start at epoch 0 with increasing epochs, got {list(self.stages)}')
        if any(int(b) < 1 for _, b in self.stages):
            raise ValueError(f'batch sizes must be positive, got {list(self.stages)}')

    def global_batch(self, epoch: int) -> int:
        return int([b for e, b in self.stages if e <= epoch][-1])

    def lr_scale(self, epoch: int) -> float:
        batch = self.global_batch(epoch) if self.rule == 'linear' else self.global_batch(0)
        return batch / self.base_batch


def per_rank_batch(global_batch: int, world_size: int, max_per_rank: int | None = None) -> tuple[int, int]:
    """``(micro_batch, accumulation)`` per rank so that micro_batch · accumulation · world == global_batch."""
    if global_batch % world_size:
        raise ValueError(f'global batch {global_batch} is not divisible by the world size {world_size}')
    per_rank = global_batch // world_size
    accumulation = 1 if not max_per_rank else math.ceil(per_rank / max_per_rank)
    while per_rank % accumulation:
        accumulation += 1
    micro = per_rank // accumulation
    if max_per_rank and micro < max_per_rank // 2:
        raise ValueError(
            f'a per-rank batch of {per_rank} splits into micro-batches of at most {max_per_rank} '
            f'only as {accumulation} x {micro}; choose a global batch whose per-rank share has a '
            f'divisor near {max_per_rank}'
        )
    return micro, accumulation


@dataclass(frozen=True)
class LRSchedule:
    """lr(epoch, fraction of the epoch done) = base · batch scale · decay · warmup.

    ``decay``: ``'step'`` multiplies by ``gamma`` at each of ``milestones``; ``'cosine'`` anneals to
    ``min_factor`` over ``epochs``; ``'constant'``. Warmup ramps linearly from ``warmup_start``
    over ``warmup_epochs`` from ``warmup_from`` (0, or the epoch of a restart such as the
    Cuttlefish switch).
    """

    base_lr: float
    epochs: int
    decay: str = 'step'
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    min_factor: float = 0.0
    warmup_epochs: float = 0.0
    warmup_start: float = 0.1
    batch: BatchSchedule | None = None

    def __post_init__(self):
        if self.decay not in ('step', 'cosine', 'constant'):
            raise ValueError(f"lr decay must be 'step', 'cosine' or 'constant', got {self.decay!r}")

    def lr(self, epoch: int, progress: float = 0.0, warmup_from: int = 0) -> float:
        t = epoch + progress
        if self.decay == 'step':
            factor = self.gamma ** sum(t >= m for m in self.milestones)
        elif self.decay == 'cosine':
            factor = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * min(t / self.epochs, 1)))
        else:
            factor = 1.0
        since = t - warmup_from
        if self.warmup_epochs and since < self.warmup_epochs:
            factor *= self.warmup_start + (1 - self.warmup_start) * since / self.warmup_epochs
        scale = self.batch.lr_scale(epoch) if self.batch else 1.0
        return self.base_lr * scale * factor
