"""Cuttlefish (Wang et al., MLSys 2023, arXiv:2305.02538): train full-rank, watch every layer's stable
rank, and switch to low-rank layers once all of them have stopped moving.

When to switch follows the authors' code (github:hwang595/Cuttlefish@71637aa: ``utils.py`` + ``main.py``
for CIFAR, ``cuttlefish_imagenet_training.py`` for ImageNet, ``cuttlefish_deit/main.py`` for DeiT);
``SwitchRule`` reproduces the switch epoch of their code on reference stable-rank histories exactly
(tests/training/test_cuttlefish_oracle.py), and ``CuttlefishSwitch`` runs that rule inside training:

* stable rank ``sr(W) = floor(Σσᵢ² / σ_max²)`` of the ``(C_out, C_in·k·k)`` weight matrix; a layer's
  history starts with its stable rank at initialisation (entry ``k`` = after ``k`` training epochs);
* smoothing: the authors' recursive EMA seeded with the first entry, ``ema[0] = sr[0]``,
  ``ema[i] = sr[i]·α + ema[i−1]·(1−α)``, ``α = 2/(w+1)``;
* a layer is stable when the mean of the last ``N`` values of ``|np.gradient(ema)|`` is at most ``ε``;
  ``ε`` is relaxed while only a few layers are not yet stable (counted once per estimate, before any
  layer is examined); a stable layer stays stable; every tracked layer stable means switch;
* timing: an estimate belongs to a training epoch ``e`` and finds nothing stable while ``e < w``; when
  it finds every layer stable the network trains low-rank from epoch ``e + 1``. ``cifar``
  (``estimate_at='epoch_start'``) estimates at the start of epoch ``e`` on the weights after ``e``
  epochs, so epoch ``e`` still trains full-rank (earliest switch: epoch 16); ``imagenet`` and ``vit``
  (``'epoch_end'``) estimate after training epoch ``e`` (earliest switch: epoch 6);
* ranks, from the weights at the switch: ``r = min(full, ceil(ξ·sr))`` with ``ξ = min(m, n) / sr(W at
  initialisation)``, so a random matrix maps to full rank, and at least ``floor·full`` (``imagenet`` 1/5,
  ``vit`` 1/2); ``scale=False`` takes the plain stable rank without a floor (the authors'
  ``vanilla-stable-rank``);
* at the switch each layer is factorized by truncated SVD (``√Σ`` in both factors) and training goes on
  with a fresh optimizer; the CIFAR recipes add Frobenius decay (λ = 1e-4 on ``U Vᵀ``) on the factors
  instead of weight decay, the ImageNet ResNet recipe a BatchNorm between the factors.

Presets: ``cifar`` w=15, N=11, ε=0.1 (0.1·2.5 with exactly 2 layers not yet stable, 0.1·5 with 1), no
floor; ``imagenet`` w=5, N=5, ε=0.33 (0.33·2.5 with 4-6, 0.33·5 with 0-3), floor 1/5; ``vit`` w=5, N=5,
ε=0.411 (0.411·2.5 with 5-9, 0.411·5 with 0-4), floor 1/2. ``short`` is ours, not the paper's: the same
rule with numbers that let the bundled ten-epoch Fashion-MNIST recipes switch.

Where this module deviates from the authors' code, on purpose:

* which layers are factorized: ``profile`` times each candidate dense and factorized (forward + backward,
  at the rank it would get, on the training device and per-rank batch, median of repeats; the decision
  table is logged, checkpointed and written next to a CSV and PNG of every layer's rank per epoch) and
  keeps it dense unless it is at least ``min_speedup`` faster; a layer whose factorization would not be
  smaller always stays dense. The authors factorize a hard-coded set regardless of size or speed
  (``layers='paper', profile=False`` is that set, less any layer that would not get smaller);
* ξ is paired with its own layer. The authors' ImageNet ResNet and DeiT code pairs it with a shifted
  layer (a bug): in ResNet-50's layer4, every conv of blocks 1 and 2 uses the ξ of the conv before it in
  state-dict order, and the downsample and ``layer4.0.conv3`` get each other's cap and floor; in DeiT,
  the i-th of the factorized qkv/fc1/fc2 layers uses the ξ of the i-th of qkv/proj/fc1/fc2, so only
  ``blocks.0.attn.qkv`` gets its own;
* Frobenius decay goes on every factorized layer; the authors' CIFAR ResNet-18 gives it to the 10
  tracked layers only and plain weight decay (1e-4 per factor) to the factors of ``layer2.0``;
* ``low_rank_bn`` also puts a BatchNorm between the factors of ResNet-50's downsample (the authors'
  has none there), whose stride sits on the first factor (theirs: on the second; the same function);
* DeiT's first factor has no bias (the authors': a trainable bias, initialised to zero);
* SVD and stable rank in float64 (the authors': float32 singular values; the stable rank can differ only
  at an exactly integer ratio);
* ranks are capped at full rank; the authors' cap compares ``int(ξ·sr)`` and can return full rank + 1;
  their CIFAR ``vanilla-stable-rank`` returns the full rank when ``int(ξ·sr)`` exceeds it, ours ``sr``;
* the learning rate at the switch: ``rewarm`` restarts the recipe's warmup (per step) only before its
  first step-decay milestone. The authors' CIFAR code restarts at the base rate with a per-epoch warmup,
  also after a milestone (then one epoch at 0.1); their ImageNet code restarts at 0.1 with the original
  absolute milestones (so a switch after epoch 30 goes back to 0.1); their DeiT code starts a new cosine
  schedule at the batch-scaled rate scaled by batch/512 a second time and divided by 3, whose warmup trains
  the switch epoch at 1e-6. Here the schedule goes on.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

import zoo
from zoo.io import atomic_write_bytes
from zoo.layers import (
    LowRankLayer,
    add_frobenius_decay_,
    factorization_is_smaller,
    factorize_,
    full_rank,
    scaled_rank,
    select_layers,
    stable_rank,
    weight_matrix,
)
from zoo.profile import profile_layers

from .callbacks import Callback
from .errors import RecipeError

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    'PRESETS',
    'SwitchRule',
    'ema',
    'is_stable',
    'CuttlefishSwitch',
]

_log = logging.getLogger('training.cuttlefish')

# relaxed: [(at most this many tracked layers not yet stable, ε), ...], the values computed as the authors do.
PRESETS = {
    # CIFAR ResNet-18 / VGG-19: utils.py (layer_rank_stable_detector, rank_estimation) and main.py
    'cifar': dict(
        window=15,
        last_n=11,
        epsilon=0.1,
        relaxed=[[2, 0.1 * 2.5], [1, 0.1 * (2.5 * 2)]],
        estimate_at='epoch_start',
        floor=0.0,
    ),
    # ImageNet ResNet-50 / WRN-50-2: cuttlefish_imagenet_training.py
    'imagenet': dict(
        window=5,
        last_n=5,
        epsilon=0.33,
        relaxed=[[6, 0.33 * 2.5], [3, 0.33 * (2.5 * 2)]],
        estimate_at='epoch_end',
        floor=1 / 5,
    ),
    # DeiT / ResMLP: cuttlefish_deit/main.py
    'vit': dict(
        window=5,
        last_n=5,
        epsilon=0.411,
        relaxed=[[9, 0.411 * 2.5], [4, 0.411 * (2.5 * 2)]],
        estimate_at='epoch_end',
        floor=0.5,
    ),
    # Ours, not the paper's: for the bundled ten-epoch Fashion-MNIST recipes on a CPU.
    'short': dict(
        window=3,
        last_n=3,
        epsilon=2.0,
        relaxed=[[2, 2.0 * 2.5], [1, 2.0 * (2.5 * 2)]],
        estimate_at='epoch_end',
        floor=0.0,
    ),
}
_RULE_KEYS = ('window', 'last_n', 'epsilon', 'relaxed', 'estimate_at')


def ema(values: Sequence[float], span: int) -> np.ndarray:
    """The authors' exponential moving average: seeded with the first value, then
    ``ema[i] = values[i]·α + ema[i−1]·(1−α)`` with ``α = 2/(span+1)`` (pandas ``ewm(adjust=False)``)."""
    alpha = 2 / (span + 1)
    out = np.empty(len(values))
    out[0] = values[0]
    for i in range(1, len(values)):
        out[i] = values[i] * alpha + out[i - 1] * (1 - alpha)
    return out


def is_stable(history: Sequence[float], window: int, last_n: int, threshold: float) -> bool:
    """The mean of the last ``last_n`` values of ``|gradient(ema(history, window))|`` is at most ``threshold``."""
    slope = np.absolute(np.gradient(ema(history, window)))
    return bool(np.mean(slope[-last_n:]) <= threshold)


@dataclass(frozen=True)
class SwitchRule:
    """When the authors' code switches to low rank, as a pure function of the stable-rank histories.

    Args:
        window: EMA span ``w``, also the first training epoch whose estimate may find a layer stable.
        last_n: how many of the last smoothed slopes are averaged.
        epsilon: the largest mean slope (rank per epoch) of a stable layer.
        relaxed: ``[(k, ε_k), ...]``: ε_k applies while at most ``k`` tracked layers are not yet stable
            (the smallest such ``k`` wins).
        estimate_at: ``'epoch_start'`` (CIFAR: the estimate in epoch ``e`` runs before training it, on
            entries ``0..e``) or ``'epoch_end'`` (ImageNet, DeiT: after training it, on entries ``0..e+1``).
    """

    window: int
    last_n: int
    epsilon: float
    relaxed: tuple[tuple[int, float], ...] = ()
    estimate_at: str = 'epoch_end'

    def __post_init__(self):
        if self.estimate_at not in ('epoch_start', 'epoch_end'):
            raise RecipeError(f"cuttlefish.estimate_at must be 'epoch_start' or 'epoch_end', got {self.estimate_at!r}")
        if self.window < 1 or self.last_n < 1:
            raise RecipeError(f'cuttlefish.window and last_n must be at least 1, got {self.window} and {self.last_n}')
        if not all(0 <= eps < math.inf for eps in (self.epsilon, *(e for _, e in self.relaxed))):
            raise RecipeError(f'cuttlefish.epsilon and relaxed thresholds must be finite and >= 0, got {self.epsilon}')
        object.__setattr__(self, 'relaxed', tuple(sorted((int(k), float(e)) for k, e in self.relaxed)))

    @classmethod
    def from_settings(cls, settings: Mapping) -> SwitchRule:
        return cls(**{key: settings[key] for key in _RULE_KEYS})

    def threshold(self, not_stable: int) -> float:
        return next((eps for at_most, eps in self.relaxed if not_stable <= at_most), self.epsilon)

    def estimate(self, histories: Mapping[Hashable, Sequence[float]], stable: set) -> int | None:
        """One of the authors' rank estimates, once entries ``0..k`` of every tracked layer are known.

        Adds the layers it finds stable to ``stable`` and returns the first epoch to train low-rank once
        every layer is stable, else ``None``. Call it once per new entry, from entry 0 on.
        """
        k = len(next(iter(histories.values()))) - 1
        epoch = k if self.estimate_at == 'epoch_start' else k - 1  # the training epoch this estimate belongs to
        threshold = self.threshold(len(histories) - len(stable))
        if epoch >= self.window:
            stable.update(
                name
                for name, history in histories.items()
                if name not in stable and is_stable(history, self.window, self.last_n, threshold)
            )
        return epoch + 1 if len(stable) == len(histories) else None

    def switch_epoch(self, stable_ranks: Sequence[Sequence[float]]) -> int | None:
        """The first low-rank epoch for ``stable_ranks[k][i]`` (layer ``i`` after ``k`` epochs; ``k = 0`` is
        the network at initialisation), or ``None`` if these entries do not decide a switch."""
        histories: dict[int, list[float]] = {i: [] for i in range(len(stable_ranks[0]))}
        stable: set[int] = set()
        for entry in stable_ranks:
            for i, sr in enumerate(entry):
                histories[i].append(sr)
            switch = self.estimate(histories, stable)
            if switch is not None:
                return switch
        return None


class CuttlefishSwitch(Callback):
    """The stable-rank tracker and automatic full-to-low-rank switch, as a trainer callback.

    Args:
        preset: ``'cifar'``, ``'imagenet'``, ``'vit'`` (the authors' settings) or ``'short'`` (ours); the
            next six arguments override it (see ``SwitchRule``; ``floor`` is the rank floor as a fraction
            of full rank).
        layers: the layers that may be factorized: ``'all'`` (every dense conv/linear except the stem
            and the classifier), ``'paper'`` (the model's ``low_rank_candidates()``, the original
            hand-picked set) or a list of names or shell-style patterns (``'blocks.*.mlp.fc*'``).
        track: the layers whose convergence decides the switch, in the same forms (default: ``layers``).
            The authors track a different set than they factorize: for CIFAR ResNet-18 the 10 convs of
            layer2.1-layer4.1, for DeiT qkv, proj, fc1 and fc2 of every block (proj stays dense).
        profile: time each candidate and keep it dense unless factorizing is at least
            ``min_speedup`` times faster (a 5 % margin by default, above timing noise);
            ``False`` factorizes every candidate that gets smaller.
        frobenius_decay: λ of Frobenius decay on the factors after the switch (0 disables it and
            keeps ordinary weight decay on them).
        low_rank_bn: BatchNorm between the factors (the paper's alternative to Frobenius decay).
        rewarm: restart the recipe's warmup at the switch, if the schedule has not passed its first
            step-decay milestone; a switch that factorizes nothing changes nothing.
        scale: ``True`` uses the scaled stable rank ξ·sr (the paper's default), ``False`` plain sr.

    ``history[name][k]`` is the layer's stable rank after ``k`` epochs (``k = 0``: at initialisation);
    ``switch_epoch`` is the first low-rank epoch once decided (with ``estimate_at='epoch_start'`` that is
    one epoch before it happens), ``switched`` whether the network has been factorized.
    """

    def __init__(
        self,
        preset: str = 'cifar',
        window: int | None = None,
        last_n: int | None = None,
        epsilon: float | None = None,
        relaxed: list | None = None,
        estimate_at: str | None = None,
        floor: float | None = None,
        layers: str | Sequence[str] = 'all',
        track: str | Sequence[str] | None = None,
        profile: bool = True,
        min_speedup: float = 1.05,
        profile_repeats: int = 7,
        frobenius_decay: float = 1e-4,
        low_rank_bn: bool = False,
        rewarm: bool = True,
        scale: bool = True,
    ):
        if preset not in PRESETS:
            raise RecipeError(f'unknown Cuttlefish preset {preset!r}; available: {sorted(PRESETS)}')
        if not 0 <= frobenius_decay < math.inf:
            raise RecipeError(f'cuttlefish.frobenius_decay must be a finite number >= 0, got {frobenius_decay}')
        if not 0 < min_speedup < math.inf or profile_repeats < 1:
            raise RecipeError(
                f'cuttlefish.min_speedup must be a finite number > 0 and profile_repeats at least 1, got '
                f'{min_speedup} and {profile_repeats}'
            )
        if floor is not None and not 0 <= floor <= 1:
            raise RecipeError(f'cuttlefish.floor is a fraction of full rank, from 0 to 1, got {floor}')
        if frobenius_decay and low_rank_bn:
            raise RecipeError(
                'Frobenius decay and a BatchNorm between the factors are mutually exclusive '
                '(as in the original code): set frobenius_decay: 0 or low_rank_bn: false'
            )
        overrides = dict(
            window=window, last_n=last_n, epsilon=epsilon, relaxed=relaxed, estimate_at=estimate_at, floor=floor
        )
        settings = dict(PRESETS[preset]) | {key: value for key, value in overrides.items() if value is not None}
        self.settings = dict(
            settings,
            preset=preset,
            layers=layers,
            track=track,
            profile=profile,
            min_speedup=min_speedup,
            frobenius_decay=frobenius_decay,
            low_rank_bn=low_rank_bn,
            rewarm=rewarm,
            scale=scale,
        )
        self.rule = SwitchRule.from_settings(self.settings)
        self.profile_repeats = profile_repeats
        self.xi: dict[str, float] = {}
        self.full: dict[str, int] = {}
        self.history: dict[str, list[int]] = {}
        self.converged_at: dict[str, int] = {}  # layer -> the entry whose estimate found it stable
        self.switch_epoch: int | None = None
        self.switched = False
        self.decisions: list[dict] = []
        self._input_shapes: dict[str, tuple] = {}
        self._hooks: list = []

    # ------------------------------------------------------------------------------------ tracking

    def _candidates(self, model: nn.Module) -> dict[str, nn.Module]:
        return select_layers(model, self.settings['layers'])

    def _deciders(self, model: nn.Module) -> dict[str, nn.Module]:
        return select_layers(model, self.settings.get('track') or self.settings['layers'])

    def _tracked(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every layer whose stable rank is recorded: the candidates (for their ranks) and the deciders."""
        return self._candidates(model) | self._deciders(model)

    def _record_input_shapes(self, model: nn.Module) -> None:
        def hook(name):
            def record(_module, args):
                self._input_shapes.setdefault(name, tuple(args[0].shape))

            return record

        self._hooks = [m.register_forward_pre_hook(hook(n)) for n, m in self._candidates(model).items()]

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def on_fit_start(self, trainer: Trainer) -> None:
        # Fail now, not after the switch, if the architecture cannot be rebuilt with per-layer ranks.
        try:
            with torch.device('meta'):
                zoo.create_model(trainer.model_name, **dict(trainer.model_args, ranks={}))
        except TypeError as e:
            raise ValueError(
                f'Cuttlefish needs an architecture that takes per-layer ranks (every zoo family does); '
                f'{trainer.model_name} does not: {e}'
            ) from e
        if not self._deciders(trainer.model):
            raise RecipeError(f'cuttlefish: no layer of {trainer.model_name} to track; set cuttlefish.track')
        layers = self._tracked(trainer.model)
        self.full = {name: full_rank(layer) for name, layer in layers.items()}
        self.history = {name: [] for name in layers}
        # Entry 0 is the network at initialisation (the authors' "epoch -1" estimate); ξ comes from it, so
        # that a random matrix maps to full rank.
        self._estimate(trainer)
        self.xi = {name: self.full[name] / max(self.history[name][0], 1) for name in layers}
        self._record_input_shapes(trainer.model)

    def _estimate(self, trainer: Trainer) -> None:
        """Append every tracked layer's stable rank and, until the switch is decided, run the rule on it."""
        layers = self._tracked(trainer.model)
        # Rank 0 measures and every rank takes its numbers, so all ranks decide the switch identically.
        ranks = torch.tensor(
            [stable_rank(weight_matrix(layer)) if trainer.ctx.is_main else 0 for layer in layers.values()],
            dtype=torch.int64,
        )
        for name, sr in zip(layers, trainer.ctx.broadcast_tensor(ranks).tolist()):
            self.history[name].append(int(sr))
        if self.switch_epoch is None:
            entry = len(self.history[next(iter(layers))]) - 1
            stable = set(self.converged_at)
            self.switch_epoch = self.rule.estimate({n: self.history[n] for n in self._deciders(trainer.model)}, stable)
            self.converged_at |= {name: entry for name in stable - set(self.converged_at)}

    def _rank(self, name: str, sr: int) -> int:
        if not self.settings['scale']:
            return max(sr, 1)
        return scaled_rank(sr, self.xi[name], self.full[name], self.settings['floor'])

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict) -> None:
        if self.switched:
            return
        self._estimate(trainer)  # entry epoch + 1: the weights after this epoch
        metrics['cf_converged'] = len(self.converged_at) / len(self._deciders(trainer.model))
        if self.switch_epoch == epoch + 1:
            self._switch(trainer, epoch, self._candidates(trainer.model))
            metrics['cf_switched'] = 1
        if trainer.ctx.is_main:
            self.write_report(trainer.run_dir / 'cuttlefish')

    # ------------------------------------------------------------------------------------ switching

    def _decide(self, layers: dict[str, nn.Module], amp_dtype: torch.dtype | None = None) -> dict[str, int]:
        ranks = {n: self._rank(n, self.history[n][-1]) for n in layers}
        smaller = {n: r for n, r in ranks.items() if factorization_is_smaller(layers[n], r)}
        if self.settings['profile'] and smaller:
            # The timing inputs must not move the training's random stream (data order, augmentation).
            devices = [layer.weight.device for layer in layers.values() if layer.weight.is_cuda][:1]
            with torch.random.fork_rng(devices=devices):
                rows = profile_layers(
                    {n: layers[n] for n in smaller},
                    smaller,
                    self._input_shapes,
                    self.profile_repeats,
                    self.settings['low_rank_bn'],
                    amp_dtype,
                )
        else:
            rows = [dict(layer=n, rank=r, full_rank=self.full[n]) for n, r in smaller.items()]
        chosen = {}
        for row in rows:
            row['factorize'] = not self.settings['profile'] or row['speedup'] >= self.settings['min_speedup']
            if row['factorize']:
                chosen[row['layer']] = row['rank']
        skipped = [
            dict(layer=n, rank=r, full_rank=self.full[n], factorize=False, note='not smaller')
            for n, r in ranks.items()
            if n not in smaller
        ]
        self.decisions = rows + skipped
        return chosen

    def _switch(self, trainer: Trainer, epoch: int, layers: dict[str, nn.Module]) -> None:
        chosen = self._decide(layers, trainer.amp_dtype) if trainer.ctx.is_main else {}
        # Timings differ between ranks: rank 0 decides and every rank applies its decision.
        names = list(layers)
        decision = torch.tensor([chosen.get(n, 0) for n in names], dtype=torch.int64)
        decision = trainer.ctx.broadcast_tensor(decision)
        chosen = {n: int(r) for n, r in zip(names, decision.tolist()) if r > 0}
        self._remove_hooks()
        self.switched = True
        stable_after = max(self.converged_at.values())
        if not chosen:
            # Nothing to factorize: the network and its training go on exactly as before.
            if trainer.ctx.is_main:
                _log.info(
                    'Cuttlefish: every tracked layer was stable after %d epochs; no factorization of the %d '
                    'candidates is smaller and faster, so the network stays dense',
                    stable_after,
                    len(layers),
                )
            return
        before = sum(p.numel() for p in trainer.model.parameters())
        factorize_(trainer.model, chosen, init='svd', mid_norm=self.settings['low_rank_bn'])
        after = sum(p.numel() for p in trainer.model.parameters())
        factors = [p for m in trainer.model.modules() if isinstance(m, LowRankLayer) for p in (m.u_weight, m.v_weight)]
        # As the authors' CIFAR code: re-warm only while the learning rate has not been decayed yet.
        milestones = trainer.lr_schedule.milestones
        rewarmed = self.settings['rewarm'] and (not milestones or epoch + 1 < min(milestones))
        trainer.architecture_changed(
            dict(trainer.model_args, ranks=chosen, **({'low_rank_bn': True} if self.settings['low_rank_bn'] else {})),
            no_weight_decay=factors if self.settings['frobenius_decay'] else (),
            restart_warmup=rewarmed,
        )
        if trainer.ctx.is_main:
            _log.info(
                'Cuttlefish: every tracked layer was stable after %d epochs; from epoch %d on, %d of %d '
                'candidates are factorized, params %s -> %s (%.2fx smaller); learning-rate warmup %s',
                stable_after,
                epoch + 1,
                len(chosen),
                len(layers),
                f'{before:,}',
                f'{after:,}',
                before / after,
                'restarted' if rewarmed else 'not restarted',
            )

    def after_backward(self, trainer: Trainer) -> None:
        strength = self.settings['frobenius_decay']
        if not self.switched or not strength:
            return
        for module in trainer.model.modules():
            if isinstance(module, LowRankLayer):
                add_frobenius_decay_(module, strength)

    # ------------------------------------------------------------------------------------ state, report

    def state_dict(self) -> dict:
        return dict(
            settings=self.settings,
            xi=self.xi,
            full=self.full,
            history=self.history,
            converged_at=self.converged_at,
            switch_epoch=self.switch_epoch,
            switched=self.switched,
            decisions=self.decisions,
            input_shapes={k: list(v) for k, v in self._input_shapes.items()},
        )

    def load_state_dict(self, state: dict) -> None:
        if 'switched' not in state:
            raise ValueError(
                'this checkpoint was written by an older Cuttlefish switch, whose stable-rank history lacks '
                'the entry at initialisation; train into a new --run-dir'
            )
        self.settings = state['settings']
        self.rule = SwitchRule.from_settings(self.settings)
        self.xi, self.full, self.history = state['xi'], state['full'], state['history']
        self.converged_at, self.switch_epoch = state['converged_at'], state['switch_epoch']
        self.switched = state['switched']
        self.decisions = state['decisions']
        self._input_shapes = {k: tuple(v) for k, v in state['input_shapes'].items()}

    def on_resume(self, trainer: Trainer) -> None:
        if not self.switched:
            self._record_input_shapes(trainer.model)

    def write_report(self, folder: Path) -> None:
        """``stable_ranks.csv``, ``stable_ranks.png`` and (after the switch) ``decisions.csv``."""
        table = io.StringIO(newline='')
        writer = csv.writer(table)
        writer.writerow(['epochs_trained', 'layer', 'stable_rank', 'rank', 'full_rank', 'stable'])
        for name, history in self.history.items():
            for trained, sr in enumerate(history):
                stable = name in self.converged_at and trained >= self.converged_at[name]
                writer.writerow([trained, name, sr, self._rank(name, sr), self.full[name], int(stable)])
        atomic_write_bytes(folder / 'stable_ranks.csv', table.getvalue().encode())
        if self.decisions:
            table = io.StringIO(newline='')
            writer = csv.DictWriter(table, list(dict.fromkeys(k for row in self.decisions for k in row)))
            writer.writeheader()
            writer.writerows(self.decisions)
            atomic_write_bytes(folder / 'decisions.csv', table.getvalue().encode())
        self.plot(folder / 'stable_ranks.png')

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        for name, history in self.history.items():
            if history:
                ax.plot(
                    range(len(history)), [self._rank(name, sr) / self.full[name] for sr in history], lw=1, label=name
                )
        if self.switched:
            ax.axvline(self.switch_epoch, color='k', ls='--', lw=1.2, label=f'low rank from epoch {self.switch_epoch}')
        ax.set_xlabel('epochs trained (0: initialisation)')
        ax.set_ylabel('scaled stable rank / full rank' if self.settings['scale'] else 'stable rank / full rank')
        ax.set_ylim(0, 1.05)
        ax.set_title('Cuttlefish: per-layer rank estimates')
        ax.grid(alpha=0.3)
        if len(self.history) <= 16:
            ax.legend(fontsize=6, ncol=2, loc='lower left')
        fig.tight_layout()
        image = io.BytesIO()
        fig.savefig(image, format='png')
        plt.close(fig)
        atomic_write_bytes(path, image.getvalue())
