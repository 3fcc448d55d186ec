"""Nuclear instance segmentation as a trainer ``Task``: HoVer-Net patches, loss and whole-image metrics.

Training items are :class:`~training.data.NucleiPatchDataset` patches (HoVer-Net's mirror-padded
sliding windows, augmentation and NP/HV/TP targets) at the network's input size, since the zoo's
segmentation nets predict at full resolution. Validation runs what inference runs: tiled prediction
of each *whole* validation image (``zoo.segment.predict_instances``, with HoVer-Net's watershed) and
HoVer-Net's per-image instance metrics, summed here and averaged over images by the trainer. With
``num_types``, HoVer-Net's type statistics (``zoo.hovernet.type_stats``: ``f_d``, ``acc``, ``f_c_<type>``)
are added; they are pooled over all validation images, not averaged.

Datasets (``dataset=``): ``'kumar'``, ``'consep'``, ``'cpm17'`` (HoVer-Net's layouts under ``data_dir``,
official train/test splits), ``'folder'`` (``training.data.load_folder``; a deterministic
``val_fraction`` split unless ``train/`` and ``val/`` exist) and ``'stardist'`` (the fluorescence image
in the stardist wheel, for smoke tests; no ``data_dir``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import Dataset

from zoo.hovernet import STAT_NAMES, TypeMatches, hovernet_loss, instance_info, instance_stats, match_types, type_stats
from zoo.segment import overlay, predict_instances
from zoo.slide import check_tiling

from .data import (
    CONSEP_MERGED_TYPE_NAMES,
    CONSEP_TYPE_NAMES,
    DatasetLayoutError,
    NucleiPatchDataset,
    NucleiSample,
    load_consep,
    load_cpm17,
    load_folder,
    load_kumar,
    split_stardist_sample,
)
from .tasks import Task

__all__ = ['NucleiSegmentationTask', 'NucleiImageDataset', 'DATASETS']

DATASETS = ('stardist', 'kumar', 'consep', 'cpm17', 'folder')
_TARGET_KEYS = ('np', 'hv', 'tp')


class NucleiImageDataset(Dataset):
    """Whole annotated images (:class:`~training.data.NucleiSample`), one per item, for validation."""

    def __init__(self, samples: list[NucleiSample]):
        if not samples:
            raise ValueError('NucleiImageDataset needs at least one sample')
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> NucleiSample:
        return self.samples[index]


class NucleiSegmentationTask(Task):
    """HoVer-Net-style training of the ``mrl_seg_*`` nets (or any net with the same outputs).

    Args:
        dataset: one of :data:`DATASETS`.
        data_dir: dataset root (not used by ``'stardist'``).
        patch_size: training patch side, the network input and output size.
        step: stride of the training windows over each image (default ``patch_size // 2``).
        num_types: TP classes including background; ``None``/0 trains without a TP branch. CoNSeP takes
            5 (HoVer-Net's merged classes) or 8 (the original ones); ``'folder'`` needs ``types/`` maps.
            The model must be built with the same ``num_types``.
        augment: HoVer-Net's geometric and photometric augmentation of training patches.
        window_size: side of the window read before augmentation and centre-cropped to ``patch_size``
            afterwards, so rotations do not bring in empty corners (default ``2 * patch_size`` with
            augmentation, as HoVer-Net's 540 px windows for 270 px inputs).
        val_fraction: share of the training images held out for validation (choosing the best epoch);
            for a ``'folder'`` dataset without ``train/`` and ``val/``, the share of images in ``val``.
        tile, overlap: tiled inference on validation images (``zoo.segment.predict_maps``).
        num_examples: validation images drawn by :meth:`write_examples`.
        exact_hv_centre: HV targets from the exact centre of mass (``zoo.hovernet.hv_map``'s option).
        paper_msge: MSGE along the paper's axes (``zoo.hovernet.hovernet_loss``'s option).
    """

    main_metric = 'dice'

    def __init__(
        self,
        dataset: str = 'stardist',
        data_dir: str | None = None,
        patch_size: int = 256,
        step: int | None = None,
        num_types: int | None = None,
        augment: bool = True,
        window_size: int | None = None,
        val_fraction: float = 0.2,
        tile: int = 256,
        overlap: int = 64,
        num_examples: int = 4,
        exact_hv_centre: bool = False,
        paper_msge: bool = False,
    ):
        if dataset not in DATASETS:
            raise ValueError(f'unknown nuclei dataset {dataset!r}; available: {DATASETS}')
        if dataset != 'stardist' and data_dir is None:
            raise ValueError(f'dataset {dataset!r} needs data_dir')
        check_tiling(tile, overlap, 1)  # the evaluation's tiles, as zoo.segment refuses them
        if not (patch_size >= 1 and (step is None or step >= 1) and (window_size is None or window_size >= patch_size)):
            raise ValueError(
                f'patch_size and step must be at least 1 and window_size at least patch_size, got {patch_size}, '
                f'{step} and {window_size}'
            )
        if not (0 < val_fraction < 1 and num_examples >= 0 and (num_types or 0) >= 0):
            raise ValueError(
                f'val_fraction must be in (0, 1), num_examples and num_types at least 0; got {val_fraction}, '
                f'{num_examples} and {num_types}'
            )
        num_types = num_types or None
        if num_types is not None:
            if dataset == 'consep' and num_types not in (len(CONSEP_MERGED_TYPE_NAMES), len(CONSEP_TYPE_NAMES)):
                raise ValueError(
                    f'CoNSeP has {len(CONSEP_MERGED_TYPE_NAMES)} merged or {len(CONSEP_TYPE_NAMES)} '
                    f'original types (background included), got num_types={num_types}'
                )
            if dataset in ('stardist', 'kumar', 'cpm17'):
                raise ValueError(f'{dataset} has no nuclear type annotations; use num_types=None')
        self.dataset, self.data_dir = dataset, data_dir
        self.patch_size, self.step = patch_size, step or patch_size // 2
        self.window_size = window_size or (2 * patch_size if augment else patch_size)
        self.num_types, self.augment = num_types, augment
        self.val_fraction = val_fraction
        self.tile, self.overlap = tile, overlap
        self.num_examples = num_examples
        self.exact_hv_centre, self.paper_msge = exact_hv_centre, paper_msge

    def _samples(self) -> tuple[list[NucleiSample], list[NucleiSample]]:
        """``(training images, held-out test images)`` as the dataset is distributed."""
        root = self.data_dir
        if self.dataset == 'stardist':
            return split_stardist_sample()
        if self.dataset == 'kumar':
            return load_kumar(root, 'train'), load_kumar(root, 'test')
        if self.dataset == 'consep':
            merge = self.num_types != len(CONSEP_TYPE_NAMES)
            return load_consep(root, 'train', merge), load_consep(root, 'test', merge)
        if self.dataset == 'cpm17':
            return load_cpm17(root, 'train'), load_cpm17(root, 'test')
        return (load_folder(root, 'train', self.val_fraction), load_folder(root, 'val', self.val_fraction))

    def _splits(self) -> tuple[list[NucleiSample], list[NucleiSample], list[NucleiSample]]:
        """``(train, validation, test)``: validation images are taken out of the training images (evenly
        spaced, ``val_fraction`` of them) so that the test images never choose the best epoch. A
        ``'folder'`` dataset has no separate test split: its ``val`` images serve both purposes."""
        train, test = self._samples()
        if self.dataset == 'folder':
            return train, test, test
        if len(train) < 2:
            raise DatasetLayoutError(
                f'{self.data_dir or self.dataset}: {len(train)} training image(s); at least 2 are needed to hold one '
                f'out for validation; add images'
            )
        count = min(len(train) - 1, max(1, round(len(train) * self.val_fraction)))
        val_index = set(np.linspace(0, len(train) - 1, count).round().astype(int).tolist())
        return ([s for i, s in enumerate(train) if i not in val_index], [train[i] for i in sorted(val_index)], test)

    def datasets(self) -> tuple[Dataset, Dataset]:
        train, val, _ = self._splits()
        patches = NucleiPatchDataset(
            train,
            self.patch_size,
            self.step,
            self.augment,
            self.num_types,
            window_size=self.window_size,
            exact_hv_centre=self.exact_hv_centre,
        )
        return patches, NucleiImageDataset(val)

    def test_dataset(self) -> Dataset:
        return NucleiImageDataset(self._splits()[2])

    def selects_on_test_data(self) -> bool:
        return self.dataset == 'folder'

    def test_description(self) -> str:
        if self.dataset == 'stardist':
            return (
                'held-out tiles of the stardist sample (4 of 16 tiles of 128x128, never trained on or used for '
                'selection)'
            )
        return {
            'folder': 'val images (also used to pick the best epoch)',
            'consep': 'CoNSeP Test (14 images)',
            'kumar': 'Kumar test (14 images)',
            'cpm17': 'CPM-17 test',
        }[self.dataset]

    def dataset_description(self) -> str:
        if self.dataset == 'stardist':
            return (
                'the annotated nuclei image shipped in the stardist 0.9.2 wheel (2018 Data Science Bowl / '
                'BBBC038, fluorescence microscopy, NOT H&E): 512x512, 125 nuclei, cut into 16 tiles of 128x128: '
                '10 train, 2 validate, 4 held out for testing'
            )
        return {
            'folder': f'image folder {self.data_dir}',
            'consep': 'CoNSeP (Graham et al. 2019)',
            'kumar': 'Kumar / MoNuSeg 2018',
            'cpm17': 'CPM-17',
        }[self.dataset]

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device
    ) -> tuple[torch.Tensor, dict]:
        outputs = model(batch['image'].to(device, non_blocking=True))
        if 'tp' in batch and 'tp' not in outputs:
            raise self._missing_type_branch()
        targets = {key: batch[key].to(device, non_blocking=True) for key in _TARGET_KEYS if key in batch}
        total, parts = hovernet_loss(outputs, targets, paper_msge=self.paper_msge)
        return total, {name: value.detach() for name, value in parts.items()}

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int
    ) -> dict[str, float]:
        """Sums over this shard's images of HoVer-Net's per-image ``dice, aji, aji_plus, dq, sq, pq``, and ``count``.

        With ``num_types``, also ``f_d``, ``acc`` and ``f_c_1 .. f_c_<num_types - 1>`` of
        :func:`zoo.hovernet.type_stats`, pooled over every rank's images: the trainer divides each sum by
        the number of images, so these are returned multiplied by this shard's image count.
        """
        sums = dict.fromkeys(STAT_NAMES, 0.0) | {'count': 0.0}
        matches = TypeMatches(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
        for index in range(len(dataset)):
            sample = dataset[index]
            pred, pred_info = predict_instances(
                model, sample.image, tile=self.tile, overlap=self.overlap, batch_size=batch_size, device=device
            )
            for name, value in instance_stats(sample.inst_map, pred).items():
                sums[name] += value
            sums['count'] += 1
            if self.num_types:
                matches = matches + self._type_matches(sample, pred_info)
        if self.num_types:
            stats = type_stats(_pooled_over_ranks(matches), type_ids=range(1, self.num_types))
            sums.update({name: value * sums['count'] for name, value in stats.items()})
        return sums

    def _type_matches(self, sample: NucleiSample, pred_info: dict[int, dict]) -> TypeMatches:
        if any(record['type'] is None for record in pred_info.values()):
            raise self._missing_type_branch()
        true_info = instance_info(sample.inst_map, sample.type_map)  # GT type: the majority over its pixels
        return match_types(*_centroids_and_types(true_info), *_centroids_and_types(pred_info))

    def _missing_type_branch(self) -> ValueError:
        return ValueError(
            f'task.args.num_types={self.num_types} but the model has no type branch: build it '
            f'with model.args.num_types={self.num_types}'
        )

    def write_examples(
        self, model: torch.nn.Module, dataset: Dataset, out_dir: Path, device: torch.device
    ) -> list[Path]:
        """``<name>_overlay.png`` for the first ``num_examples`` images: ground truth left, prediction right."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for index in range(min(self.num_examples, len(dataset))):
            sample = dataset[index]
            pred, _ = predict_instances(model, sample.image, tile=self.tile, overlap=self.overlap, device=device)
            side_by_side = np.concatenate([overlay(sample.image, sample.inst_map), overlay(sample.image, pred)], axis=1)
            path = out_dir / f'{sample.name}_overlay.png'
            Image.fromarray(side_by_side).save(path)
            paths.append(path)
        return paths


def _centroids_and_types(info: dict[int, dict]) -> tuple[np.ndarray, list[int]]:
    centroids = np.array([record['centroid'] for record in info.values()]).reshape(-1, 2)
    return centroids, [record['type'] for record in info.values()]


def _pooled_over_ranks(matches: TypeMatches) -> TypeMatches:
    """Every rank's type matches together (type statistics are pooled over the whole validation set)."""
    if not (dist.is_available() and dist.is_initialized()):
        return matches
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, matches)
    return sum(gathered[1:], gathered[0])
