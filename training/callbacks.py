"""Callbacks: methods that hook into the training loop (the Cuttlefish switch), built by name from a recipe.

A recipe section named like a key of ``CALLBACKS`` (e.g. ``cuttlefish:``) enables that callback with the
section's settings; the trainer imports no method itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ['Callback', 'CALLBACKS', 'build_callbacks']


class Callback:
    """Hooks into the training loop. State returned by ``state_dict`` must be JSON/tensor data."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """A new run starts (not called when resuming; ``on_resume`` is)."""

    def on_resume(self, trainer: Trainer) -> None:
        """A run was restored from a checkpoint; ``load_state_dict`` has already run."""

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None: ...

    def after_backward(self, trainer: Trainer) -> None:
        """Gradients are averaged across ranks and unscaled (AMP) here; the optimizer has not stepped."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


# Recipe section -> callback class, imported when a recipe enables it.
CALLBACKS: dict[str, str] = {
    'cuttlefish': 'training.cuttlefish:CuttlefishSwitch',
}


def build_callbacks(recipe: Mapping[str, Any]) -> list[Callback]:
    """The callbacks a recipe enables, in ``CALLBACKS`` order."""
    callbacks = []
    for section, target in CALLBACKS.items():
        if recipe.get(section):
            module, _, name = target.partition(':')
            callbacks.append(getattr(importlib.import_module(module), name)(**recipe[section]))
    return callbacks
