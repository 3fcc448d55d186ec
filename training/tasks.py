"""What a training run needs besides the loop: data, loss and evaluation for one kind of problem.

The trainer (``training.trainer``) owns everything generic: processes, DDP and its communication
hook, batch-size control, AMP, optimizer and schedule, callbacks (the Cuttlefish switch), logging and
atomic checkpoints. A ``Task`` supplies the rest. Evaluation is sharded: each rank evaluates its
slice of the validation set and returns per-sample *sums*; the trainer all-reduces them and divides
by ``count``, so a metric defined per image then averaged (HoVer-Net's convention) stays exact.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import Dataset, Subset

from zoo.datasets import FASHION_MNIST_TEST_SPLIT

__all__ = ['Task', 'ClassificationTask', 'build_task', 'TASKS', 'MODEL_TASKS']


class Task:
    """Base class; subclasses are registered in ``TASKS`` under the recipe's ``task.name``."""

    main_metric: str = ''  # key of ``evaluate``'s result that selects the best checkpoint (higher is better)

    def datasets(self) -> tuple[Dataset, Dataset]:
        """``(train, validation)`` datasets."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict]:
        """Forward ``batch`` through ``model``; return the loss to back-propagate and detached parts."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int
    ) -> dict[str, float]:
        """Per-sample sums of each metric over ``dataset`` (this rank's shard), plus ``count``."""
        raise NotImplementedError

    def write_examples(
        self, model: torch.nn.Module, dataset: Dataset, out_dir: Path, device: torch.device
    ) -> list[Path]:
        """Optional pictures of predictions (e.g. overlays) written with the best weights, on rank 0."""
        return []

    def test_dataset(self) -> Dataset:
        """The data of the reported figures (default: the validation data, see ``selects_on_test_data``)."""
        return self.datasets()[1]

    def selects_on_test_data(self) -> bool:
        """Whether the best epoch is chosen on the same data the figures are reported on (as the CIFAR and
        ImageNet papers do); model cards then say so instead of calling the figures held out."""
        return True

    def test_description(self) -> str:
        return 'validation split'

    def dataset_description(self) -> str:
        return ''

    def data_config(self) -> dict | None:
        """The preprocessing the data gets, in timm's terms (``input_size``, ``mean``, ``std``, ``crop_pct``,
        ``interpolation``, and ``label_names``), where it may differ from the model's own cfg."""
        return None

    def dataset_id(self) -> str | None:
        """The dataset's Hugging Face Hub id, for model-card metadata, where there is one."""
        return None


