"""Cuttlefish (Wang et al., MLSys 2023, arXiv:2305.02538): train full-rank, watch every layer's stable
rank, and switch to low-rank layers once all of them have stopped moving.

The rules, as the authors' code implements them:

* stable rank ``sr(W) = floor(Σσᵢ² / σ_max²)`` of the ``(C_out, C_in·k·k)`` weight matrix;
* scaled rank ``r = min(full, ceil(ξ · sr(W)))`` with ``ξ = min(m, n) / sr(W at initialisation)``,
  so a random matrix maps to full rank; optionally at least ``floor · full``;
* a layer has converged when the mean of the last ``N`` values of ``|d/dt EMA(sr)|`` (EMA span ``w``,
  the pandas ``ewm(span=w)`` average) is at most ``ε`` rank per epoch; ``ε`` is relaxed when only a few
  layers are still moving; once converged a layer stays converged;
* when every tracked layer has converged at the end of epoch ``e``, the network is factorized by
  truncated SVD at the scaled ranks and trains low-rank from epoch ``e + 1``: a fresh optimizer
  (momentum reset), a warmup restart if the learning rate has not been decayed yet, and Frobenius
  decay (λ = 1e-4 on the product ``U Vᵀ``) instead of weight decay on the factors.

Where the original hard-codes which layers to factorize ("K"), ``CuttlefishSwitch`` measures it:
each candidate layer is timed dense and factorized (forward + backward, at the rank it would get, on
the training device and per-rank batch, median of repeats) and stays dense unless factorizing is
faster. The decision table is logged, saved in the checkpoint and written next to a CSV and a PNG
plot of every layer's scaled stable rank per epoch.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

import zoo
from zoo.layers import (
    LowRankLayer,
    add_frobenius_decay_,
    factorizable_layers,
    factorize_,
    full_rank,
    low_rank_like,
    weight_matrix,
)
from zoo.profile import paired_median_seconds

from .callbacks import Callback

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ['PRESETS', 'stable_rank', 'scaled_rank', 'ema', 'has_converged', 'profile_layers', 'CuttlefishSwitch']

_log = logging.getLogger('training.cuttlefish')

# (window w, last N, epsilon, [(at most this many layers still moving, relaxed epsilon), ...], rank floor)
PRESETS = {
    # ResNet-18 / VGG-19 on CIFAR (utils.py of the authors' code)
    'cifar': dict(window=15, last_n=11, epsilon=0.1, relaxed=[[2, 0.25], [1, 0.5]], floor=0.0),
    # ResNet-50 / WRN-50-2 on ImageNet
    'imagenet': dict(window=5, last_n=5, epsilon=0.33, relaxed=[[6, 0.825], [3, 1.65]], floor=0.2),
    # DeiT / ResMLP
    'vit': dict(window=5, last_n=5, epsilon=0.411, relaxed=[[9, 1.03], [4, 2.06]], floor=0.5),
    # Ours, for runs of a few epochs on a CPU (the bundled Fashion-MNIST recipes); not from the paper.
    'short': dict(window=3, last_n=3, epsilon=1.0, relaxed=[[2, 2.0], [1, 3.0]], floor=0.0),
}


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
    rank = min(full, math.ceil(xi * sr))
    return max(rank, int(math.floor(floor * full)), 1)


def ema(values: Sequence[float], span: int) -> np.ndarray:
    """Exponentially weighted mean with α = 2/(span+1), normalised by the weights seen so far
    (pandas ``Series.ewm(span=span).mean()``, ``adjust=True``)."""
    alpha = 2 / (span + 1)
    out, num, den = [], 0.0, 0.0
    for v in values:
        num = num * (1 - alpha) + v
        den = den * (1 - alpha) + 1
        out.append(num / den)
    return np.asarray(out)


def has_converged(history: Sequence[float], window: int, last_n: int, epsilon: float) -> bool:
    """Mean |gradient| of the EMA-smoothed history over its last ``last_n`` points is ≤ ``epsilon``."""
    if len(history) < max(window, last_n, 2):
        return False
    slope = np.abs(np.gradient(ema(history, window)))
    return float(slope[-last_n:].mean()) <= epsilon


def _relaxed_epsilon(epsilon: float, relaxed: Iterable[Sequence[float]], still_moving: int) -> float:
    for at_most, value in sorted(relaxed, key=lambda r: -r[0]):
        if still_moving <= at_most:
            epsilon = max(epsilon, value)
    return epsilon


def profile_layers(
    layers: dict[str, nn.Module],
    ranks: dict[str, int],
    input_shapes: dict[str, tuple],
    repeats: int = 7,
    mid_norm: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> list[dict]:
    """Time forward + backward of each layer dense and factorized at its rank on its recorded input,
    under the training's autocast dtype (``amp_dtype``) if it uses one."""
    rows = []
    for name, layer in layers.items():
        device = layer.weight.device
        # Inside a network every layer also computes the gradient of its input; without requires_grad
        # the dense layer would skip it while the factorized pair still pays it between its factors.
        x = torch.randn(input_shapes[name], device=device, requires_grad=True)
        dense, low = layer, low_rank_like(layer, ranks[name], mid_norm)

        def step(module):
            module.zero_grad(set_to_none=True)
            x.grad = None
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = module(x)
            out.float().sum().backward()

        dense_s, low_s = paired_median_seconds(lambda: step(dense), lambda: step(low), repeats)
        dense.zero_grad(set_to_none=True)
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


