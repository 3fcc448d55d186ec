"""Measuring a model on a task's data: the one code path of every figure the zoo prints (``zoo evaluate``, the
figures ``zoo publish`` writes into model cards, ``tests/test_published_weights.py``).

:func:`evaluate_model` runs the task's own evaluation, the one the trainer validates with, and divides its sums by
the number of images. For nuclei (``training.segmentation``) that is HoVer-Net's ``compute_stats.py``: instance
statistics per image, then their mean; type statistics pooled over the images. :func:`nuclei_evaluation_task`
builds the task ``zoo evaluate`` scores a segmentation net with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from zoo.hovernet import STAT_NAMES

from .data import DatasetLayoutError
from .segmentation import TYPE_SETS, ImageScore, NucleiImageDataset, NucleiSegmentationTask
from .tasks import Task

__all__ = ['Evaluation', 'evaluate_model', 'nuclei_evaluation_task']

# Tiled inference of the held-out images: how many tiles go through the network at once. Figures do not depend
# on it beyond float summation order; published cards were measured with it.
EVAL_BATCH = 256


@dataclass
class Evaluation:
    """``metrics``: the mean over the images of each per-image figure (HoVer-Net's type statistics: pooled over
    them), what a model card prints; ``per_image``: for nuclei, one row per image (``name``, the six instance
    statistics, the numbers of true and predicted nuclei)."""

    metrics: dict[str, float]
    count: int
    per_image: list[dict] = field(default_factory=list)


def evaluate_model(
    model: torch.nn.Module,
    task: Task,
    split: str = 'test',
    batch_size: int = EVAL_BATCH,
    device: str | torch.device = 'cpu',
    on_image: Callable[[ImageScore], None] | None = None,
) -> Evaluation:
    """``model`` measured on ``task``'s ``split`` (the held-out test data by default; nuclei tasks also score
    ``'train'``, ``'val'`` and ``'all'``). ``on_image`` sees each scored image (nuclei), e.g. to draw it."""
    device = torch.device(device)
    model = model.eval().to(device)
    per_image = []
    if isinstance(task, NucleiSegmentationTask):
        samples = task.split_samples(split)
        if not samples:
            raise DatasetLayoutError(f'{task.data_dir or task.dataset}: no images in its {split!r} split')

        def scored():
            for score in task.score_images(model, NucleiImageDataset(samples), device, batch_size):
                row = {'name': score.sample.name} | {name: score.stats[name] for name in STAT_NAMES}
                row['true_nuclei'], row['pred_nuclei'] = _count(score.sample.inst_map), _count(score.pred)
                per_image.append(row)
                if on_image is not None:
                    on_image(score)
                yield score

        sums = task.summarise(scored())
    else:
        if split != 'test':
            raise ValueError(f'{type(task).__name__} is measured on its test data only, not {split!r}')
        sums = task.evaluate(model, task.test_dataset(), device, batch_size)
    count = sums.pop('count')
    return Evaluation({name: value / count for name, value in sums.items()}, int(count), per_image)


def _count(inst_map: np.ndarray) -> int:
    return int(np.count_nonzero(np.unique(inst_map)))


def nuclei_evaluation_task(
    model: torch.nn.Module,
    dataset: str,
    data_dir: str | None,
    types: Sequence[str] | None = None,
    settings: Mapping | None = None,
) -> NucleiSegmentationTask:
    """The nuclei task that scores ``model`` on ``dataset``: tiling from ``settings`` (the task arguments of the
    recipe that trained it, where known), and type statistics where model and dataset both have nuclear types
    and agree on how many. A geojson dataset takes its type names from ``types`` (for a model with types), else
    from the model's ``label_names``; a folder dataset is scored without types."""
    settings = dict(settings or {})
    args = {'dataset': dataset, 'data_dir': data_dir} | {k: settings[k] for k in ('tile', 'overlap') if k in settings}
    model_types = getattr(model, 'num_types', 0) or 0
    if dataset == 'geojson':
        label_names = list(getattr(model, 'pretrained_cfg', {}).get('label_names') or [])
        if types is not None and not model_types:
            raise DatasetLayoutError('the model has no type branch: evaluate it without --types (instance statistics)')
        if types is None and model_types and len(label_names) == model_types:
            types = label_names[1:]
        offered = [] if types is None else [len(types) + 1]
        args['types'] = None if types is None else list(types)
    elif types is not None:
        raise DatasetLayoutError(
            f'--types names the classes of QuPath GeoJSON (--dataset geojson); {dataset} has its own'
        )
    else:
        offered = [len(names) for names in TYPE_SETS.get(dataset, ())]
    if model_types and offered:
        if model_types not in offered:
            counts = ' or '.join(str(count) for count in offered)
            raise DatasetLayoutError(
                f'the model predicts {model_types} nuclear types (background included) but {dataset} has {counts}; '
                f'evaluate a model trained on these types'
            )
        args['num_types'] = model_types
    return NucleiSegmentationTask(**args)
