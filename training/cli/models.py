"""``zoo list``, ``zoo info`` and ``zoo predict``: what the zoo holds, and using published weights."""

from __future__ import annotations

import json
import sys

from .backend import add_backend_options, one_line_messages
from .options import output_folder, whole_number


def add_commands(sub) -> None:
    p = sub.add_parser('list', help='list models: name, params, MACs, measured metrics, weights')
    p.add_argument('pattern', nargs='?', help="wildcard, e.g. 'cf_*'")
    p.add_argument('--pretrained', action='store_true', help='only models with published weights')
    p.set_defaults(func=cmd_list)

    p = sub.add_parser('info', help='everything known about one model, as JSON')
    p.add_argument('name')
    p.set_defaults(func=cmd_info)

    p = sub.add_parser('predict', help='classify images (or segment nuclei) with published weights')
    p.add_argument('name')
    p.add_argument('images', nargs='+')
    p.add_argument('--topk', type=whole_number(1), default=5, help='how many classes to print (default 5)')
    p.add_argument('--out-dir', type=output_folder, default='predictions', help='where segmentation overlays go')
    add_backend_options(p)
    p.set_defaults(func=cmd_predict)


def _format_metrics(metrics) -> str:
    return ', '.join(f'{k} {v:.4g}' for values in metrics.values() for k, v in values.items())


def cmd_list(args) -> None:
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
        rows.append(
            (
                name,
                info['task'],
                f'{info["num_params"] / 1e6:.2f}M',
                f'{info["macs"] / 1e9:.2f}G',
                measured or '-',
                ', '.join(tags) or '-',
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def cmd_info(args) -> None:
    import zoo

    print(json.dumps(zoo.model_info(args.name), indent=2, default=str))


PROGRESS_PIXELS = 2048 * 2048  # about a minute of tiled inference on a 2-core CPU


def _read_checked(path: str, model):
    """The image as ``H x W x 3`` uint8 RGB; a one-line warning on stderr when it is plainly not the kind of
    image the model was trained on (``model.input_domain``); the prediction still runs."""
    from zoo.domain import domain_warning
    from zoo.io import read_image

    image = read_image(path)
    warning = domain_warning(image, getattr(model, 'input_domain', None))
    if warning:
        print(f'zoo predict: warning: {path}: {warning}', file=sys.stderr)
    return image


def cmd_predict(args) -> None:
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    import zoo
    from zoo.inference import check_backend, compile
    from zoo.io import to_grey

    check_backend(args.backend, args.precision)
    model = zoo.create_model(args.name, pretrained=True).eval()
    with one_line_messages('predict'):
        if zoo.model_task(model.pretrained_cfg['architecture']) == 'nuclei-segmentation':
            _segment(model, args)
            return
        config = resolve_data_config({}, model=model)
        network = compile(model, args.backend, args.precision, input_size=config['input_size'], batch_size=1)
        transform = create_transform(**config)
        labels = model.pretrained_cfg.get('label_names') or [str(i) for i in range(model.num_classes)]
        for path in args.images:
            image = _read_checked(path, model)
            image = Image.fromarray(to_grey(image) if config['input_size'][0] == 1 else image)
            with torch.inference_mode():
                probs = network(transform(image).unsqueeze(0)).softmax(-1)[0]
            top = probs.topk(min(args.topk, probs.numel()))
            print(path)
            for p, i in zip(top.values.tolist(), top.indices.tolist()):
                print(f'  {p * 100:6.2f}%  {labels[i]}')


def _segment(model, args) -> None:
    from zoo.segment import predict_to_overlay

    for path in args.images:
        image = _read_checked(path, model)
        # A bar for a person watching, or for an image that takes minutes; in logs of small images it is noise.
        progress = sys.stderr.isatty() or image.shape[0] * image.shape[1] > PROGRESS_PIXELS
        result = predict_to_overlay(
            model, path, args.out_dir, progress=progress, image=image, backend=args.backend, precision=args.precision
        )
        print(f'{path}: {result["num_instances"]} nuclei; overlay {result["overlay"]}, instances {result["instances"]}')