class CuttlefishSwitch(Callback):
    """The stable-rank tracker and automatic full-to-low-rank switch, as a trainer callback.

    Args:
        preset: ``'cifar'``, ``'imagenet'``, ``'vit'`` or ``'short'``; the other arguments override it.
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
            step-decay milestone (the authors' CIFAR rule); a switch that factorizes nothing changes nothing.
        scale: ``True`` uses the scaled stable rank ξ·sr (the paper's default), ``False`` plain sr.
    """

    def __init__(
        self,
        preset: str = 'cifar',
        window: int | None = None,
        last_n: int | None = None,
        epsilon: float | None = None,
        relaxed: list | None = None,
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
            raise ValueError(f'unknown Cuttlefish preset {preset!r}; available: {sorted(PRESETS)}')
        if frobenius_decay and low_rank_bn:
            raise ValueError(
                'Frobenius decay and a BatchNorm between the factors are mutually exclusive '
                '(as in the original code): set frobenius_decay: 0 or low_rank_bn: false'
            )
        settings = dict(PRESETS[preset])
        for key, value in dict(window=window, last_n=last_n, epsilon=epsilon, relaxed=relaxed, floor=floor).items():
            if value is not None:
                settings[key] = value
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
        self.profile_repeats = profile_repeats
        self.xi: dict[str, float] = {}
        self.full: dict[str, int] = {}
        self.history: dict[str, list[int]] = {}
        self.converged_at: dict[str, int] = {}
        self.switch_epoch: int | None = None
        self.decisions: list[dict] = []
        self._input_shapes: dict[str, tuple] = {}
        self._hooks: list = []

    # ------------------------------------------------------------------------------------ tracking

    @staticmethod
    def _select(model: nn.Module, spec: str | Sequence[str]) -> dict[str, nn.Module]:
        if spec == 'paper':
            return factorizable_layers(model, model.low_rank_candidates())
        if spec == 'all':
            cfg = getattr(model, 'pretrained_cfg', {})
            stem_and_head = [cfg.get('first_conv') or (), cfg.get('classifier') or ()]
            skip = {name for names in stem_and_head for name in ((names,) if isinstance(names, str) else names)}
            return {n: m for n, m in factorizable_layers(model).items() if n not in skip}
        # A single name or pattern is one entry, not a sequence of characters.
        return factorizable_layers(model, [spec] if isinstance(spec, str) else spec)

    def _candidates(self, model: nn.Module) -> dict[str, nn.Module]:
        return self._select(model, self.settings['layers'])

    def _deciders(self, model: nn.Module) -> dict[str, nn.Module]:
        return self._select(model, self.settings.get('track') or self.settings['layers'])

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
                f'Cuttlefish needs an architecture that takes per-layer ranks (the cf_* models); '
                f'{trainer.model_name} does not: {e}'
            ) from e
        # "Epoch -1": ξ from the initial weights, so that a random matrix maps to full rank.
        for name, layer in self._tracked(trainer.model).items():
            self.full[name] = full_rank(layer)
            self.xi[name] = self.full[name] / max(stable_rank(weight_matrix(layer)), 1)
            self.history[name] = []
        self._record_input_shapes(trainer.model)

    def _rank(self, name: str, sr: int) -> int:
        xi = self.xi[name] if self.settings['scale'] else 1.0
        return scaled_rank(sr, xi, self.full[name], self.settings['floor'])

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict) -> None:
        if self.switch_epoch is not None:
            return
        layers = self._tracked(trainer.model)
        # Rank 0 measures and every rank takes its numbers, so all ranks decide the switch identically.
        ranks = torch.tensor(
            [stable_rank(weight_matrix(layer)) if trainer.ctx.is_main else 0 for layer in layers.values()],
            dtype=torch.int64,
        )
        for name, sr in zip(layers, trainer.ctx.broadcast_tensor(ranks).tolist()):
            self.history[name].append(int(sr))
        deciders = list(self._deciders(trainer.model))
        still_moving = [n for n in deciders if n not in self.converged_at]
        epsilon = _relaxed_epsilon(self.settings['epsilon'], self.settings['relaxed'], len(still_moving))
        for name in still_moving:
            if has_converged(self.history[name], self.settings['window'], self.settings['last_n'], epsilon):
                self.converged_at[name] = epoch
        metrics['cf_converged'] = len(self.converged_at) / max(len(deciders), 1)
        if len(self.converged_at) == len(deciders):
            self._switch(trainer, epoch, self._candidates(trainer.model))
            metrics['cf_switched'] = 1
        if trainer.ctx.is_main:
            self.write_report(trainer.run_dir / 'cuttlefish')

    # ------------------------------------------------------------------------------------ switching

    def _decide(self, layers: dict[str, nn.Module], amp_dtype: torch.dtype | None = None) -> dict[str, int]:
        ranks = {n: self._rank(n, self.history[n][-1]) for n in layers}
        smaller = {
            n: r
            for n, r in ranks.items()
            if r * sum(weight_matrix(layers[n]).shape) < math.prod(weight_matrix(layers[n]).shape)
        }
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
        self.switch_epoch = epoch + 1
        if not chosen:
            # Nothing to factorize: the network and its training go on exactly as before.
            if trainer.ctx.is_main:
                _log.info(
                    'Cuttlefish: the tracked layers converged after epoch %d; no factorization of the %d '
                    'candidates is smaller and faster, so the network stays dense',
                    epoch,
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
                'Cuttlefish: the tracked layers converged after epoch %d; factorized %d of %d candidates, '
                'params %s -> %s (%.2fx smaller); learning-rate warmup %s',
                epoch,
                len(chosen),
                len(layers),
                f'{before:,}',
                f'{after:,}',
                before / after,
                'restarted' if rewarmed else 'not restarted',
            )

    def after_backward(self, trainer: Trainer) -> None:
        strength = self.settings['frobenius_decay']
        if self.switch_epoch is None or not strength:
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
            decisions=self.decisions,
            input_shapes={k: list(v) for k, v in self._input_shapes.items()},
        )

    def load_state_dict(self, state: dict) -> None:
        self.settings = state['settings']
        self.xi, self.full, self.history = state['xi'], state['full'], state['history']
        self.converged_at, self.switch_epoch = state['converged_at'], state['switch_epoch']
        self.decisions = state['decisions']
        self._input_shapes = {k: tuple(v) for k, v in state['input_shapes'].items()}

    def on_resume(self, trainer: Trainer) -> None:
        if self.switch_epoch is None:
            self._record_input_shapes(trainer.model)

    def write_report(self, folder: Path) -> None:
        """``stable_ranks.csv``, ``stable_ranks.png`` and (after the switch) ``decisions.csv``."""
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / 'stable_ranks.csv', 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['epoch', 'layer', 'stable_rank', 'scaled_rank', 'full_rank', 'converged'])
            for name, history in self.history.items():
                for epoch, sr in enumerate(history):
                    converged = name in self.converged_at and epoch >= self.converged_at[name]
                    writer.writerow([epoch, name, sr, self._rank(name, sr), self.full[name], int(converged)])
        if self.decisions:
            keys = list(dict.fromkeys(k for row in self.decisions for k in row))
            with open(folder / 'decisions.csv', 'w', newline='') as f:
                writer = csv.DictWriter(f, keys)
                writer.writeheader()
                writer.writerows(self.decisions)
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
        if self.switch_epoch is not None:
            ax.axvline(self.switch_epoch - 0.5, color='k', ls='--', lw=1.2, label=f'switch (epoch {self.switch_epoch})')
        ax.set_xlabel('epoch')
        ax.set_ylabel('scaled stable rank / full rank' if self.settings['scale'] else 'stable rank / full rank')
        ax.set_ylim(0, 1.05)
        ax.set_title('Cuttlefish: per-layer rank estimates')
        ax.grid(alpha=0.3)
        if len(self.history) <= 16:
            ax.legend(fontsize=6, ncol=2, loc='lower left')
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
