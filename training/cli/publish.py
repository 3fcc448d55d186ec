"""``zoo publish``: write a hub folder from a training run or a state dict."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser(
        'publish',
        help='write a hub folder (config.json, model.safetensors, README.md card)',
        description='Publish a training run (its best weights, re-evaluated on held-out test '
        'data) or a .safetensors state dict of a named architecture.',
    )
    p.add_argument('source', help='a run directory from `zoo train`, or a .safetensors state dict (with --model)')
    p.add_argument('out', type=Path, help='output folder (Hugging Face model repo layout)')
    p.add_argument('--model', help='architecture of a state dict, e.g. cf_resnet18')
    p.add_argument('--model-args', help='JSON constructor arguments, e.g. \'{"num_classes": 10}\'')
    p.add_argument('--model-id', help='the registered name that will load these weights, for the card')
    p.add_argument(
        '--metric',
        action='append',
        type=_parse_metric,
        default=[],
        metavar='SPLIT:NAME=VALUE',
        help='measured results of a state dict (runs are evaluated automatically)',
    )
    p.add_argument('--title')
    p.add_argument('--summary', default='')
    p.add_argument('--dataset', default='')
    p.add_argument('--recipe', default='')
    p.add_argument('--reproduce', default='', help='the command that reproduces the weights')
    p.add_argument('--intended-use', default='')
    p.add_argument('--limitations', default='')
    p.add_argument('--fp16', action='store_true', help='store floating-point tensors in float16')
    p.set_defaults(func=cmd_publish)


def _parse_metric(text: str) -> tuple[str, str, float]:
    try:
        split, rest = text.split(':', 1)
        key, value = rest.split('=', 1)
        return split, key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'--metric expects SPLIT:NAME=VALUE, got {text!r}')


def cmd_publish(args) -> None:
    import torch
    from safetensors.torch import load_file

    import zoo
    from zoo import check_weights_fit
    from zoo.cards import ModelCard
    from zoo.publish import publish

    if (Path(args.source) / 'best' / 'run.json').exists():
        from training.publish import publish_run

        result = publish_run(
            Path(args.source),
            args.out,
            model_id=args.model_id,
            title=args.title or args.out.name,
            summary=args.summary,
            intended_use=args.intended_use,
            limitations=args.limitations,
            fp16=args.fp16,
        )
        print(json.dumps(dict(folder=str(args.out), **result), indent=2))
        return
    if not args.model:
        raise zoo.WeightsError(
            f'{args.source} is not a training run directory (no best/run.json); to publish a '
            f'weights file name its architecture with --model'
        )
    model_args = json.loads(args.model_args) if args.model_args else {}
    model = zoo.create_model(args.model, **model_args)
    check_weights_fit(model, Path(args.source), args.model)
    model.load_state_dict(load_file(args.source))
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
        model_id=args.model_id,
        intended_use=args.intended_use,
        limitations=args.limitations,
    )
    result = publish(
        model.eval(), args.out, card, model_args=model.zoo_model_args, dtype=torch.float16 if args.fp16 else None
    )
    print(json.dumps(dict(folder=str(args.out), **result), indent=2))
