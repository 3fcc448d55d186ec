"""``zoo compress``: a trained model made smaller and faster, distilled from its dense self, published with a card."""

from __future__ import annotations

import argparse
import math
import shlex

from .options import output_folder, whole_number


def _ranks(text: str) -> str | float:
    if text in ('stable', 'scaled'):
        return text
    try:
        ratio = float(text)
    except ValueError:
        ratio = 0.0
    if not 0 < ratio <= 1:
        raise argparse.ArgumentTypeError(f"expected 'stable', 'scaled' or a ratio of full rank in (0, 1], got {text!r}")
    return ratio


def _above_one(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 1):
        raise argparse.ArgumentTypeError(f'expected how many times fewer MACs, a number above 1, got {text!r}')
    return value


def add_commands(sub) -> None:
    p = sub.add_parser(
        'compress',
        help='factorize a trained model at the stable ranks of its weights, distil, publish dense vs compressed',
        description='Measure the stable rank of every layer of a trained model, factorize (truncated SVD) the layers '
        'where that is smaller and, timed on this machine, faster, recover by distilling the dense model into it '
        '(the trainer: checkpoints, resume, torus), and publish a hub folder whose card compares both. Running the '
        'same command again resumes an interrupted compression.',
    )
    p.add_argument('model', help="the trained model: a published name ('cf_resnet18_fmnist.full_rank') or folder")
    p.add_argument('out', type=output_folder, help='the hub folder to write, e.g. hub/NAME')
    p.add_argument(
        '--data',
        required=True,
        help="the data to distil on: a dataset of the model's task (fashion_mnist, cifar10:DIR, stardist, "
        'consep:DIR, ...) or a folder in its generic layout (DIR/train|val/<class>/ for classifiers, '
        'DIR/images|labels/ for nuclei)',
    )
    p.add_argument(
        '--ranks',
        type=_ranks,
        default='stable',
        help="each layer's rank: its weight's 'stable' rank, Cuttlefish's 'scaled' one, or a ratio of full rank "
        '(default: stable)',
    )
    p.add_argument(
        '--target-macs',
        type=_above_one,
        metavar='R',
        help='scale those ranks to the largest that need at most 1/R of the dense MACs',
    )
    p.add_argument('--epochs', type=whole_number(1), help="epochs of distillation (default: the recipe's)")
    p.add_argument('--recipe', help='a distillation recipe (default: compress_classifier or compress_segmenter)')
    p.add_argument(
        '--run-dir', type=output_folder, help='where the fine-tuning runs (default: runs/compress-<OUT name>)'
    )
    p.add_argument(
        '--no-profile',
        dest='profile',
        action='store_false',
        help='factorize every layer that gets smaller, without timing it on this machine',
    )
    p.add_argument(
        '--batch-size',
        type=whole_number(1),
        help='images per batch when timing layers and networks (default: data.eval_batch)',
    )
    p.add_argument(
        '--input-size', type=whole_number(8), help="image side when timing (default: the model's input size)"
    )
    p.add_argument(
        '--repeats', type=whole_number(1), default=10, help='alternating repeats of each timing (default: 10)'
    )
    p.add_argument(
        '--register',
        metavar='ARCH.TAG',
        help='register the folder under this name in the index of its hub directory (zoo/manifest.json for hub/)',
    )
    p.add_argument('--overwrite', action='store_true', help='replace OUT if it exists (atomically)')
    p.add_argument('--title')
    p.add_argument('--summary')
    p.add_argument(
        '--set',
        dest='overrides',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='a recipe override, repeatable: --set optim.lr=0.005 (MODEL and OUT take the positions)',
    )
    p.set_defaults(func=cmd_compress)


def _command(args) -> str:
    words = ['zoo', 'compress', args.model, str(args.out), '--data', args.data, '--ranks', str(args.ranks)]
    for flag, value in (('--target-macs', args.target_macs), ('--epochs', args.epochs), ('--recipe', args.recipe)):
        if value is not None:
            words += [flag, str(value)]
    if not args.profile:
        words.append('--no-profile')
    for flag, value in (('--batch-size', args.batch_size), ('--input-size', args.input_size)):
        if value is not None:
            words += [flag, str(value)]
    if args.repeats != 10:
        words += ['--repeats', str(args.repeats)]
    if args.register:
        words += ['--register', args.register]
    return shlex.join([*words, *(word for item in args.overrides for word in ('--set', item))])


def cmd_compress(args) -> None:
    import logging

    import torch.distributed as dist

    from training.compress import compress_model

    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        compress_model(
            args.model,
            args.out,
            args.data,
            ranks=args.ranks,
            target_macs=args.target_macs,
            epochs=args.epochs,
            recipe=args.recipe,
            run_dir=args.run_dir,
            profile=args.profile,
            batch_size=args.batch_size,
            input_size=args.input_size,
            repeats=args.repeats,
            overrides=args.overrides,
            overwrite=args.overwrite,
            register_as=args.register,
            title=args.title,
            summary=args.summary,
            command=_command(args),
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
