"""The names a recipe may give to what the trainer builds: tasks and callbacks, each an import target
(``'module:Class'``) imported when first used.

It sits below everything that uses it: the recipe's schema checks names here without importing the classes, and
the classes never import the schema back.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ['CALLBACKS', 'MODEL_TASKS', 'TASKS', 'load']

# The recipe's ``task.name`` -> its Task class.
TASKS: dict[str, str] = {
    'classification': 'training.tasks:ClassificationTask',
    'nuclei-segmentation': 'training.segmentation:NucleiSegmentationTask',
    'distillation': 'training.distill:DistillationTask',
}
# The kind of zoo model (``zoo.model_task``) each task trains; recipes pairing another kind are refused.
# ``None``: the kind of the task it wraps (``task.args.task``).
MODEL_TASKS: dict[str, str | None] = {
    'classification': 'image-classification',
    'nuclei-segmentation': 'nuclei-segmentation',
    'distillation': None,
}
# A recipe section -> the callback class it enables with its settings.
CALLBACKS: dict[str, str] = {
    'cuttlefish': 'training.cuttlefish:CuttlefishSwitch',
}


def load(target: str) -> Any:
    """The object an import target ``'module:name'`` names."""
    module, _, name = target.partition(':')
    return getattr(importlib.import_module(module), name)
