"""Publishing a finished training run: re-evaluate its best weights on the held-out test data and write a hub
folder (``zoo.publish.publish``: config.json, model.safetensors, the card with the measured figures and the
run's plots), optionally registering it in the hub directory's manifest so the zoo loads it by name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import zoo
from zoo.cards import ModelCard
from zoo.hub import ConfigError, Weights
from zoo.publish import check_target, publish

from .evaluate import evaluate_model
from .recipe import bundled_recipes
from .tasks import build_task

__all__ = ['evaluate_weights', 'load_run_model', 'publish_run']

_SELECTION = {
    False: 'the figures above are on held-out test data that chose nothing.',
    True: 'that is the data of the figures above (as in the papers), so they are not independent of '
    'the choice of epoch.',
}


def evaluate_weights(model: torch.nn.Module, recipe: dict) -> dict[str, float]:
    """The recipe task's metrics of ``model`` on its held-out test data (never used for model selection), as
    ``zoo evaluate`` measures them (``training.evaluate.evaluate_model``)."""
    return evaluate_model(model, build_task(recipe['task']['name'], recipe['task']['args'])).metrics


def load_run_model(run_dir: Path, info: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """The best weights of a finished training run, in the architecture they were trained in, and its
    ``best/run.json`` (``info``, when the caller has read it already)."""
    run_dir = Path(run_dir)
    info = info or read_run_info(run_dir)
    model = zoo.create_model(_architecture(info['model_name']), **info['model_args'])
    path = run_dir / 'best' / 'model.safetensors'
    zoo.check_weights_fit(model, path, info['model_name'])
    from safetensors.torch import load_file

    state = load_file(str(path))
    zoo.check_weight_values(state, model.state_dict(), info['model_name'], path)  # before any evaluation
    model.load_state_dict(state)
    return model, info


def publish_run(
    run_dir: Path,
    out_dir: Path,
    model_id: str,
    title: str,
    summary: str,
    intended_use: str,
    limitations: str,
    fp16: bool = False,
    command: str | None = None,
    input_domain: str | None = None,
    microns_per_pixel: float | None = None,
    overwrite: bool = False,
    register_as: str | None = None,
) -> Weights:
    """Publish ``run_dir/best`` to ``out_dir``; returns its manifest entry (registered with ``register_as``).
    What publishing would refuse is refused before the weights are re-evaluated."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    info = read_run_info(run_dir)
    check_target(out_dir, _architecture(info['model_name']), register_as, overwrite)
    model, info = load_run_model(run_dir, info)
    recipe = info['recipe']
    if fp16:  # measure what is published: the fp16-rounded weights
        model.load_state_dict(
            {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        )
    measured = {k: v for k, v in evaluate_weights(model, recipe).items() if not k.endswith('loss')}
    # A metric the test data cannot define (F_c of a type with no nucleus there) is named, not published as NaN.
    undefined = sorted(k for k, v in measured.items() if math.isnan(v))
    test = {k: round(v, 4) for k, v in measured.items() if k not in undefined}
    task = build_task(recipe['task']['name'], recipe['task']['args'])
    split = task.test_description()
    # A bundled recipe is named by its place in the package (the run may come from another checkout).
    recipe_path = f'training/recipes/{recipe["name"]}.yaml' if recipe['name'] in bundled_recipes() else recipe['source']
    figures = [p for p in (run_dir / 'cuttlefish' / 'stable_ranks.png',) if p.exists()]
    figures += sorted((run_dir / 'best').glob('*_overlay.png'))
    extra = {}
    if info['model_name'].startswith('mrl_'):
        extra['Architecture'] = MRL_DESIGN_NOTE
    if (run_dir / 'cuttlefish' / 'decisions.csv').exists():
        extra['Cuttlefish switch'] = _switch_summary(run_dir, info)
    validation = {k: v for k, v in info['metrics'].items() if isinstance(v, float)}
    grid = f' ({info["grid"][0]}x{info["grid"][1]} grid)' if info.get('grid') else ''
    code = f' Code: commit `{info["code_version"]}`.' if info.get('code_version') else ''
    training = (
        f'Recipe `{recipe_path}` ({recipe["description"]}). '
        f'{info["world_size"]} process(es) ({info["device"]}), gradient all-reduce: {info["allreduce"]}{grid}; '
        f'{info["train_seconds"] / 60:.1f} min of training up to the best epoch '
        f'({int(info["metrics"]["epoch"]) + 1} of {recipe["epochs"]}). Best epoch chosen on the validation '
        f'data ({task.main_metric} {validation[task.main_metric]:.4g}); '
        f'{_SELECTION[task.selects_on_test_data()]}{code}'
    )
    if undefined:
        training += f' Not defined on the test data (no instance there): {", ".join(undefined)}.'
    card = ModelCard(
        title=title,
        summary=summary,
        dataset=task.dataset_description(),
        dataset_id=task.dataset_id(),
        task=zoo.model_task(info['model_name']),
        metrics={split: test},
        recipe=str(recipe_path),
        command=command
        or f'torchrun --standalone --nproc-per-node {info["world_size"]} -m training.cli train '
        f'--recipe {recipe["name"]}',
        training=training,
        intended_use=intended_use,
        limitations=limitations,
        figures=figures,
        extra_sections=extra,
        tags=('cuttlefish',) if info['model_name'].startswith('cf_') else ('mrl',),
        paper_ids=model.pretrained_cfg.get('paper_ids') or (),
        model_id=model_id or register_as,
        input_domain=input_domain,
        microns_per_pixel=microns_per_pixel,
    )
    dtype = torch.float16 if fp16 else None
    return publish(
        model, out_dir, card, dtype=dtype, overwrite=overwrite, register_as=register_as, data_config=task.data_config()
    )


# Every MRL card says what the block is: this zoo's design, not the authors' (their code is not public).
MRL_DESIGN_NOTE = (
    "The MRL block is this zoo's design from the MRL paper's abstract (arXiv:2208.13975); the authors' equations "
    'and code are not public. Each block pools its normalised features into one regional token per window, mixes '
    'all regional tokens with multi-head self-attention, adds each token back to the local features of its region, '
    'mixes locally with a depthwise convolution and ends with a (optionally grouped) 1x1-convolution FFN. The full '
    'design and its reasoning are in `zoo/models/mrl.py`.'
)


def _architecture(model_name: str) -> str:
    """A run started from published weights is named ``architecture.tag``; its weights are its own."""
    return model_name.partition('.')[0]


def read_run_info(run_dir: Path) -> dict:
    """``best/run.json`` of a training run, with a clear error for a missing or corrupt file."""
    path = Path(run_dir) / 'best' / 'run.json'
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f'{path} does not exist: {run_dir} is not a finished training run (zoo train writes it '
            f'with the best weights)'
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f'{path} is corrupt ({e}); rerun the training or restore the file') from None
    missing = [k for k in ('model_name', 'model_args', 'recipe', 'metrics') if k not in info]
    if missing:
        raise ConfigError(f'{path} lacks {", ".join(missing)}: it was not written by zoo train')
    return info


