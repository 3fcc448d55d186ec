"""``zoo compress``: a trained network made smaller and faster after the fact (``zoo.compress``), recovered by a short
distillation from its dense self through the trainer, measured against it and published as a hub folder.

Every precondition is checked before anything is written: the model (a published name or folder), the output folder,
the recipe (``compress_classifier`` or ``compress_segmenter`` by the model's task unless ``recipe`` names another
whose task is ``distillation``), the data (built once, so a folder in the wrong layout stops here) and the plan
(``zoo.plan_compression``, timing layers on this machine at the recipe's evaluation batch; a rank target that cannot
be met stops here). Then:

1. the plan is saved in the run directory; run again, the command reuses it (timings would differ) and the trainer
   resumes from the last complete epoch, as any run does;
2. the trainer runs the recipe with the dense model's name and the planned ranks as its model, so the network it
   starts from is the truncated SVD of the dense weights (``zoo.create_model(name, pretrained=True, ranks=...)``) and
   its checkpoints record the ranks; the teacher is the dense model; processes and the torus all-reduce as usual;
3. the best epoch (on the validation data) and the dense network are evaluated on the held-out test data by the same
   code, and timed alternately on this machine (``zoo.profile.inference_seconds``);
4. the hub folder is published (``zoo.publish.publish``) with a card that states both side by side.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

import zoo
from zoo.cards import ModelCard, read_card
from zoo.hub import Weights, parse_source
from zoo.io import atomic_write_bytes
from zoo.profile import inference_seconds
from zoo.publish import check_target, publish

from .distributed import DistContext
from .errors import RunError
from .publish import evaluate_weights
from .recipe import RecipeError, bundled_recipes, load_recipe
from .runlog import describe_device
from .segmentation import DATASETS as NUCLEI_DATASETS
from .tasks import build_task
from .trainer import Trainer

__all__ = ['RECIPES', 'compress_model', 'data_overrides']

_log = logging.getLogger('training')

# The bundled recipe for each kind of model.
RECIPES = {'image-classification': 'compress_classifier', 'nuclei-segmentation': 'compress_segmenter'}
# --data: named datasets of each wrapped task, and the dataset that is a folder of the task's generic layout.
_DATASETS = {
    'classification': (('fashion_mnist', 'cifar10'), 'image_folder'),
    'nuclei-segmentation': (tuple(d for d in NUCLEI_DATASETS if d != 'folder'), 'folder'),
}
_PLAN = Path('compression') / 'plan.json'


def data_overrides(spec: str, task: str) -> list[str]:
    """Recipe overrides for ``--data``: ``NAME`` (a dataset of the wrapped task), ``NAME:DIR``, or ``DIR`` (a folder
    in the task's generic layout: ``train/`` and ``val/`` class folders, or images/ and labels/ for nuclei)."""
    named, folder = _DATASETS[task]
    name, sep, directory = spec.partition(':')
    if not sep and spec in named:
        return [f'task.args.task_args.dataset={spec}']
    if sep and name not in (*named, folder):
        raise RecipeError(f'--data {spec}: {name!r} is not a dataset of the {task} task; available: {named}')
    if not sep:
        name, directory = folder, spec
    if not Path(directory).is_dir():
        raise RecipeError(f'--data {spec}: {directory} is not a folder, nor one of the datasets {named}')
    return [f'task.args.task_args.dataset={name}', f'task.args.task_args.data_dir={directory}']


def _recipe(model_name: str, task: str, recipe: str | None, data: str, epochs: int | None, overrides: Sequence[str]):
    name = recipe or RECIPES[task]
    base = load_recipe(name)
    if base['task']['name'] != 'distillation':
        raise RecipeError(
            f'recipe {name}: zoo compress fine-tunes by distillation, so its task must be distillation '
            f'(as in the bundled {RECIPES[task]}.yaml), not {base["task"]["name"]!r}'
        )
    inner = base['task']['args']['task']
    changes = [f'model.name={model_name}', f'task.args.teacher={model_name}', *data_overrides(data, inner)]
    if epochs is not None:
        changes.append(f'epochs={epochs}')
    return load_recipe(name, [*changes, *overrides])


def _plan_or_resume(run_dir: Path, model_name: str, dense: torch.nn.Module, options: dict) -> tuple[dict, bool]:
    """The plan saved in ``run_dir`` by an earlier run of the same command, else a new one (not yet saved)."""
    path = run_dir / _PLAN
    wanted = dict(model=model_name, options=dict(options))
    if path.is_file():
        saved = json.loads(path.read_text())
        if {k: saved[k] for k in wanted} != json.loads(json.dumps(wanted)):
            raise RunError(
                f'{run_dir} holds a compression planned for {saved["model"]} with {saved["options"]}; run with the '
                f'same model and options to resume it, or compress into a new --run-dir'
            )
        _log.info('resuming the compression planned in %s', path)
        return saved, True
    start = time.process_time()
    plan = zoo.plan_compression(dense, **options)
    return dict(wanted, plan=plan.to_dict(), plan_cpu_seconds=time.process_time() - start), False


def _spread(values: Sequence[float]) -> list[float]:
    return [statistics.median(values), min(values), max(values)]


def _source_card(model_name: str) -> ModelCard | None:
    """The dense weights' own card, where they are a registered tag or a local folder that has one."""
    weights = zoo.get_weights(model_name) if '.' in model_name and ':' not in model_name else None
    sources = [parse_source(text) for text in weights.sources] if weights is not None else []
    folders = [source.folder for source in sources if source.kind == 'local']
    if model_name.startswith('local-dir:'):
        folders = [Path(model_name.partition(':')[2]).expanduser()]
    for folder in folders:
        if (folder / 'card.json').is_file():
            return read_card(folder)
    return None


def compress_model(
    model_name: str,
    out_dir: Path,
    data: str,
    ranks: str | float = 'stable',
    target_macs: float | None = None,
    epochs: int | None = None,
    recipe: str | None = None,
    run_dir: Path | None = None,
    profile: bool = True,
    batch_size: int | None = None,
    input_size: int | None = None,
    repeats: int = 10,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    register_as: str | None = None,
    title: str | None = None,
    summary: str | None = None,
    command: str = '',
) -> Weights | None:
    """Compress ``model_name`` into the hub folder ``out_dir`` (see the module docstring); returns its manifest
    entry (registered as ``register_as`` in the index of ``out_dir``'s hub directory when given), ``None`` on ranks
    other than 0.
    Layers are profiled and both networks timed on ``batch_size`` images (default: the recipe's evaluation batch)
    of ``input_size`` pixels a side (default: the model's), ``repeats`` times."""
    out_dir = Path(out_dir)
    check_target(out_dir, None, register_as, overwrite)
    dense = zoo.create_model(model_name, pretrained=True).eval()
    architecture = dense.pretrained_cfg['architecture']
    check_target(out_dir, architecture, register_as, overwrite)
    config = _recipe(model_name, zoo.model_task(architecture), recipe, data, epochs, overrides)
    task_args = config['task']['args']
    inner = dict(name=task_args['task'], args=task_args['task_args'])
    build_task(inner['name'], inner['args']).datasets()  # a data folder in the wrong layout stops here
    channels, *size = dense.pretrained_cfg['input_size']
    options = dict(
        ranks=ranks,
        target_macs=target_macs,
        profile=profile,
        batch_size=batch_size or config['data']['eval_batch'],
        input_size=[channels, input_size, input_size] if input_size else [channels, *size],
        repeats=repeats,
    )
    run_dir = Path(run_dir or Path('runs') / f'compress-{out_dir.name}')
    ctx = DistContext(config['distributed']['timeout_s'])
    record, resumed = _plan_or_resume(run_dir, model_name, dense, options) if ctx.is_main else (None, False)
    if ctx.distributed:  # rank 0 timed the layers; every rank trains what it decided
        shared = [record]
        dist.broadcast_object_list(shared, src=0)
        record = shared[0]
    if ctx.is_main and not resumed:
        atomic_write_bytes(run_dir / _PLAN, json.dumps(record, indent=1).encode())
    plan = record['plan']
    config['model']['args'] = dict(config['model']['args'], ranks=plan['ranks'])
    trainer = Trainer(config, run_dir)
    trainer.fit()
    if not ctx.is_main:
        return None

    from safetensors.torch import load_file

    measure_start = time.process_time()
    compressed = trainer.model.cpu().eval()
    compressed.load_state_dict(load_file(str(run_dir / 'best' / 'model.safetensors')))
    evaluation = {'task': inner}
    metrics = {
        name: {k: round(v, 4) for k, v in evaluate_weights(model, evaluation).items() if not k.endswith('loss')}
        for name, model in (('dense', dense), ('compressed', compressed))
    }
    inputs = torch.rand(options['batch_size'], *options['input_size'])
    seconds = inference_seconds([dense, compressed], inputs, repeats=repeats)
    task = build_task(inner['name'], inner['args'])
    split = task.test_description()
    compression = dict(
        source=model_name,
        rule=plan['rule'],
        epochs=config['epochs'],
        plan_cpu_minutes=record['plan_cpu_seconds'] / 60,
        finetune_cpu_minutes=trainer.train_cpu_seconds / 60,
        measure_cpu_minutes=(time.process_time() - measure_start) / 60,
        timing=dict(
            batch=options['batch_size'],
            input_size=options['input_size'],
            repeats=repeats,
            device=describe_device(torch.device('cpu')),
        ),
        split=split,
        models={
            name: dict(params=plan[f'{prefix}params'], macs=plan[f'{prefix}macs'], seconds=_spread(s), metrics=m)
            for (name, prefix), s, m in zip(
                (('dense', 'dense_'), ('compressed', '')), seconds, (metrics['dense'], metrics['compressed'])
            )
        },
        speedup=_spread([d / c for d, c in zip(*seconds)]),
        layers=plan['layers'],
    )
    source = _source_card(model_name)
    recipe_path = f'training/recipes/{config["name"]}.yaml' if config['name'] in bundled_recipes() else config['source']
    macs_ratio = plan['dense_macs'] / plan['macs']
    factorized = sum(row['factorize'] for row in plan['layers'])
    card = ModelCard(
        title=title or f'{register_as or out_dir.name}: {model_name} compressed ({macs_ratio:.2f}x fewer MACs)',
        summary=summary
        or (
            f'{model_name} made smaller and faster after training by `zoo compress`: {factorized} of its '
            f'{len(plan["layers"])} candidate layers factorized at ranks from the {plan["rule"]} of their trained '
            f'weights (truncated SVD), the others kept dense where a factorization is not smaller or not faster on '
            f'the CPU it was timed on, then distilled from the dense network for {config["epochs"]} epoch(s). '
            f'{macs_ratio:.2f}x fewer MACs; dense and compressed are compared in Compression, measured by the same '
            f'code on the same held-out data.'
        ),
        dataset=task.dataset_description(),
        dataset_id=task.dataset_id(),
        task=zoo.model_task(architecture),
        metrics={split: metrics['compressed']},
        recipe=recipe_path,
        command=command,
        training=(
            f'Recipe `{recipe_path}` ({config["description"]}), teacher `{model_name}`; best epoch chosen on the '
            f'validation data; '
            + ('the figures are on that same data.' if task.selects_on_test_data() else 'the test data chose nothing.')
        ),
        intended_use=(source.intended_use if source else '')
        or 'Where the dense network is used and its speed or size matters more than the difference stated above.',
        limitations=(
            (source.limitations + ' ' if source and source.limitations else '')
            + 'The compressed network inherits what the dense network was trained on; its speed-up was measured '
            'on one shared CPU in eager PyTorch and differs on other hardware and runtimes.'
        ),
        tags=('cuttlefish', 'compressed'),
        paper_ids=dense.pretrained_cfg.get('paper_ids') or (),
        model_id=register_as,
        input_domain=dense.input_domain,
        microns_per_pixel=dense.microns_per_pixel,
        compression=compression,
    )
    weights = publish(
        compressed, out_dir, card, overwrite=overwrite, register_as=register_as, data_config=task.data_config()
    )
    _log.info('wrote %s: %.2fx fewer MACs, %s', out_dir, macs_ratio, metrics)
    return weights
