"""``zoo`` command line: list, info, predict, publish, train and finetune.

Every command turns the zoo's own errors (unknown model, missing or tampered weights, bad layout)
into a one-line message and exit status 2 instead of a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ['main']


def _format_metrics(metrics) -> str:
    return ', '.join(f'{k} {v:.4g}' for values in metrics.values() for k, v in values.items())


def _cmd_list(args) -> None:
    import zoo
    names = zoo.list_models(args.pattern or '*', pretrained=args.pretrained)
    if not names:
        print(f'no models match {args.pattern!r}')
        return
    rows = [('name', 'task', 'params', 'MACs', 'measured', 'weights')]
    for name in names:
        info = zoo.model_info(name)
        tags = sorted(k.split('.', 1)[1] for k in info['weights'])
        measured = '; '.join(_format_metrics(w['metrics']) for w in info['weights'].values())
        rows.append((name, info['task'], f"{info['num_params'] / 1e6:.2f}M", f"{info['macs'] / 1e9:.2f}G",
                     measured or '-', ', '.join(tags) or '-'))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _cmd_info(args) -> None:
    import zoo
    print(json.dumps(zoo.model_info(args.name), indent=2, default=str))


def _load_image(path: str, in_chans: int):
    from PIL import Image
    try:
        image = Image.open(path)
    except (FileNotFoundError, OSError) as e:
        raise SystemExit(f'zoo predict: cannot read image {path}: {e}')
    return image.convert('L' if in_chans == 1 else 'RGB')


def _cmd_predict(args) -> None:
    import torch
    import zoo
    from timm.data import create_transform, resolve_data_config
    from ._registry import model_task

    model = zoo.create_model(args.name, pretrained=True).eval()
    if model_task(model.pretrained_cfg['architecture']) == 'nuclei-segmentation':
        _segment(model, args)
        return
    config = resolve_data_config({}, model=model)
    transform = create_transform(**config)
    labels = model.pretrained_cfg.get('label_names') or [str(i) for i in range(model.num_classes)]
    for path in args.images:
        image = _load_image(path, config['input_size'][0])
        with torch.inference_mode():
            probs = model(transform(image).unsqueeze(0)).softmax(-1)[0]
        top = probs.topk(min(args.topk, probs.numel()))
        print(path)
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            print(f'  {p * 100:6.2f}%  {labels[i]}')


def _segment(model, args) -> None:
    from .segment import predict_to_overlay
    for path in args.images:
        result = predict_to_overlay(model, path, args.out_dir)
        print(f'{path}: {result["num_instances"]} nuclei; overlay {result["overlay"]}, instances {result["instances"]}')


def _parse_metric(text: str) -> tuple[str, str, float]:
    try:
        split, rest = text.split(':', 1)
        key, value = rest.split('=', 1)
        return split, key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'--metric expects SPLIT:NAME=VALUE, got {text!r}')


def _cmd_publish(args) -> None:
    import torch
    import zoo
    from safetensors.torch import load_file
    from ._builder import check_weights_fit
    from .hub import ModelCard, publish

    if (Path(args.source) / 'best' / 'run.json').exists():
        from training.publish import publish_run
        result = publish_run(Path(args.source), args.out, model_id=args.model_id, title=args.title or args.out.name,
                             summary=args.summary, intended_use=args.intended_use, limitations=args.limitations,
                             fp16=args.fp16)
        print(json.dumps(dict(folder=str(args.out), **result), indent=2))
        return
    if not args.model:
        raise zoo.WeightsError(f'{args.source} is not a training run directory (no best/run.json); to publish a '
                               f'weights file name its architecture with --model')
    model_args = json.loads(args.model_args) if args.model_args else {}
    model = zoo.create_model(args.model, **model_args)
    check_weights_fit(model, Path(args.source), args.model)
    model.load_state_dict(load_file(args.source))
    metrics: dict = {}
    for split, key, value in args.metric:
        metrics.setdefault(split, {})[key] = value
    card = ModelCard(title=args.title or args.model, summary=args.summary, dataset=args.dataset,
                     metrics=metrics, recipe=args.recipe, command=args.reproduce, model_id=args.model_id,
                     intended_use=args.intended_use, limitations=args.limitations)
    result = publish(model.eval(), args.out, card, model_args=model.zoo_model_args,
                     dtype=torch.float16 if args.fp16 else None)
    print(json.dumps(dict(folder=str(args.out), **result), indent=2))


def _cmd_train(args) -> None:
    from training.trainer import main as train
    train(args.recipe, args.overrides, args.run_dir)


def _cmd_finetune(args) -> None:
    from training.trainer import main as train
    overrides = [f'model.name={args.model}', f'task.args.dataset={args.dataset}', *args.overrides]
    if args.data_dir:
        overrides.append(f'task.args.data_dir={args.data_dir}')
    if args.epochs:
        overrides.append(f'epochs={args.epochs}')
    train(args.recipe, overrides, args.run_dir or f'runs/finetune-{args.model}-{args.dataset}')


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='zoo', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='subcommand', required=True)

    p = sub.add_parser('list', help='list models: name, params, MACs, measured metrics, weights')
    p.add_argument('pattern', nargs='?', help="wildcard, e.g. 'cf_*'")
    p.add_argument('--pretrained', action='store_true', help='only models with published weights')
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser('info', help='everything known about one model, as JSON')
    p.add_argument('name')
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser('predict', help='classify images (or segment nuclei) with published weights')
    p.add_argument('name')
    p.add_argument('images', nargs='+')
    p.add_argument('--topk', type=int, default=5)
    p.add_argument('--out-dir', type=Path, default=Path('predictions'), help='where segmentation overlays go')
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser('publish', help='write a hub folder (config.json, model.safetensors, README.md card)',
                       description='Publish a training run (its best weights, re-evaluated on held-out test '
                                   'data) or a .safetensors state dict of a named architecture.')
    p.add_argument('source', help='a run directory from `zoo train`, or a .safetensors state dict (with --model)')
    p.add_argument('out', type=Path, help='output folder (Hugging Face model repo layout)')
    p.add_argument('--model', help='architecture of a state dict, e.g. cf_resnet18')
    p.add_argument('--model-args', help='JSON constructor arguments, e.g. \'{"num_classes": 10}\'')
    p.add_argument('--model-id', help='the registered name that will load these weights, for the card')
    p.add_argument('--metric', action='append', type=_parse_metric, default=[], metavar='SPLIT:NAME=VALUE',
                   help='measured results of a state dict (runs are evaluated automatically)')
    p.add_argument('--title')
    p.add_argument('--summary', default='')
    p.add_argument('--dataset', default='')
    p.add_argument('--recipe', default='')
    p.add_argument('--reproduce', default='', help='the command that reproduces the weights')
    p.add_argument('--intended-use', default='')
    p.add_argument('--limitations', default='')
    p.add_argument('--fp16', action='store_true', help='store floating-point tensors in float16')
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser('train', help='train a recipe (one process, or many under torchrun)',
                       description='Train a recipe; rerunning with the same run directory resumes it.')
    p.add_argument('--recipe', required=True, help='a recipe file or the name of a bundled one')
    p.add_argument('--run-dir', help='default: runs/<recipe name>')
    p.add_argument('overrides', nargs='*', metavar='KEY=VALUE', help='e.g. epochs=3 optim.lr=0.05')
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser('finetune', help='fine-tune a nuclei segmentation net on a histology dataset')
    p.add_argument('--model', default='mrl_seg_tiny')
    p.add_argument('--dataset', default='stardist', choices=['stardist', 'kumar', 'consep', 'cpm17', 'folder'])
    p.add_argument('--data-dir', help='dataset root (not needed for the bundled stardist sample)')
    p.add_argument('--epochs', type=int)
    p.add_argument('--recipe', default='histology_finetune')
    p.add_argument('--run-dir')
    p.add_argument('overrides', nargs='*', metavar='KEY=VALUE')
    p.set_defaults(func=_cmd_finetune)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    import zoo
    from training.data.nuclei import DatasetLayoutError
    from training.recipe import RecipeError
    try:
        args.func(args)
    except (zoo.UnknownModelError, zoo.WeightsError, RecipeError, DatasetLayoutError, FileNotFoundError) as e:
        print(f'zoo {args.subcommand}: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
