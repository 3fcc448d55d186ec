"""Full-rank vs factorized, side by side in one run on this machine, for every Cuttlefish family.

For each model: parameters and MACs (multiply-adds) dense vs factorized, the MAC ratio (the ideal
speed-up), and the measured ratios of train-step and inference throughput (median of repeats).
Ranks: those a real Cuttlefish run chose where one exists (the published
``cf_resnet18_fmnist.cuttlefish_sr`` weights record them); otherwise the uniform rank 1/4 on the
paper's layer set, labelled as such.

    python benchmarks/cuttlefish.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import zoo  # noqa: E402
from zoo._registry import list_weights  # noqa: E402
from zoo.profile import count_macs, paired_median_seconds  # noqa: E402

# (model, batch, image size for timing); ImageNet models are timed below their 224 training size on a CPU.
MODELS = [
    ('cf_resnet18_fmnist', 128, 28),
    ('cf_resnet18', 64, 32),
    ('cf_vgg19', 64, 32),
    ('cf_resnet50', 8, 224),
    ('cf_wide_resnet50_2', 8, 224),
    ('cf_deit_small', 8, 224),
    ('cf_deit_base', 8, 224),
]


def _ranks(name: str) -> tuple[dict, str]:
    """The ranks of the published weights with the most factorized layers, else uniform 1/4."""
    published = [(tag, w) for tag, w in list_weights(name).items() if w.model_args.get('ranks')]
    if published:
        tag, weights = max(published, key=lambda item: len(item[1].model_args['ranks']))
        chosen = {k: v for k, v in weights.model_args.items() if k in ('ranks', 'low_rank_bn')}
        return chosen, f'chosen by a real Cuttlefish run ({tag})'
    return dict(rank_ratio=0.25), 'uniform 1/4 on the paper layers (no real run here)'


def _step(model, batch: int, size: int, train: bool, device):
    """One training step (forward, backward, SGD update) or one inference forward, as a closure."""
    x = torch.randn(batch, model.pretrained_cfg['input_size'][0], size, size, device=device)
    if not train:
        model.eval()
        return lambda: _infer(model, x)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(x).float().logsumexp(-1).mean().backward()
        optimizer.step()

    return step


@torch.inference_mode()
def _infer(model, x):
    return model(x)


def _throughputs(dense, low, batch: int, size: int, train: bool, device, repeats: int) -> tuple[float, float]:
    """Images/s of both models, timed alternately (see ``paired_median_seconds``)."""
    a, b = paired_median_seconds(
        _step(dense, batch, size, train, device), _step(low, batch, size, train, device), repeats
    )
    return batch / a, batch / b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small batches, few repeats, skip the largest models')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--out',
        type=Path,
        default=Path(__file__).parent / 'results' / 'cuttlefish.md',
        help='where the table is written (not in --quick mode)',
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = 3 if args.quick else 7
    models = MODELS[:3] if args.quick else MODELS
    header = (
        '| model | ranks | params full | params low-rank | size ratio | MACs full | MACs low-rank | '
        'MAC ratio (ideal) | train img/s full | train img/s low-rank | train speed-up | '
        'infer img/s full | infer img/s low-rank | inference speed-up |'
    )
    lines = [header, '|' + '---|' * (header.count('|') - 1)]
    for name, batch, size in models:
        if args.quick:
            batch = max(2, batch // 4)
        low_args, origin = _ranks(name)
        torch.manual_seed(0)
        dense, low = zoo.create_model(name).to(device), zoo.create_model(name, **low_args).to(device)
        input_size = dense.pretrained_cfg['input_size']
        params = [sum(p.numel() for p in m.parameters()) for m in (dense, low)]
        macs = [count_macs(m.eval(), input_size) for m in (dense, low)]
        train = _throughputs(dense, low, batch, size, True, device, repeats)
        infer = _throughputs(dense, low, batch, size, False, device, repeats)
        lines.append(
            f'| {name} | {origin} | {params[0] / 1e6:.2f}M | {params[1] / 1e6:.2f}M | '
            f'{params[0] / params[1]:.2f}x | {macs[0] / 1e9:.3f}G | {macs[1] / 1e9:.3f}G | '
            f'{macs[0] / macs[1]:.2f}x | {train[0]:.1f} | {train[1]:.1f} | {train[1] / train[0]:.2f}x | '
            f'{infer[0]:.1f} | {infer[1]:.1f} | {infer[1] / infer[0]:.2f}x |'
        )
        print(lines[-1], flush=True)
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    note = (
        f'\nMeasured on {where}, torch {torch.__version__}; batch/size per model as in `MODELS` '
        f'({"quick mode" if args.quick else "full mode"}); throughput is the median of {repeats} repeats '
        f"after warm-up, dense and factorized timed alternately. MACs at the model's default input size; "
        f'their ratio is the ideal speed-up.\n'
    )
    print(note)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text('\n'.join(lines) + '\n' + note)


if __name__ == '__main__':
    main()
