"""Classification datasets for the recipes: Fashion-MNIST, CIFAR-10 and any ImageNet-style folder.

CIFAR-10 is read from its *binary* distribution (``cifar-10-batches-bin/``: records of one label byte
and 3,072 pixel bytes) because the Python version is a pickle, and nothing in this project unpickles.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .nuclei import DatasetLayoutError

__all__ = ['CIFAR10_CLASSES', 'CIFAR10', 'load_cifar10', 'image_folder']

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
_CIFAR_RECORD = 1 + 3 * 32 * 32


def load_cifar10(root: str, split: str = 'train') -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 32, 32, 3), labels int64)`` from ``root/cifar-10-batches-bin`` (or ``root`` itself)."""
    root = Path(root)
    folder = root / 'cifar-10-batches-bin' if (root / 'cifar-10-batches-bin').is_dir() else root
    names = [f'data_batch_{i}.bin' for i in range(1, 6)] if split == 'train' else ['test_batch.bin']
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetLayoutError(
            f'CIFAR-10: {folder} lacks {", ".join(missing)}; expected the binary version '
            f'(cifar-10-binary.tar.gz) unpacked as ROOT/cifar-10-batches-bin/{{data_batch_1..5,test_batch}}.bin'
        )
    raw = np.concatenate([np.fromfile(folder / n, np.uint8) for n in names])
    if raw.size % _CIFAR_RECORD:
        raise DatasetLayoutError(f'CIFAR-10: files in {folder} are not whole {_CIFAR_RECORD}-byte records')
    records = raw.reshape(-1, _CIFAR_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, 0].astype(np.int64)


class CIFAR10(Dataset):
    def __init__(self, root: str, split: str = 'train', transform: Callable | None = None):
        self.images, self.labels = load_cifar10(root, split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform else image), int(self.labels[index])


def image_folder(root: str, split: str, transform: Callable) -> Dataset:
    """``ROOT/{train,val}/<class>/<image>`` (the ImageNet layout), read with torchvision's ImageFolder."""
    from torchvision.datasets import ImageFolder

    folder = Path(root) / split
    if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
        raise DatasetLayoutError(
            f'{folder} is missing or has no class folders; expected '
            f'ROOT/{split}/<class name>/<image files>, as ImageNet is usually laid out'
        )
    return ImageFolder(str(folder), transform=transform)
