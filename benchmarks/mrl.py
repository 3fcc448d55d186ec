"""Benchmark the MRL classifiers against ConvNeXt-T, Swin-T and ResNet-50 on this machine's CPU.

For every model, in one run: parameters, multiply-accumulates of one 224x224 image
(``zoo.profile.count_macs``) and inference throughput (images/s: batch of 8 at 224x224,
``torch.inference_mode``, 2 intra-op threads, median of repeated timed runs after warm-up), with the
throughput relative to ResNet-50; then the same model on every installed inference backend
(``zoo.inference.compile``: ONNX Runtime and OpenVINO, fp32), timed alternately with eager PyTorch, as images/s
and the speed-up over eager (median and min-max of the per-round ratios). All models are randomly initialised
(``pretrained=False``): nothing is downloaded, and weights do not change the speed.

Usage::

    python benchmarks/mrl.py          # full run; writes benchmarks/results/mrl.md
    python benchmarks/mrl.py --quick  # mrl_nano and resnet50, batch 2, fewer repeats, writes nothing
"""

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

import timm  # noqa: E402

import zoo  # noqa: E402,F401  (registers the mrl_* architectures)
from zoo.inference import available_backends, compile  # noqa: E402
from zoo.profile import alternating_seconds, count_macs  # noqa: E402

MODELS = ('mrl_nano', 'mrl_tiny', 'mrl_small', 'mrl_base', 'convnext_tiny', 'swin_tiny_patch4_window7_224', 'resnet50')
REFERENCE = 'resnet50'
INPUT_SIZE = (3, 224, 224)
THREADS = 2


def measure(name: str, backends: list[str], batch_size: int, repeats: int, warmup: int) -> dict:
    model = timm.create_model(name, pretrained=False).eval()
    images = torch.randn(batch_size, *INPUT_SIZE)
    networks = [compile(model, backend, input_size=INPUT_SIZE) for backend in ('torch', *backends)]
    seconds = alternating_seconds([lambda n=n: n(images) for n in networks], repeats=repeats, warmup=warmup)
    return dict(
        name=name,
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(model, INPUT_SIZE),
        images_per_s=batch_size / statistics.median(seconds[0]),
        backends={
            network.backend: (batch_size / statistics.median(times), [e / t for e, t in zip(seconds[0], times)])
            for network, times in zip(networks[1:], seconds[1:])
        },
    )


def table(rows: list[dict], backends: list[str]) -> list[str]:
    reference = next(row['images_per_s'] for row in rows if row['name'] == REFERENCE)
    header = '| model | params (M) | MACs (G) | images/s | vs resnet50 |'
    header += ''.join(f' {b} images/s | {b} vs eager |' for b in backends)
    lines = [header, '|:---|' + '---:|' * (header.count('|') - 2)]
    for row in rows:
        line = (
            f'| {row["name"]} | {row["params"] / 1e6:.2f} | {row["macs"] / 1e9:.2f} '
            f'| {row["images_per_s"]:.2f} | {row["images_per_s"] / reference:.2f} |'
        )
        for backend in backends:
            rate, ratios = row['backends'].get(backend, (None, None))
            line += (
                f' {rate:.2f} | {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |'
                if rate
                else ' fell back to torch | - |'
            )
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--quick', action='store_true', help='mrl_nano and resnet50, batch 2, fewer repeats, no results file'
    )
    parser.add_argument('--output', type=Path, default=REPO_ROOT / 'benchmarks' / 'results' / 'mrl.md')
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    warnings.simplefilter('ignore')
    batch_size, repeats, warmup = (2, 3, 1) if args.quick else (8, 7, 2)
    backends = [b for b in available_backends() if b != 'torch']
    rows = []
    for name in ('mrl_nano', REFERENCE) if args.quick else MODELS:
        rows.append(measure(name, backends, batch_size, repeats, warmup))
        print(f'{name}: {rows[-1]["images_per_s"]:.2f} images/s', file=sys.stderr)

    setup = (
        f'torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()} '
        f'with {os.cpu_count()} CPU cores, {THREADS} threads, float32, batch {batch_size} at '
        f'{INPUT_SIZE[1]}x{INPUT_SIZE[2]}, median of {repeats} runs after {warmup} warm-up'
    )
    text = '\n'.join(
        [
            '# MRL classifiers vs ConvNeXt-T, Swin-T and ResNet-50 (CPU inference)',
            '',
            setup,
            '',
            *table(rows, backends),
            '',
            'MACs of one image (`zoo.profile.count_macs`, a MAC = 2 FLOPs). Models are timed one after '
            'another; where other jobs share the cores, absolute numbers drift between runs, so compare '
            'the ratios of one run. Backend columns: the model exported to ONNX once (fp32, `zoo.inference`), '
            'timed alternately with eager PyTorch; "vs eager" is the median (min-max) of the per-round ratios.',
            '',
        ]
    )
    print(text)
    if not args.quick:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f'wrote {args.output}', file=sys.stderr)


if __name__ == '__main__':
    main()
