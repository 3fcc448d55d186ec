"""Nuclei segmentation side by side: MRL encoders, HoVer-Net, and HoVer-Net's branches on plain timm encoders.

Five nets are trained with one recipe (``training/recipes/stardist_mrl_seg_nano.yaml`` with the overrides below),
on the same data split, for the same epochs, once per seed; each run's best epoch (validation DICE) is then
measured on the held-out images with HoVer-Net's metrics (DICE, AJI, AJI+, DQ, SQ, PQ, per image then averaged).
The table gives the mean and standard deviation over seeds, the per-seed values follow it.

* ``mrl_seg_nano`` / ``mrl_seg_tiny``: the MRL encoders under the zoo's NP/HV decoder (``zoo.models.hovernet``);
* ``hovernet_fast``: HoVer-Net as github:vqdang/hover_net defines it ('fast' mode: 'same' stem, 3x3 decoder
  convolutions; ``--models ... hovernet_original`` for the paper's mode, 2.5x the compute);
* ``resnet18`` / ``convnext_atto``: timm encoders under the *same* decoder as ``mrl_seg_nano`` (``hovernet`` with
  ``encoder=NAME, decoder_dims=(128, 64, 32, 32, 16)``), so that only the encoder differs.

Timings are measured after training, side by side: the models take turns (one training step of a batch of
patches, then one tiled inference pass over the held-out images, per turn), so a change in the machine's load
affects all of them; the table gives the median and min-max over the turns. Train seconds per epoch are steps
per epoch x seconds per step (data loading and validation excluded). MACs are counted at 256x256.

Usage::

    python benchmarks/nuclei.py                      # the stardist sample; writes benchmarks/results/nuclei.md
    python benchmarks/nuclei.py --data-dir DIR       # an image folder (training.data.load_folder's layout)
    python benchmarks/nuclei.py --epochs 150 --step 64 --batch 16 --lr 2e-3 --device cuda   # the card's recipe

Runs live in ``--run-root`` (default ``runs/nuclei-benchmark``); a rerun resumes unfinished runs and reuses
finished ones (``--report-only`` only rebuilds the table from them).
"""

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout, installed or not

import timm  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import zoo  # noqa: E402
from training.recipe import load_recipe  # noqa: E402
from training.tasks import build_task  # noqa: E402
from training.trainer import Trainer  # noqa: E402
from zoo.profile import count_macs  # noqa: E402
from zoo.segment import predict_maps, tile_starts  # noqa: E402

NANO_DECODER = [128, 64, 32, 32, 16]
PAPER_ENCODER = "HoVer-Net's pre-activation ResNet-50"
# label -> (registered model, model.args, encoder)
MODELS = {
    'mrl_seg_nano': ('mrl_seg_nano', {}, 'mrl_nano'),
    'mrl_seg_tiny': ('mrl_seg_tiny', {}, 'mrl_tiny'),
    'hovernet_fast': ('hovernet_fast', {}, PAPER_ENCODER),
    'hovernet_original': ('hovernet_original', {}, PAPER_ENCODER),
    'resnet18': ('hovernet', dict(encoder='resnet18', decoder_dims=NANO_DECODER), 'resnet18'),
    'convnext_atto': ('hovernet', dict(encoder='convnext_atto', decoder_dims=NANO_DECODER), 'convnext_atto'),
}
DEFAULT_MODELS = ('mrl_seg_nano', 'mrl_seg_tiny', 'hovernet_fast', 'resnet18', 'convnext_atto')
BASE_RECIPE = 'stardist_mrl_seg_nano'
METRICS = ('dice', 'aji', 'aji_plus', 'dq', 'sq', 'pq')

_log = logging.getLogger('benchmarks.nuclei')


def recipe_overrides(args, label: str, seed: int) -> list[str]:
    name, model_args, _ = MODELS[label]
    overrides = [
        f'model.name={name}',
        f'model.args={json.dumps(model_args)}',  # replaces the base recipe's (drop_path_rate is MRL-only there)
        f'seed={seed}',
        f'epochs={args.epochs}',
        f'task.args.patch_size={args.patch}',
        f'task.args.step={args.step}',
        f'task.args.tile={args.patch}',
        f'batch.stages=[[0, {args.batch}]]',
        f'batch.base={args.batch}',
        f'optim.lr={args.lr}',
        f'schedule.warmup_epochs={args.warmup_epochs}',
        f'data.eval_batch={args.batch}',
        'log.progress=false',
        'log.tensorboard=false',
    ]
    if args.data_dir:
        overrides += ['task.args.dataset=folder', f'task.args.data_dir={args.data_dir}']
    return overrides


