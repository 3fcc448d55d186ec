"""An image classification split held whole in accelerator memory, batched and augmented there.

On a GPU a small-image dataset (Fashion-MNIST: 60,000 x 28 x 28 bytes = 47 MB) trains in seconds per epoch,
and a DataLoader's per-sample Python work would bound the run. Here a batch is one gather from uint8
tensors already on the device; the augmentation (zero-padded random crop, horizontal flip) and the
normalisation run as batched tensor operations. The sample order comes from the same
``DistributedSampler`` the CPU path uses, so both see the images in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = ['OnDeviceImages']


class OnDeviceImages:
    """``images`` (N x C x H x W uint8) and ``labels`` (N int64), normalised with ``mean``/``std`` on the fly.

    ``crop_padding > 0`` enables training augmentation: each image is zero-padded by that many pixels (in
    raw intensity, i.e. background) and randomly cropped back to its size, then flipped horizontally with
    probability 1/2. Random numbers come from torch's generator on the device.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 0,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f'expected N x C x H x W uint8 images, got {tuple(images.shape)} {images.dtype}')
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.crop_padding = crop_padding

    def __len__(self) -> int:
        return len(self.labels)

    def to_device(self, device: torch.device) -> OnDeviceImages:
        for name in ('images', 'labels', 'mean', 'std'):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def batches(self, batch_size: int, indices: Sequence[int] | None = None, drop_last: bool = False) -> _Batches:
        """``(images, labels)`` batches over ``indices`` (default: all, in order); without ``drop_last`` the last
        batch may be short."""
        order = torch.as_tensor(list(indices) if indices is not None else range(len(self)), dtype=torch.long)
        if drop_last:
            order = order[: len(order) // batch_size * batch_size]
        return _Batches(self, order.to(self.labels.device), batch_size)

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images[index]
        if self.crop_padding:
            images = self._augment(images)
        images = (images.float() / 255 - self.mean) / self.std
        return images.contiguous(memory_format=torch.channels_last), self.labels[index]

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        pad = self.crop_padding
        padded = F.pad(images, (pad, pad, pad, pad))
        # One random offset per image: gather rows and columns through broadcast index grids.
        top = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=images.device)
        left = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=images.device)
        rows = (top + torch.arange(height, device=images.device).view(1, -1, 1)).expand(n, height, width)
        cols = (left + torch.arange(width, device=images.device).view(1, 1, -1)).expand(n, height, width)
        flip = torch.rand(n, 1, 1, device=images.device) < 0.5
        cols = torch.where(flip, left + width - 1 - torch.arange(width, device=images.device).view(1, 1, -1), cols)
        batch = torch.arange(n, device=images.device).view(-1, 1, 1).expand(n, height, width)
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


class _Batches:
    def __init__(self, data: OnDeviceImages, order: torch.Tensor, batch_size: int):
        self.data, self.order, self.batch_size = data, order, batch_size

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.order), self.batch_size):
            yield self.data._batch(self.order[start : start + self.batch_size])
