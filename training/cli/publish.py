"""``zoo publish`` (write a hub folder from a training run or a state dict) and ``zoo cards`` (render model cards)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from zoo.cards import INPUT_DOMAINS


def add_commands(sub) -> None:
    p = sub.add_parser(
        'publish',
        help='write a hub folder (config.json, model.safetensors, README.md card)',
        description='Publish a training run (its best weights, re-evaluated on held-out test data) or a '
        '.safetensors state dict of a named architecture. An existing non-empty folder is replaced only with '
        "--overwrite; --register adds the folder to its hub directory's manifest.json, so that "
        'zoo.create_model("ARCH.TAG", pretrained=True) loads it.',
    )
    p.add_argument('source', help='a run directory from `zoo train`, or a .safetensors state dict (with --model)')
    p.add_argument('out', type=Path, help='output folder (Hugging Face model repo layout), e.g. hub/NAME')
    p.add_argument('--register', metavar='ARCH.TAG', help='register the folder in OUT/../manifest.json under this name')
    p.add_argument('--overwrite', action='store_true', help='replace OUT if it exists (atomically)')
    p.add_argument('--model', help='architecture of a state dict, e.g. cf_resnet18')
    p.add_argument(
        '--model-args', type=_json_object, default={}, help='JSON constructor arguments, e.g. \'{"num_classes": 10}\''
    )
    p.add_argument('--model-id', help='the name that loads these weights, for the card (default: --register)')
    p.add_argument(
        '--metric',
        action='append',
        type=_parse_metric,
        default=[],
        metavar='SPLIT:NAME=VALUE',
        help='measured results of a state dict (runs are evaluated automatically)',
    )
    p.add_argument('--input-domain', choices=sorted(INPUT_DOMAINS), help='the images the weights are meant for')
    p.add_argument('--mpp', type=float, help='microns per pixel the weights were trained at (segmentation)')
    p.add_argument('--title')
    p.add_argument('--summary', default='')
    p.add_argument('--dataset', default='')
    p.add_argument('--recipe', default='')
    p.add_argument('--reproduce', default='', help='the command that reproduces the weights')
    p.add_argument('--intended-use', default='')
    p.add_argument('--limitations', default='')
    p.add_argument('--fp16', action='store_true', help='store floating-point tensors in float16')
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        'cards',
        help="render every hub folder's README.md and model_cards/ from their card.json",
        description='Render README.md of every folder of the hub directory that has a card.json, and '
        'its copy in model_cards/, from the structured card data and config.json.',
    )
    p.add_argument('--hub-dir', type=Path, help="default: the zoo's hub directory ($ZOO_HUB_DIR or hub/)")
    p.add_argument('--model-cards', type=Path, help='default: model_cards/ next to the hub directory')
    p.add_argument('--check', action='store_true', help='write nothing; exit 1 if any card is out of date')
    p.set_defaults(func=cmd_cards)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f'not valid JSON ({e}): {text!r}') from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object like {{"num_classes": 10}}, got {text!r}')
    return value


def _parse_metric(text: str) -> tuple[str, str, float]:
    try:
        split, rest = text.split(':', 1)
        key, value = rest.split('=', 1)
        return split, key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'--metric expects SPLIT:NAME=VALUE, got {text!r}') from None


def cmd_publish(args) -> None:
    import torch

    import zoo
    from zoo.cards import ModelCard
    from zoo.publish import check_target, publish

    options = dict(overwrite=args.overwrite, register_as=args.register)
    if (Path(args.source) / 'best').is_dir():
        from training.publish import publish_run

        weights = publish_run(
            Path(args.source),
            args.out,
            model_id=args.model_id,
            title=args.title or args.out.name,
            summary=args.summary,
            intended_use=args.intended_use,
            limitations=args.limitations,
            fp16=args.fp16,
            input_domain=args.input_domain,
            microns_per_pixel=args.mpp,
            **options,
        )
    else:
        if not args.model:
            raise zoo.WeightsError(
                f'{args.source} is not a training run directory (no best/run.json); to publish a '
                f'weights file name its architecture with --model'
            )
        # Refused before the weights are read; a folder's architecture is known only from its config.json.
        architecture = None if args.model.startswith(('local-dir:', 'hf-hub:')) else args.model.partition('.')[0]
        check_target(args.out, architecture, args.register, args.overwrite)
        model = zoo.create_model(args.model, checkpoint_path=args.source, **args.model_args).eval()
        metrics: dict = {}
        for split, key, value in args.metric:
            metrics.setdefault(split, {})[key] = value
        card = ModelCard(
            title=args.title or args.model,
            summary=args.summary,
            dataset=args.dataset,
            metrics=metrics,
            recipe=args.recipe,
            command=args.reproduce,
            model_id=args.model_id or args.register,
            intended_use=args.intended_use,
            limitations=args.limitations,
            input_domain=args.input_domain,
            microns_per_pixel=args.mpp,
            task=zoo.model_task(args.model),
        )
        weights = publish(model, args.out, card, dtype=torch.float16 if args.fp16 else None, **options)
    print(json.dumps(dict(folder=str(args.out), registered=args.register, **dataclasses.asdict(weights)), indent=2))


def cmd_cards(args) -> None:
    from zoo.cards import sync_cards
    from zoo.hub import hub_dir

    hub = args.hub_dir or hub_dir()
    changed = sync_cards(hub, args.model_cards or hub.parent / 'model_cards', check=args.check)
    for path in changed:
        print(f'{"out of date" if args.check else "wrote"}: {path}')
    if args.check and changed:
        print('run `zoo cards` to render them', file=sys.stderr)
        raise SystemExit(1)