def _what_is_computed(recipe: dict) -> dict:
    return {k: v for k, v in recipe.items() if k not in ('source', 'description')}


def train_and_test(args, label: str, seed: int) -> dict:
    """Train (or resume, or reuse) one run; its best weights' metrics on the held-out images."""
    run_dir = args.run_root / f'{label}-seed{seed}'
    result_path = run_dir / 'benchmark.json'
    recipe = load_recipe(BASE_RECIPE, recipe_overrides(args, label, seed))
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if result['recipe'] == _what_is_computed(recipe):
            return result
    if args.report_only:
        sys.exit(f'{run_dir} has no finished run of this recipe; run without --report-only')
    trainer = Trainer(recipe, run_dir)
    best = trainer.fit()
    model = zoo.create_model(recipe['model']['name'], **recipe['model']['args'])
    model.load_state_dict(load_file(str(run_dir / 'best' / 'model.safetensors')))
    task = build_task(recipe['task']['name'], recipe['task']['args'])
    sums = task.evaluate(model.eval(), task.test_dataset(), trainer.device, args.batch)
    count = sums.pop('count')
    result = dict(
        label=label,
        seed=seed,
        recipe=_what_is_computed(recipe),
        best_epoch=best['epoch'],
        test={k: v / count for k, v in sums.items()},
        test_images=int(count),
        test_description=task.test_description(),
        selects_on_test_data=task.selects_on_test_data(),
    )
    result_path.write_text(json.dumps(result, indent=1))
    return result


def model_facts(label: str) -> dict:
    name, model_args, _ = MODELS[label]
    with torch.device('meta'):
        model = zoo.create_model(name, **model_args).eval()
    return dict(params=sum(p.numel() for p in model.parameters()), macs=count_macs(model, (3, 256, 256)))


