"""Fashion-MNIST (Zalando, MIT) read from Debian's ``dataset-fashion-mnist`` package, fully offline.

The package installs the four original IDX files under ``/usr/share/datasets/fashion-mnist``:
60,000 training and 10,000 test images, 28×28 grey, 10 balanced classes.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ['CLASSES', 'MEAN', 'STD', 'FashionMNIST', 'load_fashion_mnist', 'find_fashion_mnist']

CLASSES, MEAN, STD = FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


def _candidate_roots() -> list[Path]:
    roots = [Path(os.environ['ZOO_DATA_DIR']) / 'fashion-mnist'] if os.environ.get('ZOO_DATA_DIR') else []
    return roots + [
        Path('/usr/share/datasets/fashion-mnist'),
        Path(__file__).resolve().parents[2] / '.data' / 'fashion-mnist',
    ]


def find_fashion_mnist(root: os.PathLike | None = None) -> Path:
    """The folder holding the four IDX files; a clear error lists where it looked and how to install."""
    roots = [Path(root)] if root is not None else _candidate_roots()
    needed = [f for pair in _FILES.values() for f in pair]
    for candidate in roots:
        if all((candidate / f).is_file() for f in needed):
            return candidate
    raise FileNotFoundError(
        'Fashion-MNIST not found; looked for '
        + ', '.join(needed)
        + ' in: '
        + ', '.join(map(str, roots))
        + '. Install it with `apt-get install dataset-fashion-mnist` (or `make data`), or set ZOO_DATA_DIR to a '
        'folder containing fashion-mnist/.'
    )


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    data = gzip.open(path).read()
    header = np.frombuffer(data, '>i4', count=1 + ndim)
    if header[0] != magic:
        raise ValueError(f'{path} is not an IDX file with magic {magic} (found {header[0]})')
    shape = tuple(int(n) for n in header[1:])
    offset = 4 * (1 + ndim)
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f'{path} is truncated: header says {shape}, file has {len(data) - offset} bytes of data')
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def load_fashion_mnist(split: str = 'train', root: os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of the ``'train'`` or ``'test'`` split."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(root)
    images_file, labels_file = _FILES[split]
    images = _read_idx(folder / images_file, _IMAGES_MAGIC, 3)
    labels = _read_idx(folder / labels_file, _LABELS_MAGIC, 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f'{folder}: {len(images)} images but {len(labels)} labels in the {split} split')
    return images, labels


class FashionMNIST(Dataset):
    """In-memory Fashion-MNIST split as ``(image (1, 28, 28) float normalised, label)`` pairs.

    ``indices`` selects a subset (e.g. a fixed held-out slice); ``transform`` maps the normalised
    image tensor (e.g. random crops for training).
    """

    def __init__(
        self,
        split: str = 'train',
        root: os.PathLike | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        indices: np.ndarray | None = None,
    ):
        images, labels = load_fashion_mnist(split, root)
        if indices is not None:
            images, labels = images[indices], labels[indices]
        self.images = torch.from_numpy(images.copy()).unsqueeze(1)  # uint8: 47 MB instead of 188 MB as float
        self.labels = torch.from_numpy(labels.copy())
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = (self.images[index].float() / 255 - MEAN[0]) / STD[0]
        return (self.transform(image) if self.transform else image), int(self.labels[index])
