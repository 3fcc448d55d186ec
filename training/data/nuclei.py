"""Nuclei training data: deterministic tiles of the stardist sample and :class:`NucleiPatchDataset`,
which turns annotated samples into augmented HoVer-Net training items."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.hovernet.augment import geometric_transform, photometric_transform, warp_image_and_labels
from zoo.hovernet.metrics import remap_label
from zoo.hovernet.patches import patch_origins, read_window
from zoo.hovernet.targets import center_window, hovernet_targets

from .readers import NucleiSample, load_stardist_sample

__all__ = ['NucleiPatchDataset', 'split_stardist_sample', 'tile_sample']


def tile_sample(sample: NucleiSample, tile_size: int) -> list[NucleiSample]:
    """Cut a sample into non-overlapping ``tile_size`` tiles, row-major; a remainder is dropped.

    Tiles are named ``<name>_r<row>_c<col>`` and their instance ids are renumbered 1..N.
    """
    rows, cols = sample.inst_map.shape[0] // tile_size, sample.inst_map.shape[1] // tile_size
    if rows == 0 or cols == 0:
        raise ValueError(f'tile_size {tile_size} exceeds the {sample.inst_map.shape} image')
    tiles = []
    for row in range(rows):
        for col in range(cols):
            window = np.s_[row * tile_size : (row + 1) * tile_size, col * tile_size : (col + 1) * tile_size]
            tiles.append(
                NucleiSample(
                    name=f'{sample.name}_r{row}_c{col}',
                    image=np.ascontiguousarray(sample.image[window]),
                    inst_map=remap_label(sample.inst_map[window]),
                    type_map=None if sample.type_map is None else np.ascontiguousarray(sample.type_map[window]),
                )
            )
    return tiles


def split_stardist_sample(tile_size: int = 128) -> tuple[list[NucleiSample], list[NucleiSample]]:
    """Deterministic train / validation tiles of :func:`load_stardist_sample` (fluorescence, not H&E).

    With the default 128 px the 512x512 image gives a 4x4 grid; the four tiles on the
    anti-diagonal of every 4x4 block, ``(row + col) % 4 == 3``, are held out for validation
    (one per grid row and column, 25 %), the other twelve are for training. Every 128 px tile
    of this image holds at least six nuclei, so both splits have ground truth.
    """
    sample = load_stardist_sample()
    grid_cols = sample.inst_map.shape[1] // tile_size
    train, val = [], []
    for index, tile in enumerate(tile_sample(sample, tile_size)):  # row-major
        row, col = divmod(index, grid_cols)
        (val if (row + col) % 4 == 3 else train).append(tile)
    return train, val


class NucleiPatchDataset(Dataset):
    """HoVer-Net training patches from annotated samples.

    Each item reads one ``window_size`` window (:func:`patch_origins` with ``step``, mirror
    padded), applies :func:`~zoo.hovernet.augment.geometric_transform` to image and labels
    when ``augment``, centre-crops to ``patch_size`` (the network input), applies
    :func:`~zoo.hovernet.augment.photometric_transform` to the image, and builds targets
    from the *augmented* instance map with :func:`~zoo.hovernet.targets.hovernet_targets`.
    HoVer-Net's original setup is ``patch_size=270, window_size=540, step=164,
    output_size=80``; its fast mode uses ``patch_size=256, output_size=164``.

    Items are dicts of tensors:

    * ``image``: float32 ``3 x P x P``, the uint8 RGB divided by 255 (no mean/std: HoVer-Net
      scales by 1/255 inside the network; any further normalisation belongs to the model);
    * ``np``: int64 ``O x O`` nuclear mask; ``hv``: float32 ``2 x O x O`` (x then y offsets);
    * ``tp``: int64 ``O x O`` class ids, only when ``num_types`` is given;
    * ``inst``: int32 ``O x O`` instance ids (disconnected parts split), for validation metrics.

    ``O`` is ``output_size`` (default ``patch_size``). Instances with fewer than
    ``min_hv_size`` pixels in the output crop get no HV target, as in HoVer-Net;
    ``exact_hv_centre`` is :func:`~zoo.hovernet.targets.hv_map`'s ``exact_centre`` option.
    Augmentation seeds are drawn from torch's generator, so ``torch.manual_seed`` makes runs
    repeatable and DataLoader workers (seeded differently by torch) do not repeat each other.
    """

    def __init__(
        self,
        samples: Sequence[NucleiSample],
        patch_size: int,
        step: int,
        augment: bool,
        num_types: int | None = None,
        *,
        window_size: int | None = None,
        output_size: int | None = None,
        min_hv_size: int = 30,
        exact_hv_centre: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.patch_size = patch_size
        self.window_size = window_size or patch_size
        self.output_size = output_size or patch_size
        self.num_types = num_types
        self.min_hv_size = min_hv_size
        self.exact_hv_centre = exact_hv_centre
        self.augment = augment
        if not self.output_size <= self.patch_size <= self.window_size:
            raise ValueError(
                'need output_size <= patch_size <= window_size, '
                f'got {self.output_size}, {patch_size}, {self.window_size}'
            )
        if not self.samples:
            raise ValueError('NucleiPatchDataset needs at least one sample')
        if num_types is not None:
            for sample in self.samples:
                if sample.type_map is None:
                    raise ValueError(f'num_types={num_types} but sample {sample.name} has no type_map')
                if sample.type_map.max(initial=0) >= num_types:
                    max_type = sample.type_map.max()
                    raise ValueError(f'sample {sample.name} has type id {max_type} >= num_types={num_types}')
        # Instance (and type) maps stacked on the channel axis travel through every transform together.
        self._labels = [
            np.stack([sample.inst_map] + ([sample.type_map] if num_types is not None else []), axis=-1)
            for sample in self.samples
        ]
        self._windows = [
            (sample_index, top, left)
            for sample_index, sample in enumerate(self.samples)
            for top, left in patch_origins(*sample.inst_map.shape, self.window_size, step)
        ]
        self._geometric = geometric_transform()
        self._photometric = photometric_transform()

    def __len__(self) -> int:
        return len(self._windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample_index, top, left = self._windows[index]
        image = read_window(self.samples[sample_index].image, top, left, self.window_size)
        labels = read_window(self._labels[sample_index], top, left, self.window_size)
        if self.augment:
            geometric_seed, photometric_seed = torch.randint(0, 2**31 - 1, (2,)).tolist()
            self._geometric.set_random_seed(geometric_seed)
            self._photometric.set_random_seed(photometric_seed)
            image, labels = warp_image_and_labels(self._geometric, image, labels)
        image = np.ascontiguousarray(image[center_window(self.window_size, self.window_size, self.patch_size)])
        if self.augment:
            image = self._photometric(image=image)['image']
        # Targets come from the whole (warped) window, so a nucleus cut by the patch border keeps the
        # centre of its full extent, as in HoVer-Net; the output crop is centred like the image crop.
        targets = hovernet_targets(
            labels[..., 0],
            labels[..., 1] if self.num_types is not None else None,
            output_size=self.output_size,
            min_size=self.min_hv_size,
            exact_centre=self.exact_hv_centre,
        )
        item = {'image': torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255.0)}
        item.update({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in targets.items()})
        return item
