"""Nuclear instance segmentation as a trainer ``Task``: HoVer-Net patches, loss and whole-image metrics.

Training items are :class:`~training.data.NucleiPatchDataset` patches (HoVer-Net's mirror-padded
sliding windows, augmentation and NP/HV/TP targets) at the network's input size, since the zoo's
segmentation nets predict at full resolution. Validation runs what inference runs: tiled prediction
of each *whole* validation image (``zoo.segment.predict_instances``, with HoVer-Net's watershed) and
HoVer-Net's per-image instance metrics, summed here and averaged over images by the trainer. With
``num_types``, HoVer-Net's type statistics (``zoo.hovernet.type_stats``: ``f_d``, ``acc``, ``f_c_<type>``)
are added; they are pooled over all validation images, not averaged.

Datasets (``dataset=``): ``'kumar'``, ``'consep'``, ``'cpm17'`` (HoVer-Net's layouts under ``data_dir``,
official train/test splits); ``'pannuke'`` (folds 1, 2, 3 train, validate, test; ``folds`` rotates them),
``'lizard'`` (the three splits of its ``info.csv``, likewise), ``'conic'`` (by source image, ours) and
``'monusac'`` (its training and testing releases), each with the types its paper defines; ``'folder'``
(``training.data.load_folder``) and ``'geojson'`` (``training.data.load_geojson``: QuPath GeoJSON, nuclear types
named by ``types``), both with a deterministic ``val_fraction`` split unless ``train/`` and ``val/`` exist; and
``'stardist'`` (the fluorescence image in the stardist wheel, for smoke tests; no ``data_dir``).

:meth:`NucleiSegmentationTask.score_images` scores each image as HoVer-Net's ``compute_stats.py`` does and
:meth:`~NucleiSegmentationTask.summarise` adds the scores up: validation during training, ``zoo publish`` (the
figures of model cards) and ``zoo evaluate`` all go through these two (``training.evaluate``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
    LIZARD_TYPE_NAMES,
    MONUSAC_TYPE_NAMES,
    PANNUKE_TYPE_NAMES,
    DatasetLayoutError,
    NucleiPatchDataset,
    NucleiSample,
    load_conic,
    load_consep,
    load_cpm17,
    load_folder,
    load_geojson,
    load_kumar,
    load_lizard,
    load_monusac,
    load_pannuke,
    split_stardist_sample,
)
from .tasks import Task

__all__ = ['DATASETS', 'SPLITS', 'ImageScore', 'NucleiImageDataset', 'NucleiSegmentationTask', 'side_by_side']

DATASETS = ('stardist', 'kumar', 'consep', 'cpm17', 'pannuke', 'lizard', 'conic', 'monusac', 'folder', 'geojson')
# What zoo evaluate can score: the training images (validation ones taken out), the validation images that
# choose the best epoch, the held-out test images of the reported figures, or every image of the dataset.
SPLITS = ('train', 'val', 'test', 'all')
_UNTYPED = ('stardist', 'kumar', 'cpm17')
# The type names (background first) of the datasets annotated with fixed types: CoNSeP offers HoVer-Net's merged
# set and its original one, the others the set their paper defines.
TYPE_SETS = {
    'consep': (CONSEP_MERGED_TYPE_NAMES, CONSEP_TYPE_NAMES),
    'pannuke': (PANNUKE_TYPE_NAMES,),
    'lizard': (LIZARD_TYPE_NAMES,),
    'conic': (LIZARD_TYPE_NAMES,),
    'monusac': (MONUSAC_TYPE_NAMES,),
}
_FOLDED = ('pannuke', 'lizard')
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


@dataclass
class ImageScore:
    """One image scored: its predicted instance map, HoVer-Net's six instance statistics of it, and (with
    types) the centroid matches HoVer-Net's type statistics pool over the dataset."""

    sample: NucleiSample
    pred: np.ndarray
    stats: dict[str, float]
    matches: TypeMatches | None


