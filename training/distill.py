"""Distillation as a trainer ``Task``: the model trained (the student) learns a frozen teacher's outputs as well as
the labels of any other task, which it wraps (its data, evaluation, examples and descriptions are the wrapped
task's). ``zoo compress`` uses it to recover what factorizing a network cost, with the dense network as teacher.

The teacher sees exactly what the student sees: the wrapped task runs the student as usual, and every call it makes
also runs the teacher on the same input (after the task's augmentation and mixup). The loss is
``alpha * distillation + (1 - alpha) * the wrapped task's loss``, with the distillation term

* of logits (a classifier's ``(B, classes)``, a segmenter's NP and TP maps ``(B, classes, H, W)``): Hinton et al.'s
  ``T² · KL(softmax(teacher / T) ‖ softmax(student / T))`` over the class dimension, averaged over images and
  pixels;
* of HoVer-Net's horizontal and vertical distance maps (``hv``), which are regressed: the mean squared difference;

summed over a segmenter's outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

import zoo

from .registry import MODEL_TASKS
from .tasks import Task, build_task

__all__ = ['DistillationTask', 'distillation_loss']

# Outputs that are regressed rather than class logits: HoVer-Net's horizontal / vertical distance maps.
_REGRESSED = ('hv',)


def _logit_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    student, teacher = student.float() / temperature, teacher.float() / temperature
    kl = F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1), log_target=True, reduction='none')
    return kl.sum(dim=1).mean() * temperature**2


def distillation_loss(
    student: torch.Tensor | Mapping[str, torch.Tensor],
    teacher: torch.Tensor | Mapping[str, torch.Tensor],
    temperature: float = 1.0,
) -> torch.Tensor:
    """The student's distance from the teacher's outputs (see the module docstring): logits or a dict of maps."""
    if not isinstance(student, Mapping):
        return _logit_term(student, teacher, temperature)
    terms = [
        F.mse_loss(student[key].float(), teacher[key].float())
        if key in _REGRESSED
        else _logit_term(student[key], teacher[key], temperature)
        for key in teacher
    ]
    return torch.stack(terms).sum()


class _WithTeacher:
    """Called by the wrapped task in place of the student: runs the student, and the teacher on the same input."""

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module):
        self.student, self.teacher = student, teacher
        self.training = student.training  # the wrapped task may ask (mixup only while training)
        self.outputs: list[tuple[Any, Any]] = []

    def __call__(self, x: torch.Tensor):
        out = self.student(x)
        with torch.no_grad():
            self.outputs.append((out, self.teacher(x)))
        return out


class DistillationTask(Task):
    """Distil a teacher into the trained model on the data of another task.

    Args:
        teacher: the teacher's weights: a published name (``'cf_resnet18_fmnist.full_rank'``) or a folder
            (``'local-dir:PATH'``, ``'hf-hub:ORG/NAME'``), loaded frozen, in eval mode.
        task: the wrapped task (a key of ``training.tasks.TASKS``) and ``task_args`` its arguments.
        alpha: weight of the distillation term; ``1 - alpha`` weighs the wrapped task's loss on labels.
        temperature: softens both distributions of logits (``T``).
    """

    def __init__(
        self,
        teacher: str,
        task: str,
        task_args: dict | None = None,
        alpha: float = 0.5,
        temperature: float = 1.0,
    ):
        if not 0 <= alpha <= 1:
            raise ValueError(f'alpha must be in [0, 1], got {alpha}')
        if not temperature > 0:
            raise ValueError(f'temperature must be positive, got {temperature}')
        if task not in MODEL_TASKS or MODEL_TASKS[task] is None:
            raise ValueError(f'task must be a task with labels, one of {[k for k, v in MODEL_TASKS.items() if v]}')
        self.inner = build_task(task, task_args or {})
        self.teacher = zoo.create_model(teacher, pretrained=True).eval().requires_grad_(False)
        architecture = self.teacher.pretrained_cfg['architecture']
        if zoo.model_task(architecture) != MODEL_TASKS[task]:
            raise ValueError(f'teacher {teacher} is a model for {zoo.model_task(architecture)}, not for task {task!r}')
        self.main_metric = self.inner.main_metric
        self.alpha, self.temperature = alpha, temperature

    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict]:
        self.teacher.to(device)
        paired = _WithTeacher(model, self.teacher)
        task_loss, parts = self.inner.loss(paired, batch, device)
        distill = torch.stack([distillation_loss(s, t, self.temperature) for s, t in paired.outputs]).mean()
        loss = self.alpha * distill + (1 - self.alpha) * task_loss
        return loss, {**parts, 'distill': distill.detach()}

    # Everything but the loss is the wrapped task's.

    def datasets(self) -> tuple[Dataset, Dataset]:
        return self.inner.datasets()

    def evaluate(self, model, dataset, device, batch_size) -> dict[str, float]:
        return self.inner.evaluate(model, dataset, device, batch_size)

    def write_examples(self, model, dataset, out_dir: Path, device) -> list[Path]:
        return self.inner.write_examples(model, dataset, out_dir, device)

    def test_dataset(self) -> Dataset:
        return self.inner.test_dataset()

    def selects_on_test_data(self) -> bool:
        return self.inner.selects_on_test_data()

    def test_description(self) -> str:
        return self.inner.test_description()

    def dataset_description(self) -> str:
        return self.inner.dataset_description()

    def data_config(self) -> dict | None:
        return self.inner.data_config()

    def dataset_id(self) -> str | None:
        return self.inner.dataset_id()
