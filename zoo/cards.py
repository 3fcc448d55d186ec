"""Model cards: what a published model's README.md says, rendered from structured, measured data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .hub import WEIGHTS_NAME

__all__ = ['ModelCard', 'render_card']


@dataclass
class ModelCard:
    """What a model card says beyond what the model itself knows. Metrics must be measured, not hoped for.

    ``metrics`` maps a split name (e.g. ``'Fashion-MNIST test (10,000 images)'``) to ``{metric: value}``;
    ``figures`` are image files copied next to the card and embedded in it. ``model_id`` is the
    registered name that loads these weights (``'cf_resnet18_fmnist'``), when there is one.
    """

    title: str
    summary: str
    dataset: str
    dataset_id: str | None = None
    task: str = 'image-classification'
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    recipe: str = ''
    command: str = ''
    training: str = ''
    intended_use: str = ''
    limitations: str = ''
    figures: Sequence[str | Path] = ()
    extra_sections: Mapping[str, str] = field(default_factory=dict)
    tags: Sequence[str] = ()
    license: str = 'apache-2.0'
    paper_ids: Sequence[str] = ()
    model_id: str | None = None


# The Hugging Face Hub's names where ours differ: its pipeline tags and metric ids.
_HF_PIPELINE = {'nuclei-segmentation': 'image-segmentation'}
_HF_METRIC = {'top1': 'accuracy', 'top5': 'top_5_accuracy'}


def _card_metadata(card: ModelCard, architecture: str) -> dict:
    pipeline = _HF_PIPELINE.get(card.task, card.task)
    meta: dict[str, Any] = dict(
        library_name='timm',
        license=card.license,
        pipeline_tag=pipeline,
        tags=list(dict.fromkeys([pipeline, card.task, 'timm', 'cuttlefish-mrl-zoo', *card.tags])),
    )
    if card.dataset_id:
        meta['datasets'] = [card.dataset_id]
    if card.metrics:
        results = []
        for split, values in card.metrics.items():
            results.append(
                dict(
                    task=dict(type=pipeline),
                    # ``type`` is a dataset id on the Hub; data without one (e.g. the stardist sample) is 'custom'.
                    dataset=dict(name=card.dataset, type=card.dataset_id or 'custom', split=split),
                    metrics=[dict(type=_HF_METRIC.get(k, k), value=float(v), name=k) for k, v in values.items()],
                )
            )
        meta['model-index'] = [dict(name=architecture, results=results)]
    return meta


def render_card(
    card: ModelCard,
    architecture: str,
    config: Mapping[str, Any],
    num_params: int,
    macs: int | None,
    file_size_mb: float,
    sha256: str,
) -> str:
    """Render a model card (YAML front matter + Markdown body) from measured results."""
    meta = yaml.safe_dump(_card_metadata(card, architecture), sort_keys=False).strip()
    input_size = config['pretrained_cfg'].get('input_size')
    facts = [
        ('Architecture', f'`{architecture}`'),
        ('Parameters', f'{num_params:,}'),
        ('MACs (multiply-adds) per image', f'{macs / 1e6:,.1f} M at input {tuple(input_size)}' if macs else 'n/a'),
        ('Weights', f'`{WEIGHTS_NAME}`, {file_size_mb:.2f} MB, sha256 `{sha256}`'),
        ('Dataset', card.dataset),
        ('Recipe', f'`{card.recipe}`' if card.recipe else 'n/a'),
    ]
    lines = [
        '---',
        meta,
        '---',
        '',
        f'# {card.title}',
        '',
        card.summary.strip(),
        '',
        '| | |',
        '|---|---|',
        *[f'| {k} | {v} |' for k, v in facts],
        '',
    ]
    if card.metrics:
        lines += ['## Measured results', '', '| split | metric | value |', '|---|---|---|']
        lines += [f'| {split} | {k} | {v:.4g} |' for split, values in card.metrics.items() for k, v in values.items()]
        lines.append('')
    usage = ['import torch, timm, zoo  # importing zoo registers the architectures with timm']
    if card.model_id:
        usage += [
            f"model = timm.create_model('{card.model_id}', pretrained=True).eval()",
            f"model = torch.hub.load('<path to a clone>', '{card.model_id}', source='local', pretrained=True)",
        ]
    usage += [
        "model = zoo.create_model('local-dir:<path to this folder>', pretrained=True).eval()",
        "model = zoo.create_model('hf-hub:<org>/<repo>@<revision>', pretrained=True).eval()  # once uploaded",
    ]
    lines += ['## Usage', '', '```python', *usage, '```', '']
    if card.command:
        lines += ['## Reproduce', '', '```bash', card.command.strip(), '```', '']
    for title, body in [
        ('Training', card.training),
        ('Intended use', card.intended_use),
        ('Limitations', card.limitations),
        *card.extra_sections.items(),
    ]:
        if body:
            lines += [f'## {title}', '', body.strip(), '']
    for figure in card.figures:
        lines += [f'![{Path(figure).stem}]({Path(figure).name})', '']
    if card.paper_ids:
        lines += ['## Papers', '', *[f'- {p}' for p in card.paper_ids], '']
    return '\n'.join(lines)