def side_by_side(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The image with the ground-truth outlines (left) and the predicted ones (right)."""
    return np.concatenate([overlay(image, truth), overlay(image, pred)], axis=1)


class NucleiSegmentationTask(Task):
    """HoVer-Net-style training of the ``mrl_seg_*`` nets (or any net with the same outputs).

    Args:
        dataset: one of :data:`DATASETS`.
        data_dir: dataset root (not used by ``'stardist'``).
        patch_size: training patch side, the network input and output size.
        step: stride of the training windows over each image (default ``patch_size // 2``).
        num_types: TP classes including background; ``None``/0 trains without a TP branch. CoNSeP takes
            5 (HoVer-Net's merged classes) or 8 (the original ones), PanNuke 6, Lizard and CoNIC 7, MoNuSAC 5
            (:data:`TYPE_SETS`); ``'folder'`` needs ``types/`` maps; ``'geojson'`` takes it from ``types``. The
            model must be built with the same ``num_types``.
        types: ``'geojson'`` only: the QuPath class names of the nuclear types, ids 1, 2, ... in this order
            (``num_types`` is then ``len(types) + 1``).
        folds: ``'pannuke'`` and ``'lizard'``: the folds (splits) that train, validate and test, default
            ``[1, 2, 3]``; ``[2, 1, 3]`` and ``[3, 2, 1]`` rotate them.
        augment: HoVer-Net's geometric and photometric augmentation of training patches.
        window_size: side of the window read before augmentation and centre-cropped to ``patch_size``
            afterwards, so rotations do not bring in empty corners (default ``2 * patch_size`` with
            augmentation, as HoVer-Net's 540 px windows for 270 px inputs).
        val_fraction: share of the training images held out for validation (choosing the best epoch);
            for a ``'folder'`` or ``'geojson'`` dataset without ``train/`` and ``val/``, the share in ``val``.
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
        types: list[str] | None = None,
        folds: list[int] | None = None,
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
        if types is not None and dataset != 'geojson':
            raise ValueError(f'types names the classes of a geojson dataset; {dataset} has its own types')
        if folds is not None and dataset not in _FOLDED:
            raise ValueError(f'folds choose the splits of {" and ".join(_FOLDED)}, not of {dataset}')
        folds = list(folds or (1, 2, 3))
        if sorted(folds) != [1, 2, 3]:
            raise ValueError(f'folds must name folds 1, 2 and 3 once each (train, validation, test), got {folds}')
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
        if types is not None:
            if num_types not in (None, len(types) + 1):
                raise ValueError(f'{len(types)} types and background make num_types={len(types) + 1}, not {num_types}')
            num_types = len(types) + 1
        if num_types is not None:
            offered = [len(names) for names in TYPE_SETS.get(dataset, ())]
            if offered and num_types not in offered:
                counts = ' or '.join(str(count) for count in offered)  # CoNSeP: HoVer-Net's merged or the original
                raise ValueError(f'{dataset} has {counts} types (background included), got num_types={num_types}')
            if dataset in _UNTYPED:
                raise ValueError(f'{dataset} has no nuclear type annotations; use num_types=None')
            if dataset == 'geojson' and types is None:
                raise ValueError('a geojson dataset with num_types needs types: the class names of the types')
        self.dataset, self.data_dir = dataset, data_dir
        self.patch_size, self.step = patch_size, step or patch_size // 2
        self.window_size = window_size or (2 * patch_size if augment else patch_size)
        self.num_types, self.types, self.folds, self.augment = num_types, types, folds, augment
        self.val_fraction = val_fraction
        self.tile, self.overlap = tile, overlap
        self.num_examples = num_examples
        self.exact_hv_centre, self.paper_msge = exact_hv_centre, paper_msge

    def type_names(self) -> list[str] | None:
        """Names of the type ids ``0 .. num_types - 1`` (0 is background), or None without types."""
        if not self.num_types:
            return None
        if self.dataset in TYPE_SETS:
            return next(list(names) for names in TYPE_SETS[self.dataset] if len(names) == self.num_types)
        if self.dataset == 'geojson':
            return ['background', *self.types]
        return ['background'] + [f'type {k}' for k in range(1, self.num_types)]

    def _load(self, part: str) -> list[NucleiSample] | None:
        """The dataset's own ``'train'`` or ``'test'`` images, or its own ``'val'`` images (``None``: the
        validation images are taken out of ``'train'``); folder and geojson datasets also read ``'all'``."""
        root = self.data_dir
        if self.dataset == 'stardist':
            return None if part == 'val' else split_stardist_sample()[part == 'test']
        if self.dataset in ('folder', 'geojson'):  # no test split of their own: val serves both purposes
            split = part if part in ('train', 'all') else 'val'
            if self.dataset == 'folder':
                return load_folder(root, split, self.val_fraction)
            return load_geojson(root, split, self.types, self.val_fraction)
        if self.dataset == 'pannuke':
            return load_pannuke(root, self._fold(part))
        if self.dataset == 'lizard':
            return load_lizard(root, self._fold(part))
        if self.dataset == 'conic':
            return load_conic(root, part)
        if part == 'val':
            return None
        if self.dataset == 'monusac':
            return load_monusac(root, part)
        if self.dataset == 'kumar':
            return load_kumar(root, part)
        if self.dataset == 'consep':
            return load_consep(root, part, merge_types=self.num_types != len(CONSEP_TYPE_NAMES))
        return load_cpm17(root, part)

    def _fold(self, part: str) -> int:
        return self.folds[('train', 'val', 'test').index(part)]

    def _train_and_val(self) -> tuple[list[NucleiSample], list[NucleiSample]]:
        """Training images and the validation images that choose the best epoch: the dataset's own, or, where it
        has none, evenly spaced ``val_fraction`` of its training images, so that test images never choose."""
        train, val = self._load('train'), self._load('val')
        if val is not None:
            return train, val
        if len(train) < 2:
            raise DatasetLayoutError(
                f'{self.data_dir or self.dataset}: {len(train)} training image(s); at least 2 are needed to hold one '
                f'out for validation; add images'
            )
        count = min(len(train) - 1, max(1, round(len(train) * self.val_fraction)))
        val_index = set(np.linspace(0, len(train) - 1, count).round().astype(int).tolist())
        return [s for i, s in enumerate(train) if i not in val_index], [train[i] for i in sorted(val_index)]

    def split_samples(self, split: str) -> list[NucleiSample]:
        """The images of one of :data:`SPLITS`; ``'all'`` is every image once."""
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        if split == 'test':
            return self._load('test')
        if split == 'all':
            if self.dataset in ('folder', 'geojson'):
                return self._load('all')
            return self._load('train') + (self._load('val') or []) + self._load('test')
        return self._train_and_val()[split == 'val']

    def datasets(self) -> tuple[Dataset, Dataset]:
        train, val = self._train_and_val()
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
        return NucleiImageDataset(self.split_samples('test'))

    def selects_on_test_data(self) -> bool:
        return self.dataset in ('folder', 'geojson')

    def test_description(self) -> str:
        if self.dataset == 'stardist':
            return (
                'held-out tiles of the stardist sample (4 of 16 tiles of 128x128, never trained on or used for '
                'selection)'
            )
        train, val, test = self.folds
        return {
            'folder': 'val images (also used to pick the best epoch)',
            'geojson': 'val images (also used to pick the best epoch)',
            'consep': 'CoNSeP Test (14 images)',
            'kumar': 'Kumar test (14 images)',
            'cpm17': 'CPM-17 test',
            'pannuke': f'PanNuke fold {test} (trained on fold {train}, epoch chosen on fold {val})',
            'lizard': f'Lizard split {test} (trained on split {train}, epoch chosen on split {val})',
            'conic': "CoNIC patches of every fifth source image (the zoo's split; CoNIC's test patches are not public)",
            'monusac': 'MoNuSAC testing release (Ambiguous areas blacked out)',
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
            'geojson': f'QuPath GeoJSON annotations in {self.data_dir}',
            'consep': 'CoNSeP (Graham et al. 2019)',
            'kumar': 'Kumar / MoNuSeg 2018',
            'cpm17': 'CPM-17',
            'pannuke': 'PanNuke (Gamper et al. 2019, 2020), H&E of 19 tissues at 40x, 5 nuclear types',
            'lizard': 'Lizard (Graham et al. 2021), colon H&E at 20x, 6 nuclear types',
            'conic': 'CoNIC 2022: 256x256 patches of Lizard, colon H&E at 20x, 6 nuclear types',
            'monusac': 'MoNuSAC 2020 (Verma et al. 2021), H&E of 4 organs at 40x, 4 nuclear types',
        }[self.dataset]

    def data_config(self) -> dict | None:
        """The names of the nuclear types, so that the published model's GeoJSON classifies nuclei by name."""
        names = self.type_names()
        return None if names is None else {'label_names': names}

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
        """:meth:`summarise` of :meth:`score_images` over this shard's images (what the trainer adds up)."""
        return self.summarise(self.score_images(model, dataset, device, batch_size))

    @torch.no_grad()
    def score_images(
        self, model: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int
    ) -> Iterator[ImageScore]:
        """Each image predicted whole (tiled, HoVer-Net's watershed) and scored on its own, as HoVer-Net's
        ``compute_stats.py`` scores each image: ``dice, aji, aji_plus, dq, sq, pq``, and with ``num_types`` the
        centroid matches of its nuclei (ground-truth type: the majority over the nucleus' pixels)."""
        for index in range(len(dataset)):
            sample = dataset[index]
            pred, pred_info = predict_instances(
                model, sample.image, tile=self.tile, overlap=self.overlap, batch_size=batch_size, device=device
            )
            yield self.score_image(sample, pred, pred_info)

    def score_image(self, sample: NucleiSample, pred: np.ndarray, pred_info: dict[int, dict]) -> ImageScore:
        """One image's prediction (instance map and its :func:`~zoo.hovernet.instance_info` records) scored."""
        matches = self._type_matches(sample, pred_info) if self.num_types else None
        return ImageScore(sample, pred, instance_stats(sample.inst_map, pred), matches)

    def summarise(self, scores: Iterable[ImageScore]) -> dict[str, float]:
        """Sums over the images of HoVer-Net's per-image ``dice, aji, aji_plus, dq, sq, pq``, and ``count``.

        With ``num_types``, also ``f_d``, ``acc`` and ``f_c_1 .. f_c_<num_types - 1>`` of
        :func:`zoo.hovernet.type_stats`, pooled over every rank's images as HoVer-Net pools them: the trainer
        divides each sum by the number of images, so these are returned multiplied by this shard's image count.
        """
        sums = dict.fromkeys(STAT_NAMES, 0.0) | {'count': 0.0}
        matches = TypeMatches(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
        for score in scores:
            for name, value in score.stats.items():
                sums[name] += value
            sums['count'] += 1
            if score.matches is not None:
                matches = matches + score.matches
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
            path = out_dir / f'{sample.name}_overlay.png'
            Image.fromarray(side_by_side(sample.image, sample.inst_map, pred)).save(path)
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
