"""``zoo evaluate``: how good is a nuclei segmentation net on annotated images? HoVer-Net's statistics, measured as
``zoo publish`` measures the figures of model cards (``training.evaluate``)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser(
        'evaluate',
        help='score a nuclei segmentation net on annotated images (HoVer-Net statistics)',
        description="Score a nuclei segmentation net as HoVer-Net's compute_stats.py does: DICE, AJI, AJI+, DQ, SQ "
        'and PQ per image, then their mean; with nuclear types, F_d, accuracy and F_c per type, pooled over the '
        'images. Prints a table (or JSON) and writes one CSV row per image.',
    )
    p.add_argument(
        'model',
        help="published weights ('mrl_seg_nano.stardist', 'local-dir:hub/NAME', 'hf-hub:ORG/NAME@REV') or a run "
        'directory of zoo train / zoo finetune',
    )
    p.add_argument(
        '--dataset',
        required=True,
        help='a dataset of the nuclei task in its own layout (training.segmentation.DATASETS; an unknown one is '
        'refused naming them)',
    )
    p.add_argument('--data-dir', help='dataset root (not needed for the bundled stardist sample)')
    p.add_argument(
        '--split',
        default='test',
        help="test (default: the dataset's held-out test images), val (those that choose the best epoch), train or all",
    )
    p.add_argument(
        '--types',
        help="--dataset geojson: the QuPath class names of the model's nuclear types, in its order, comma-separated "
        "(default: the model's own type names)",
    )
    p.add_argument('--out', type=Path, default=Path('evaluation'), help='folder of the per-image CSV and overlays')
    p.add_argument('--overlays', action='store_true', help='also draw each image: ground truth left, prediction right')
    p.add_argument('--json', action='store_true', help='print the figures as JSON')
    p.add_argument('--device', help="where to run, e.g. 'cuda' (default: cpu)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> None:
    from PIL import Image

    from training.data import DatasetLayoutError
    from training.evaluate import evaluate_model, nuclei_evaluation_task
    from training.segmentation import DATASETS, SPLITS, side_by_side
    from zoo.io import atomic_file, atomic_write_bytes

    # Checked here, not by argparse: the nuclei task's modules are too slow to import for every `zoo` command.
    for option, value, allowed in (('--dataset', args.dataset, DATASETS), ('--split', args.split, SPLITS)):
        if value not in allowed:
            raise DatasetLayoutError(f'{option} must be one of {", ".join(allowed)}, got {value!r}')
    types = None if args.types is None else parse_types(args.types)
    if args.dataset != 'stardist' and not args.data_dir:
        raise DatasetLayoutError(f'--dataset {args.dataset} needs --data-dir, the folder it is unpacked in')
    model, settings = _load_model(args.model)
    task = nuclei_evaluation_task(model, args.dataset, args.data_dir, types, settings)
    stem = f'{args.dataset}_{args.split}'
    overlays = args.out / f'{stem}_overlays'
    (overlays if args.overlays else args.out).mkdir(parents=True, exist_ok=True)  # fail before the work, not after

    def draw(score) -> None:
        buffer = io.BytesIO()
        Image.fromarray(side_by_side(score.sample.image, score.sample.inst_map, score.pred)).save(buffer, 'png')
        atomic_write_bytes(overlays / f'{_file_name(score.sample.name)}.png', buffer.getvalue())

    result = evaluate_model(
        model, task, args.split, device=args.device or 'cpu', on_image=draw if args.overlays else None
    )
    table = args.out / f'{stem}.csv'
    with atomic_file(table) as file:
        text = io.TextIOWrapper(file, encoding='utf-8', newline='')
        writer = csv.DictWriter(text, fieldnames=list(result.per_image[0]))
        writer.writeheader()
        writer.writerows(result.per_image)
        text.flush()
        text.detach()
    names = task.type_names()
    if args.json:
        report = {
            'model': args.model,
            'dataset': args.dataset,
            'split': args.split,
            'images': result.count,
            'metrics': {name: None if math.isnan(value) else value for name, value in result.metrics.items()},
            'type_names': names,
            'per_image_csv': str(table),
            'overlays': str(overlays) if args.overlays else None,
        }
        print(json.dumps(report, indent=2, allow_nan=False))
        return
    where = task.test_description() if args.split == 'test' else f'{args.split} images'
    print(f'{args.model} on {args.dataset}: {result.count} images, {where}')
    print(f'{"metric":<12} {"value":>7}')
    for name, value in result.metrics.items():
        shown = '      -' if math.isnan(value) else f'{value:>7.4f}'  # a type with nothing to count
        type_name = f'  {names[int(name[4:])]}' if name.startswith('f_c_') else ''
        print(f'{name:<12} {shown}{type_name}')
    print(f'per image: {table}' + (f'; overlays: {overlays}/' if args.overlays else ''), file=sys.stderr)


def parse_types(text: str) -> list[str]:
    """``--types 'Tumor,Immune cells'``: QuPath class names, the nuclear types 1, 2, ... in this order."""
    from training.data import DatasetLayoutError

    types = [name.strip() for name in text.split(',')]
    if not all(types) or len(set(types)) != len(types):
        raise DatasetLayoutError(f'--types must be distinct, comma-separated class names, got {text!r}')
    return types


def _file_name(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9._-]+', '_', name)


def _load_model(name: str):
    """The model to score and the task arguments of the recipe that trained it (its tiling), where known."""
    import zoo
    from training.publish import load_run_model

    if (Path(name) / 'best').is_dir():
        model, info = load_run_model(Path(name))
        settings = info['recipe']['task']['args']
    else:
        model, settings = zoo.create_model(name, pretrained=True), _recipe_task_args(name)
    architecture = model.pretrained_cfg['architecture']
    if zoo.model_task(architecture) != 'nuclei-segmentation':
        raise zoo.UnknownModelError(
            f'zoo evaluate scores nuclei segmentation nets; {name} is an {zoo.model_task(architecture)} model'
        )
    return model, settings


def _recipe_task_args(name: str) -> dict:
    """The task arguments of the recipe recorded with published weights, where it is a bundled one."""
    import zoo
    from training.recipe import bundled_recipes, load_recipe
    from zoo.cards import read_card

    recipe = None
    if name.startswith('local-dir:'):
        folder = Path(name.partition(':')[2])
        recipe = read_card(folder).recipe if (folder / 'card.json').is_file() else None
    elif not name.startswith('hf-hub:'):
        recipe = zoo.get_weights(name).recipe
    # Cards name a bundled recipe by its place in the package; it is loaded from the installed package.
    stem = Path(recipe or '').stem
    if recipe == f'training/recipes/{stem}.yaml' and stem in bundled_recipes():
        return load_recipe(stem)['task']['args']
    return {}
