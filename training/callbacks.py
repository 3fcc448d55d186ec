"""Callbacks: methods that hook into the training loop (the Cuttlefish switch), built by name from a recipe.

A recipe section named like a key of ``training.registry.CALLBACKS`` (e.g. ``cuttlefish:``) enables that callback
with the section's settings; the trainer imports no method itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .registry import CALLBACKS, load

__all__ = ['Callback', 'build_callbacks']


class Callback:
    """Hooks into the training loop. Each hook is handed the running ``training.trainer.Trainer``, which this
    module does not import: the trainer depends on its callbacks, not the other way round. State returned by
    ``state_dict`` must be JSON/tensor data."""

    def on_fit_start(self, trainer) -> None:
        """A new run starts (not called when resuming; ``on_resume`` is)."""

    def on_resume(self, trainer) -> None:
        """A run was restored from a checkpoint; ``load_state_dict`` has already run."""

    def on_step_end(self, trainer, epoch: int, step: int) -> None: ...

    def after_backward(self, trainer) -> None:
        """Gradients are averaged across ranks and unscaled (AMP) here; the optimizer has not stepped."""

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def build_callbacks(recipe: Mapping[str, Any]) -> list[Callback]:
    """The callbacks a recipe enables, in ``CALLBACKS`` order."""
    return [load(target)(**recipe[section]) for section, target in CALLBACKS.items() if recipe.get(section)]
