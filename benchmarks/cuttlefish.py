"""Full-rank vs factorized, side by side in one run on this machine, for every Cuttlefish family.

For each model: parameters and MACs (multiply-adds) dense vs factorized, the MAC ratio (the ideal
speed-up), the measured ratios of train-step and inference throughput (median, with min-max, over
repeats, dense and factorized timed alternately) and how much of the MAC bound each ratio reaches.
Ranks: those a real Cuttlefish run chose where one exists (published weights record them, or
``--ranks-from NAME=RUN_DIR`` names a run); otherwise the uniform rank 1/4 on the paper's layer set, labelled
as such. On CUDA the steps run under bf16 autocast (``--amp``), with channels-last activations. On the CPU,
inference is also timed on every installed ``zoo.inference`` backend (ONNX Runtime, OpenVINO; fp32), dense and
factorized alternately: whether a factorized network is faster depends on the runtime.

    python benchmarks/cuttlefish.py [--quick] [--device cuda] [--ranks-from cf_resnet18=runs/NAME]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import zoo  # noqa: E402
from zoo.inference import available_backends, compile  # noqa: E402
from zoo.profile import count_macs, median_seconds  # noqa: E402

# (model, CPU batch, GPU batch, image size for timing); ImageNet models are timed at 224 on both.
MODELS = [
    ('cf_resnet18_fmnist', 128, 1024, 28),
    ('cf_resnet18', 64, 512, 32),
    ('cf_vgg19', 64, 512, 32),
    ('cf_resnet50', 8, 128, 224),
    ('cf_wide_resnet50_2', 8, 64, 224),
    ('cf_deit_small', 8, 128, 224),
    ('cf_deit_base', 8, 64, 224),
]


def _ranks(name: str, runs: dict[str, Path]) -> tuple[dict, str]:
    """The ranks of a named run or of the published weights with the most factorized layers, else uniform 1/4."""
    if name in runs:
        info = json.loads((runs[name] / 'best' / 'run.json').read_text())
        chosen = {k: v for k, v in info['model_args'].items() if k in ('ranks', 'low_rank_bn')}
        return chosen, f'chosen by a real Cuttlefish run ({info["recipe"]["name"]}, {info["device"]})'
    published = [(tag, w) for tag, w in zoo.list_weights(name).items() if w.model_args.get('ranks')]
    if published:
        tag, weights = max(published, key=lambda item: len(item[1].model_args['ranks']))
        chosen = {k: v for k, v in weights.model_args.items() if k in ('ranks', 'low_rank_bn')}
        return chosen, f'chosen by a real Cuttlefish run ({tag})'
    return dict(rank_ratio=0.25), 'uniform 1/4 on the paper layers (no real run here)'


def _step(model, batch: int, size: int, train: bool, device, amp: torch.dtype | None):
    """One training step (forward, backward, SGD update) or one inference forward, as a closure."""
    x = torch.randn(batch, model.pretrained_cfg['input_size'][0], size, size, device=device)
    if device.type == 'cuda':
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=amp, enabled=amp is not None)
    if not train:
        model.eval()

        @torch.inference_mode()
        def infer():
            with autocast:
                return model(x)

        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(x).float().logsumexp(-1).mean()
        loss.backward()
        optimizer.step()

    return step


def _throughputs(dense, low, batch, size, train, device, amp, repeats) -> tuple[list[float], list[float]]:
    """Images/s of both models over ``repeats``, timed alternately so a change of load affects both alike."""
    return _rates([_step(m, batch, size, train, device, amp) for m in (dense, low)], batch, repeats)


def _backend_throughputs(dense, low, backend, batch, size, repeats) -> tuple[list[float], list[float]] | None:
    """Inference images/s of both models exported to ``backend`` (fp32), timed alternately; ``None`` when the
    backend cannot run them (``zoo.inference`` fell back to torch)."""
    input_size = (dense.pretrained_cfg['input_size'][0], size, size)
    networks = [compile(m, backend, input_size=input_size) for m in (dense, low)]
    if any(network.backend != backend for network in networks):
        return None
    x = torch.randn(batch, *input_size)
    return _rates([lambda n=n: n(x) for n in networks], batch, repeats)


def _rates(steps, batch: int, repeats: int) -> tuple[list[float], list[float]]:
    for step in steps:  # warm-up (cuDNN autotuning, allocator)
        median_seconds(step, repeats=1, warmup=2)
    times = ([], [])
    for _ in range(repeats):
        for i, step in enumerate(steps):
            times[i].append(batch / median_seconds(step, repeats=3, warmup=0))
    return times


def _cell(dense: list[float], low: list[float]) -> str:
    ratios = [b / a for a, b in zip(dense, low)]
    return f'{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small batches, few repeats, the three smallest models')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', choices=['bf16', 'fp16', 'off'], help='autocast dtype (default: bf16 on CUDA, off)')
    parser.add_argument(
        '--ranks-from',
        action='append',
        default=[],
        metavar='NAME=RUN_DIR',
        help="use the ranks a training run's switch chose for model NAME",
    )
    parser.add_argument('--repeats', type=int, help='timed repeats per model (default 7, 3 with --quick)')
    parser.add_argument('--out', type=Path, help='where the table is written (default: results/cuttlefish[_cuda].md)')
    args = parser.parse_args()
    device = torch.device(args.device)
    amp = args.amp or ('bf16' if device.type == 'cuda' else 'off')
    amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'off': None}[amp]
    runs = {name: Path(run) for name, _, run in (item.partition('=') for item in args.ranks_from)}
    repeats = args.repeats or (3 if args.quick else 7)
    models = MODELS[:3] if args.quick else MODELS
    out = args.out or Path(__file__).parent / 'results' / f'cuttlefish{"_cuda" if device.type == "cuda" else ""}.md'
    # The export backends run on the CPU, fp32: their columns say whether factorizing pays on each.
    backends = [b for b in available_backends() if b != 'torch'] if device.type == 'cpu' else []
    header = (
        '| model | ranks | params full | params low-rank | size ratio | MACs full | MACs low-rank | '
        'MAC ratio (ideal) | train img/s full | train img/s low-rank | train speed-up (min-max) | '
        'train / MAC bound | infer img/s full | infer img/s low-rank | inference speed-up (min-max) | '
        'infer / MAC bound |'
    ) + ''.join(f' {b} img/s full | {b} img/s low-rank | {b} speed-up (min-max) |' for b in backends)
    lines = [header, '|' + '---|' * (header.count('|') - 1)]
    for name, cpu_batch, gpu_batch, size in models:
        batch = gpu_batch if device.type == 'cuda' else cpu_batch
        if args.quick:
            batch = max(2, batch // 4)
        low_args, origin = _ranks(name, runs)
        torch.manual_seed(0)
        dense, low = zoo.create_model(name), zoo.create_model(name, **low_args)
        input_size = dense.pretrained_cfg['input_size']
        params = [sum(p.numel() for p in m.parameters()) for m in (dense, low)]
        macs = [count_macs(m, input_size) for m in (dense, low)]
        memory_format = torch.channels_last if device.type == 'cuda' else torch.contiguous_format
        dense, low = (m.to(device, memory_format=memory_format) for m in (dense, low))
        mac_ratio = macs[0] / macs[1]
        row = [
            f'{name}',
            origin,
            f'{params[0] / 1e6:.2f}M',
            f'{params[1] / 1e6:.2f}M',
            f'{params[0] / params[1]:.2f}x',
            f'{macs[0] / 1e9:.3f}G',
            f'{macs[1] / 1e9:.3f}G',
            f'{mac_ratio:.2f}x',
        ]
        for train in (True, False):
            full, factorized = _throughputs(dense, low, batch, size, train, device, amp_dtype, repeats)
            speedup = statistics.median(b / a for a, b in zip(full, factorized))
            row += [
                f'{statistics.median(full):.1f}',
                f'{statistics.median(factorized):.1f}',
                _cell(full, factorized),
                f'{speedup / mac_ratio:.2f}',
            ]
        for backend in backends:
            rates = _backend_throughputs(dense, low, backend, batch, size, repeats)
            if rates is None:
                row += ['fell back to torch', '-', '-']
                continue
            full, factorized = rates
            row += [f'{statistics.median(full):.1f}', f'{statistics.median(factorized):.1f}', _cell(full, factorized)]
        lines.append('| ' + ' | '.join(row) + ' |')
        print(lines[-1], flush=True)
        if not args.quick:  # row by row: a run stopped early keeps what it measured
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text('\n'.join(lines) + '\n')
        del dense, low
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    note = (
        f'\nMeasured on {where}, torch {torch.__version__}, autocast {amp}; batch per model as in `MODELS` '
        f'({"quick mode" if args.quick else "full mode"}); throughput is the median of {repeats} repeats (each the '
        f'median of 3 steps) after warm-up, dense and factorized timed alternately; speed-ups are the median and '
        f"min-max of the per-repeat ratios. MACs at the model's default input size; their ratio is the ideal "
        f'speed-up, and "/ MAC bound" is the measured speed-up divided by it. Backend columns: both models '
        f'exported to ONNX (fp32, `zoo.inference.compile`) and run by that runtime, timed alternately as above.\n'
    )
    print(note)
    if not args.quick:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text('\n'.join(lines) + '\n' + note)


if __name__ == '__main__':
    main()