def _switch_summary(run_dir: Path, info: dict) -> str:
    import csv

    rows = list(csv.DictReader(open(run_dir / 'cuttlefish' / 'decisions.csv')))
    factorized = [r for r in rows if r['factorize'] == 'True']
    state_rows = list(csv.DictReader(open(run_dir / 'metrics.csv')))
    switched = next((r['epoch'] for r in state_rows if r.get('cf_switched') == '1'), None)
    outcome = (
        f'from epoch {int(switched) + 1} on, {len(factorized)} of the {len(rows)} candidate layers trained low-rank'
        if factorized
        else 'no layer was factorized'
    )
    lines = [
        f"The switch came after epoch {switched} (the recipe's rule on the tracked layers' stable ranks, see "
        f'Training); {outcome}. A layer stays dense when its factorization at the chosen rank is not smaller or (when '
        f'profiling) not faster on the training device.',
        '',
        '| layer | full rank | chosen rank | factorized | dense ms | low-rank ms |',
        '|---|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append(
            f'| {r["layer"]} | {r["full_rank"]} | {r["rank"]} | {r["factorize"]} | '
            f'{float(r["dense_ms"]):.2f} | {float(r["low_rank_ms"]):.2f} |'
            if r.get('dense_ms')
            else f'| {r["layer"]} | {r["full_rank"]} | {r["rank"]} | {r["factorize"]} | - | - |'
        )
    return '\n'.join(lines)