def timings(args, labels: list[str], turns: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of one training step and of one tiled inference pass over the held-out images, per model, the
    models taking turns so that they share the machine's load alike."""
    recipe = load_recipe(BASE_RECIPE, recipe_overrides(args, labels[0], 0))
    task = build_task(recipe['task']['name'], recipe['task']['args'])
    train_set, _ = task.datasets()
    batch = torch.utils.data.default_collate([train_set[i % len(train_set)] for i in range(args.batch)])
    images = [sample.image for sample in task.test_dataset()]
    device = torch.device(args.device)
    setups = {}
    for label in labels:
        name, model_args, _ = MODELS[label]
        model = zoo.create_model(name, **model_args).to(device)
        setups[label] = (model, torch.optim.AdamW(model.parameters(), lr=args.lr))
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

    def train_step(model, optimizer) -> float:
        model.train()
        sync()
        start = time.perf_counter()
        loss, _ = task.loss(model, batch, device)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync()
        return time.perf_counter() - start

    def infer(model) -> float:
        sync()
        start = time.perf_counter()
        for image in images:
            predict_maps(model, image, tile=args.patch, overlap=task.overlap, batch_size=args.batch, device=device)
        sync()
        return time.perf_counter() - start

    measured = {label: dict(step=[], infer=[]) for label in labels}
    for turn in range(turns + 1):  # turn 0 warms up (allocations, oneDNN kernel selection) and is not kept
        for label, (model, optimizer) in setups.items():
            step, inference = train_step(model, optimizer), infer(model)
            if turn:
                measured[label]['step'].append(step)
                measured[label]['infer'].append(inference)
            _log.info('timing turn %d %s: step %.2fs, inference %.2fs', turn, label, step, inference)
    tiles = sum(
        len(tile_starts(image.shape[0], args.patch, task.overlap))
        * len(tile_starts(image.shape[1], args.patch, task.overlap))
        for image in images
    )
    return dict(
        measured=measured,
        tiles=tiles,
        steps_per_epoch=-(-len(train_set) // args.batch),
        patches_per_epoch=len(train_set),
    )


def _spread(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}'


def _median_range(values: list[float], digits: int) -> str:
    return f'{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})'


def report(args, labels: list[str], results: dict, facts: dict, timing: dict) -> str:
    first = results[labels[0]][0]
    recipe = first['recipe']
    setup = (
        f'torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()}, '
        f'{args.device}, {args.threads} intra-op thread(s), float32'
    )
    header = (
        '| model | encoder | params (M) | MACs@256 (G) | train s/epoch | inference tiles/s '
        '| DICE | AJI | AJI+ | DQ | SQ | PQ |'
    )
    lines = [header, '|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for label in labels:
        name, _, encoder = MODELS[label]
        measured = timing['measured'][label]
        epoch_seconds = [s * timing['steps_per_epoch'] for s in measured['step']]
        tiles_per_s = [timing['tiles'] / s for s in measured['infer']]
        metrics = ' | '.join(_spread([r['test'][m] for r in results[label]], 3) for m in METRICS)
        lines.append(
            f'| {name} | {encoder} '
            f'| {facts[label]["params"] / 1e6:.2f} | {facts[label]["macs"] / 1e9:.2f} '
            f'| {_median_range(epoch_seconds, 1)} | {_median_range(tiles_per_s, 2)} | {metrics} |'
        )
    per_seed = [
        '| model | seed | best epoch | ' + ' | '.join(METRICS) + ' |',
        '|:---|---:|---:|' + '---:|' * len(METRICS),
    ]
    for label in labels:
        for r in results[label]:
            values = ' | '.join(f'{r["test"][m]:.4f}' for m in METRICS)
            per_seed.append(f'| {label} | {r["seed"]} | {r["best_epoch"]} | {values} |')
    task_args = recipe['task']['args']
    data = f'folder dataset {args.data_dir}' if args.data_dir else 'the stardist sample (fluorescence, 512x512)'
    return '\n'.join(
        [
            '# Nuclei segmentation: MRL, HoVer-Net and timm encoders side by side',
            '',
            f'Data: {data}; held out: {first["test_description"]} ({first["test_images"]} images)'
            + (' - also used to pick the best epoch.' if first['selects_on_test_data'] else '.'),
            f'Recipe: `{BASE_RECIPE}.yaml` with epochs={recipe["epochs"]}, patch {task_args["patch_size"]} px, '
            f'step {task_args["step"]} ({timing["patches_per_epoch"]} patches = {timing["steps_per_epoch"]} steps '
            f'of {args.batch} per epoch), HoVer-Net augmentation, AdamW lr {recipe["optim"]["lr"]:g} (weight decay '
            f'{recipe["optim"]["weight_decay"]:g}), cosine decay after {recipe["schedule"]["warmup_epochs"]} warm-up '
            f'epoch(s), no drop path; best epoch by validation DICE; tiled inference with tile '
            f'{task_args["tile"]}, overlap {task_args["overlap"]}. Seeds: {", ".join(map(str, args.seeds))}.',
            f'Setup: {setup}.',
            '',
            *lines,
            '',
            f'Metrics: mean ± standard deviation over {len(args.seeds)} seeds. Timings: median (min-max) of '
            f'{len(timing["measured"][labels[0]]["step"])} turns taken side by side after training; train s/epoch '
            f'= {timing["steps_per_epoch"]} steps x seconds per step; inference tiles/s = {timing["tiles"]} tiles '
            f'of {args.patch} px over the held-out images (overlap {task_args["overlap"]}, batch {args.batch}). '
            'MACs of one 256x256 image (`zoo.profile.count_macs`), for the HoVer-Net networks including the '
            'mirrored context their valid convolutions consume.',
            '',
            'Per seed:',
            '',
            *per_seed,
            '',
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS), choices=sorted(MODELS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--patch', type=int, default=128, help='training patch, tile of inference (px)')
    parser.add_argument('--step', type=int, default=128, help='stride of the training windows (px)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--warmup-epochs', type=int, default=1)
    parser.add_argument('--data-dir', help="an image folder dataset ('folder' layout) instead of the stardist sample")
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=1, help='intra-op threads (CPU)')
    parser.add_argument('--turns', type=int, default=5, help='timing turns per model')
    parser.add_argument('--run-root', type=Path, default=REPO_ROOT / 'runs' / 'nuclei-benchmark')
    parser.add_argument('--output', type=Path, default=REPO_ROOT / 'benchmarks' / 'results' / 'nuclei.md')
    parser.add_argument('--report-only', action='store_true', help='rebuild the table from finished runs')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    torch.set_num_threads(args.threads)

    results = {label: [] for label in args.models}
    for label in args.models:  # cheapest first: a partial run has the small models' rows
        for seed in args.seeds:
            _log.info('run %s seed %d', label, seed)
            results[label].append(train_and_test(args, label, seed))
            _log.info('%s seed %d: %s', label, seed, results[label][-1]['test'])
    timing_path = args.run_root / 'timings.json'
    if args.report_only and timing_path.is_file():
        timing = json.loads(timing_path.read_text())
    else:
        timing = timings(args, args.models, args.turns)
        timing_path.write_text(json.dumps(timing, indent=1))
    facts = {label: model_facts(label) for label in args.models}
    text = report(args, args.models, results, facts, timing)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    _log.info('wrote %s', args.output)


if __name__ == '__main__':
    main()
