"""Model cards: a published folder's ``README.md``, rendered from structured, measured data.

``zoo publish`` stores the card's data as ``card.json`` next to ``config.json``; :func:`render_card` turns the
two into Markdown with Hugging Face metadata (``huggingface_hub.ModelCardData``: ``library_name``, tags,
datasets and a ``model-index`` of the measured results), and :func:`sync_cards` re-renders every folder of a
hub directory and its copy in ``model_cards/`` (``zoo cards``; ``zoo cards --check`` fails when they differ).
"""

from __future__ import annotations

import dataclasses
import errno
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData
from pydantic import ConfigDict, TypeAdapter, ValidationError

from ._registry import read_config
from .hub import CARD_DATA_NAME, CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, ConfigError, document_error
from .io import atomic_write_bytes

__all__ = ['ModelCard', 'INPUT_DOMAINS', 'read_card', 'render_card', 'sync_cards']

# The Hugging Face Hub's names where ours differ: its pipeline tags and metric ids.
_HF_PIPELINE = {'nuclei-segmentation': 'image-segmentation'}
_HF_METRIC = {'top1': 'accuracy', 'top5': 'top_5_accuracy'}
# What a model's input_domain means, as a card states it.
INPUT_DOMAINS = {
    'fashion-mnist': '28x28 greyscale product photos, a light object on a black background (Fashion-MNIST)',
    'fluorescence': 'fluorescence microscopy of nuclei: bright nuclei on a dark background (not H&E)',
    'he': 'H&E-stained brightfield histology: light background, purple nuclei, pink tissue',
}