class ClassificationTask(Task):
    """Image classification: cross-entropy with label smoothing, optional mixup/cutmix, top-1/top-5.

    Datasets: ``'fashion_mnist'`` (Debian's package; ``train_subset``/``val_subset`` keep the first N
    images for quick recipes; ``holdout=N`` validates on the last N *training* images, which are then
    not trained on, so the test split stays untouched until the final evaluation), ``'cifar10'`` (binary
    version under ``data_dir``) and ``'image_folder'`` (``data_dir/{train,val}/<class>/``, e.g. ImageNet, with
    timm's training transforms: random resized crop, flip, ``auto_augment`` such as ``'rand-m9-mstd0.5-inc1'``,
    random erasing ``re_prob``).
    """

    main_metric = 'top1'

    def __init__(
        self,
        dataset: str = 'fashion_mnist',
        data_dir: str | None = None,
        label_smoothing: float = 0.0,
        train_subset: int | None = None,
        val_subset: int | None = None,
        augment: bool = True,
        input_size: int = 224,
        auto_augment: str | None = None,
        re_prob: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        num_classes: int | None = None,
        holdout: int = 0,
        on_device: bool = False,
    ):
        if dataset not in ('fashion_mnist', 'cifar10', 'image_folder'):
            raise ValueError(
                f"unknown classification dataset {dataset!r}; available: 'fashion_mnist', 'cifar10', 'image_folder'"
            )
        if dataset != 'fashion_mnist' and not data_dir:
            raise ValueError(f'dataset {dataset!r} needs task.args.data_dir')
        self.dataset, self.data_dir = dataset, data_dir
        self.label_smoothing = label_smoothing
        self.train_subset, self.val_subset = train_subset, val_subset
        self.augment, self.input_size = augment, input_size
        self.holdout = holdout
        if on_device and dataset != 'fashion_mnist':
            raise ValueError('on_device is implemented for fashion_mnist only')
        self.on_device = on_device
        self.auto_augment, self.re_prob = auto_augment, re_prob
        self.mixup_fn = None
        if mixup or cutmix:
            from timm.data import Mixup

            if num_classes is None:
                raise ValueError('mixup/cutmix need task.args.num_classes')
            self.mixup_fn = Mixup(
                mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes
            )

    def datasets(self) -> tuple[Dataset, Dataset]:
        import numpy as np
        from torchvision.transforms import v2

        if self.dataset == 'fashion_mnist':
            from .data.fashion_mnist import MEAN, STD, FashionMNIST

            transform = v2.Compose([v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()]) if self.augment else None
            size = 60_000 - self.holdout
            train_idx = np.arange(min(self.train_subset or size, size))
            train = FashionMNIST('train', self.data_dir, transform, train_idx)
            if self.holdout:
                val = FashionMNIST('train', self.data_dir, None, np.arange(size, 60_000))
            else:
                val = FashionMNIST('test', self.data_dir, None, np.arange(self.val_subset) if self.val_subset else None)
            if self.on_device:  # held in accelerator memory by the trainer, augmented there in batches
                from .data.on_device import OnDeviceImages

                padding = 2 if self.augment else 0
                return (
                    OnDeviceImages(train.images, train.labels, MEAN, STD, crop_padding=padding),
                    OnDeviceImages(val.images, val.labels, MEAN, STD),
                )
            return train, val
        from timm.data import create_transform

        if self.dataset == 'cifar10':
            from zoo.datasets import CIFAR10_MEAN, CIFAR10_STD

            from .data.classification import CIFAR10

            normalize = [
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(CIFAR10_MEAN, CIFAR10_STD),
            ]
            train_tf = v2.Compose(
                ([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if self.augment else []) + normalize
            )
            return CIFAR10(self.data_dir, 'train', train_tf), CIFAR10(self.data_dir, 'test', v2.Compose(normalize))
        from .data.classification import image_folder

        train_tf = create_transform(
            self.input_size, is_training=self.augment, auto_augment=self.auto_augment, re_prob=self.re_prob
        )
        val_tf = create_transform(self.input_size, is_training=False)
        return image_folder(self.data_dir, 'train', train_tf), image_folder(self.data_dir, 'val', val_tf)

    def test_dataset(self) -> Dataset:
        if self.dataset == 'fashion_mnist':
            from .data.fashion_mnist import FashionMNIST

            return FashionMNIST('test', self.data_dir)
        return self.datasets()[1]

    def selects_on_test_data(self) -> bool:
        return not (self.dataset == 'fashion_mnist' and self.holdout)

    def test_description(self) -> str:
        return {
            'fashion_mnist': FASHION_MNIST_TEST_SPLIT,
            'cifar10': 'CIFAR-10 test split',
            'image_folder': 'val/ folder',
        }[self.dataset]

    def dataset_description(self) -> str:
        if self.dataset == 'fashion_mnist':
            used = f'the first {self.train_subset:,} training images' if self.train_subset else 'the training split'
            held = f'; the last {self.holdout:,} training images validate' if self.holdout else ''
            return f'Fashion-MNIST (Zalando, MIT; Debian package dataset-fashion-mnist): {used}{held}'
        return {'cifar10': 'CIFAR-10', 'image_folder': f'image folder {self.data_dir}'}[self.dataset]

    def dataset_id(self) -> str | None:
        return {'fashion_mnist': 'zalando-datasets/fashion_mnist', 'cifar10': 'uoft-cs/cifar10'}.get(self.dataset)

    def data_config(self) -> dict | None:
        if self.dataset == 'fashion_mnist':
            from zoo.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD

            return dict(
                input_size=(1, 28, 28),
                mean=FASHION_MNIST_MEAN,
                std=FASHION_MNIST_STD,
                crop_pct=1.0,
                interpolation='bilinear',
                label_names=FASHION_MNIST_CLASSES,
            )
        return None

    def loss(self, model, batch, device):
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        if self.mixup_fn is not None and model.training:
            images, soft = self.mixup_fn(images, labels)
            loss = SoftTargetCrossEntropy()(model(images), soft)
        else:
            loss = F.cross_entropy(model(images), labels, label_smoothing=self.label_smoothing)
        return loss, {'ce': loss.detach()}

    @torch.no_grad()
    def evaluate(self, model, dataset, device, batch_size):
        from timm.utils import accuracy

        from .data.on_device import OnDeviceImages

        if isinstance(dataset, Subset) and isinstance(dataset.dataset, OnDeviceImages):
            batches = dataset.dataset.batches(batch_size, dataset.indices)
        elif isinstance(dataset, OnDeviceImages):
            batches = dataset.batches(batch_size)
        else:
            batches = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
        sums = dict(top1=0.0, top5=0.0, val_loss=0.0, count=0.0)
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            logits = model(images).float()
            top1, top5 = accuracy(logits, labels, topk=(1, min(5, logits.shape[1])))
            sums['top1'] += top1.item() * len(labels)
            sums['top5'] += top5.item() * len(labels)
            sums['val_loss'] += F.cross_entropy(logits, labels, reduction='sum').item()
            sums['count'] += len(labels)
        return sums


# Tasks defined in other modules are imported when first asked for.
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


def build_task(name: str, args: Mapping[str, Any]) -> Task:
    if name not in TASKS:
        raise ValueError(f'unknown task {name!r}; available: {sorted(TASKS)}')
    module, _, cls = TASKS[name].partition(':')
    task_cls = getattr(importlib.import_module(module), cls)
    try:
        return task_cls(**args)
    except (TypeError, ValueError) as e:
        from .recipe import RecipeError

        raise RecipeError(f'task.args of {name!r}: {e}') from e
