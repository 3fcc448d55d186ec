"""``zoo train`` and ``zoo finetune``: run a recipe, in one process or many under torchrun."""

from __future__ import annotations


def add_commands(sub) -> None:
    p = sub.add_parser(
        'train',
        help='train a recipe (one process, or many under torchrun)',
        description='Train a recipe; rerunning with the same run directory resumes it.',
    )
    p.add_argument('--recipe', required=True, help='a recipe file or the name of a bundled one')
    p.add_argument('--run-dir', help='default: runs/<recipe name>')
    p.add_argument('overrides', nargs='*', metavar='KEY=VALUE', help='e.g. epochs=3 optim.lr=0.05')
    p.set_defaults(func=cmd_train)

    p = sub.add_parser('finetune', help='fine-tune a nuclei segmentation net on a histology dataset')
    p.add_argument('--model', default='mrl_seg_tiny')
    p.add_argument('--encoder', help="a timm encoder under HoVer-Net's branches (with --model hovernet), e.g. resnet50")
    p.add_argument('--dataset', default='stardist', choices=['stardist', 'kumar', 'consep', 'cpm17', 'folder'])
    p.add_argument('--data-dir', help='dataset root (not needed for the bundled stardist sample)')
    p.add_argument('--epochs', type=int)
    p.add_argument('--recipe', default='histology_finetune')
    p.add_argument('--run-dir')
    p.add_argument('overrides', nargs='*', metavar='KEY=VALUE')
    p.set_defaults(func=cmd_finetune)


def cmd_train(args) -> None:
    from training.trainer import main as run

    run(args.recipe, args.overrides, args.run_dir)


def cmd_finetune(args) -> None:
    from training.trainer import main as run

    overrides = [f'model.name={args.model}', f'task.args.dataset={args.dataset}', *args.overrides]
    if args.encoder:
        overrides.append(f'model.args.encoder={args.encoder}')
    if args.data_dir:
        overrides.append(f'task.args.data_dir={args.data_dir}')
    if args.epochs:
        overrides.append(f'epochs={args.epochs}')
    model = f'{args.model}-{args.encoder}' if args.encoder else args.model
    run(args.recipe, overrides, args.run_dir or f'runs/finetune-{model}-{args.dataset}')