@dataclass
class ModelCard:
    """What a model card says beyond what the model itself knows. Metrics must be measured, not hoped for.

    ``metrics`` maps a split name (e.g. ``'Fashion-MNIST test split (10,000 images)'``) to ``{metric: value}``;
    ``figures`` are image files copied next to the card and embedded in it; ``model_id`` is the registered
    name that loads these weights (``'cf_resnet18_fmnist.cuttlefish'``), when there is one; ``num_params``
    and ``macs`` are filled in by ``zoo.publish.publish``. ``compression`` holds what ``zoo compress`` measured
    of the dense network and of these weights side by side (see :func:`compression_section`).
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
    input_domain: str | None = None
    microns_per_pixel: float | None = None
    num_params: int | None = None
    macs: int | None = None
    compression: Mapping[str, Any] = field(default_factory=dict)
    __pydantic_config__ = ConfigDict(extra='forbid')  # how read_card checks a card.json: no unknown keys

    def __post_init__(self):
        if self.input_domain is not None and self.input_domain not in INPUT_DOMAINS:
            raise ValueError(f'input_domain must be one of {sorted(INPUT_DOMAINS)} or None, got {self.input_domain!r}')

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data['figures'] = [Path(f).name for f in self.figures]  # stored next to the card
        return json.dumps(data, indent=2) + '\n'


_CARD = TypeAdapter(ModelCard)


def read_card(folder: Path) -> ModelCard:
    """The card data of a published folder. A ``card.json`` that is not a card (not JSON, an unknown key, a
    wrong type) or that names a figure other than an image stored next to it raises :class:`~zoo.hub.ConfigError`
    naming the file and the key."""
    folder = Path(folder)
    path = folder / CARD_DATA_NAME
    try:
        card = _CARD.validate_json(path.read_bytes())
    except ValidationError as e:
        raise document_error(e, str(path)) from None
    for figure in card.figures:
        if Path(figure).name != figure or not (folder / figure).is_file():
            raise ConfigError(
                f'{path}: figures: {figure!r} is not an image file in {folder}; a card shows only its own'
            )
    return card


def _metadata(card: ModelCard, architecture: str) -> str:
    pipeline = _HF_PIPELINE.get(card.task, card.task)
    results = [
        EvalResult(
            task_type=pipeline,
            # ``dataset_type`` is a dataset id on the Hub; data without one (e.g. the stardist sample) is 'custom'.
            dataset_type=card.dataset_id or 'custom',
            dataset_name=card.dataset,
            dataset_split=split,
            metric_type=_HF_METRIC.get(name, name),
            metric_value=float(value),
            metric_name=name,
        )
        for split, values in card.metrics.items()
        for name, value in values.items()
    ]
    data = ModelCardData(
        library_name='timm',
        license=card.license,
        pipeline_tag=pipeline,
        tags=list(dict.fromkeys([pipeline, card.task, 'timm', 'cuttlefish-mrl-zoo', *card.tags])),
        datasets=[card.dataset_id] if card.dataset_id else None,
        model_name=architecture,
        eval_results=results or None,
    )
    return data.to_yaml()


def _usage(card: ModelCard, folder_name: str) -> list[str]:
    name = card.model_id
    lines = ['import timm, torch, zoo  # importing zoo registers its architectures with timm; timm alone cannot']
    if name:
        lines += [
            f"model = timm.create_model('{name}', pretrained=True)  # from a clone of the zoo (hub/ + manifest)",
            f"model = torch.hub.load('<owner>/<zoo repo>', '{name}', pretrained=True)  # or a local clone, "
            f"source='local'",
        ]
    lines += [
        f"model = timm.create_model('local-dir:hub/{folder_name}', pretrained=True)  # this folder",
        f"model = timm.create_model('hf-hub:<org>/{folder_name}@<revision>', pretrained=True)  # once uploaded",
        f"model = zoo.create_model('{card.model_id or '<architecture>'}', checkpoint_path='hub/{folder_name}/"
        f"{WEIGHTS_NAME}')",
    ]
    return [
        '## Usage',
        '',
        '```python',
        *lines,
        '```',
        '',
        f'Every way loads exactly `{WEIGHTS_NAME}` of this folder and checks it against the sha256 in '
        f'`{CONFIG_NAME}`; a modified file is refused.',
        '',
    ]


def render_card(
    card: ModelCard, config: Mapping[str, Any], file_size_mb: float, folder_name: str, figure_prefix: str = ''
) -> str:
    """The Markdown card (Hugging Face YAML front matter + body). ``figure_prefix`` is prepended to figure links
    (``model_cards/`` copies link into ``hub/``)."""
    architecture = config['architecture']
    input_size = config['pretrained_cfg'].get('input_size')
    facts = [
        ('Architecture', f'`{architecture}`'),
        ('Parameters', f'{card.num_params:,}' if card.num_params else 'n/a'),
        (
            'MACs (multiply-adds) per image',
            f'{card.macs / 1e6:,.1f} M at input {tuple(input_size)}' if card.macs and input_size else 'n/a',
        ),
        ('Weights', f'`{WEIGHTS_NAME}`, {file_size_mb:.2f} MB, sha256 `{config.get("sha256")}`'),
        ('Input', INPUT_DOMAINS.get(card.input_domain, 'not stated')),
    ]
    if card.task == 'nuclei-segmentation':  # what a slide reader needs to pick a pyramid level
        facts.append(('Resolution', f'{card.microns_per_pixel} µm/pixel' if card.microns_per_pixel else 'not known'))
    facts += [('Dataset', card.dataset), ('Recipe', f'`{card.recipe}`' if card.recipe else 'n/a')]
    lines = [
        '---',
        _metadata(card, architecture).strip(),
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
    lines += _usage(card, folder_name)
    if card.command:
        lines += ['## Reproduce', '', '```bash', card.command.strip(), '```', '']
    for title, body in [
        ('Training', card.training),
        ('Compression', compression_section(card.compression) if card.compression else ''),
        ('Intended use', card.intended_use),
        ('Limitations', card.limitations),
        *card.extra_sections.items(),
    ]:
        if body:
            lines += [f'## {title}', '', body.strip(), '']
    for figure in card.figures:
        lines += [f'![{Path(figure).stem}]({figure_prefix}{Path(figure).name})', '']
    if card.paper_ids:
        lines += ['## Papers', '', *[f'- {p}' for p in card.paper_ids], '']
    return '\n'.join(lines)


def _spread(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    median, low, high = (v * scale for v in values)
    return f'{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})'


def compression_section(data: Mapping[str, Any]) -> str:
    """The dense network and the compressed one side by side, and the decision for each layer, from what
    ``zoo compress`` recorded: ``source``, ``rule``, ``epochs``, ``plan_cpu_minutes``, ``finetune_cpu_minutes``,
    ``measure_cpu_minutes``, ``timing`` (``batch``, ``input_size``, ``repeats``, ``device``), ``split``, ``models``
    (``dense`` and ``compressed``: ``params``, ``macs``, ``seconds`` as median/min/max, ``metrics``), ``speedup``
    (median/min/max of the per-repeat ratios) and ``layers`` (one row per candidate layer)."""
    models, timing, layers = data['models'], data['timing'], data['layers']
    metrics = list(models['dense']['metrics'])
    factorized = [row for row in layers if row['factorize']]
    lines = [
        f'`{data["source"]}` compressed by `zoo compress`: ranks from the {data["rule"]}; {len(factorized)} of '
        f'{len(layers)} candidate layers factorized by truncated SVD of their trained weights (the others stay dense '
        f'where a factorization would not be smaller or, timed on {timing["device"]}, not faster), then '
        f'{data["epochs"]} epoch(s) of distillation from the dense network. CPU minutes: '
        f'{data["plan_cpu_minutes"]:.1f} to plan (stable ranks, timing layers), {data["finetune_cpu_minutes"]:.1f} '
        f'of fine-tuning (training steps of every process), {data["measure_cpu_minutes"]:.1f} to evaluate and time '
        'both networks.',
        '',
        f'Both networks measured by the same code: {data["split"]}; one forward pass of a batch of '
        f'{timing["batch"]} x {tuple(timing["input_size"])} in eager PyTorch on {timing["device"]}, the two timed '
        f'alternately, median (min-max) of {timing["repeats"]} repeats on a machine shared with other jobs.',
        '',
        '| network | parameters | MACs per image | ms per batch | ' + ' | '.join(metrics) + ' |',
        '|---|---:|---:|---:|' + '---:|' * len(metrics),
    ]
    for name, label in (('dense', f'dense `{data["source"]}`'), ('compressed', 'compressed (these weights)')):
        row = models[name]
        values = ' | '.join(f'{row["metrics"][k]:.4g}' for k in metrics)
        lines.append(
            f'| {label} | {row["params"]:,} | {row["macs"] / 1e6:,.1f} M | {_spread(row["seconds"], 1e3)} | {values} |'
        )
    dense, compressed = models['dense'], models['compressed']
    lines += [
        '',
        f'{dense["params"] / compressed["params"]:.2f}x fewer parameters, {dense["macs"] / compressed["macs"]:.2f}x '
        f"fewer MACs, {_spread(data['speedup'], digits=2)}x the dense network's speed.",
        '',
        '| layer | full rank | stable rank | rank | factorized | dense ms | low-rank ms | speed-up | note |',
        '|---|---:|---:|---:|---|---:|---:|---:|---|',
    ]
    for row in layers:
        timed = '- | - | -'
        if 'speedup' in row:
            timed = f'{row["dense_ms"]:.2f} | {row["low_rank_ms"]:.2f} | {row["speedup"]:.2f}'

        lines.append(
            f'| {row["layer"]} | {row["full_rank"]} | {row["stable_rank"]} | {row["rank"] or "-"} | '
            f'{"yes" if row["factorize"] else "no"} | {timed} | {row.get("note", "")} |'
        )
    return '\n'.join(lines)


def render_folder(folder: Path, figure_prefix: str = '') -> str:
    folder = Path(folder)
    size_mb = (folder / WEIGHTS_NAME).stat().st_size / 2**20
    return render_card(read_card(folder), read_config(folder), size_mb, folder.name, figure_prefix)


def sync_cards(hub: Path, model_cards: Path, check: bool = False) -> list[Path]:
    """Render ``README.md`` of every card folder in ``hub`` and ``model_cards/<folder>.md``; with ``check`` only
    report the files that differ from what would be rendered. Returns the files written (or stale). A ``hub``
    without a card to render (missing, a file, no folder with a ``card.json``) raises ``FileNotFoundError``."""
    folders = sorted(p.parent for p in Path(hub).glob(f'*/{CARD_DATA_NAME}'))
    if not folders:
        hub = Path(hub)
        problem = (
            f'no folder in it has a {CARD_DATA_NAME}'
            if hub.is_dir()
            else 'is a file, not a hub directory'
            if hub.exists()
            else 'no such hub directory'
        )
        raise FileNotFoundError(errno.ENOENT, problem, str(hub))
    changed = []
    for folder in folders:
        relative = Path('..', Path(hub).name, folder.name).as_posix() + '/'
        for path, text in (
            (folder / CARD_NAME, render_folder(folder)),
            (Path(model_cards) / f'{folder.name}.md', render_folder(folder, relative)),
        ):
            if not path.is_file() or path.read_text() != text:
                changed.append(path)
                if not check:
                    atomic_write_bytes(path, text.encode())
    return changed
