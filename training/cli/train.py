"""``zoo train`` and ``zoo finetune``: run a recipe, in one process or many under torchrun."""

from __future__ import annotations

import json

from .options import output_folder


def add_commands(sub) -> None:
    p = sub.add_parser(
        'train',
        help='train a recipe (one process, or many under torchrun)',
        description='Train a recipe; rerunning with the same run directory resumes it.',
    )
    p.add_argument('--recipe', required=True, help='a recipe file or the name of a bundled one')
    p.add_argument('--run-dir', type=output_folder, help='default: runs/<recipe name>')
    p.add_argument('overrides', nargs='*', metavar='KEY=VALUE', help='e.g. epochs=3 optim.lr=0.05')
    p.set_defaults(func=cmd_train)

    p = sub.add_parser('finetune', help='fine-tune a nuclei segmentation net on a histology dataset')
    p.add_argument('--model', default='mrl_seg_tiny')
    p.add_argument('--encoder', help="a timm encoder under HoVer-Net's branches (with --model hovernet), e.g. resnet50")
    p.add_argument(
        '--dataset',
        default='stardist',
        help='a dataset of the nuclei task (training.segmentation.DATASETS; an unknown one is refused naming them)',
    )
    p.add_argument('--data-dir', help='dataset root (not needed for the bundled stardist sample)')
    p.add_argument(
        '--types',
        help='--dataset geojson: the QuPath class names of the nuclear types to learn, comma-separated (ids 1, 2, ... '
        "in this order); sets the task's types and the model's num_types",
    )
    p.add_argument(
        '--epochs', type=int, help="train this many epochs; a step schedule's milestones keep their share of the run"
    )
    p.add_argument('--recipe', default='histology_finetune')
    p.add_argument('--run-dir', type=output_folder, help='default: runs/finetune-<model>-<dataset>')
    p.add_argument('overrides', nargs='*', metavar='KEY=VALUE')
    p.set_defaults(func=cmd_finetune)


def cmd_train(args) -> None:
    from training.trainer import main as run

    run(args.recipe, args.overrides, args.run_dir)


def cmd_finetune(args) -> None:
    from training.trainer import main as run

    from .evaluate import parse_types

    overrides = [f'model.name={args.model}', f'task.args.dataset={args.dataset}', *args.overrides]
    if args.encoder:
        overrides.append(f'model.args.encoder={args.encoder}')
    if args.data_dir:
        overrides.append(f'task.args.data_dir={args.data_dir}')
    if args.types is not None:
        types = parse_types(args.types)
        overrides += [f'task.args.types={json.dumps(types)}', f'model.args.num_types={len(types) + 1}']
    if args.epochs is not None:
        overrides += _epochs_overrides(args.recipe, overrides, args.epochs)
    model = f'{args.model}-{args.encoder}' if args.encoder else args.model
    run(args.recipe, overrides, args.run_dir or f'runs/finetune-{model}-{args.dataset}')


def _epochs_overrides(recipe: str, overrides: list[str], epochs: int) -> list[str]:
    """``epochs=N``, and the recipe's step-decay milestones moved to the same fractions of N epochs (the
    fine-tuning recipe decays at epoch 25 of 50: at epoch 5 of 10), unless the overrides set them."""
    from training.recipe import load_recipe

    if epochs < 1 or any(item.startswith('schedule.milestones=') for item in overrides):
        return [f'epochs={epochs}']  # an invalid count is refused by the recipe's validation, naming it
    base = load_recipe(recipe, overrides)
    moved = sorted({round(m * epochs / base['epochs']) for m in base['schedule']['milestones']} - {0})
    moved = [m for m in moved if m < epochs]
    return [f'epochs={epochs}', f'schedule.milestones={moved}']
