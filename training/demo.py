"""The main job (``make demo``): load published models through torch.hub and use them on real held-out data.

1. ``cf_resnet18_fmnist`` — the ResNet-18 trained with the Cuttlefish switch — classifies Fashion-MNIST
   test images (never seen in training) and is scored on the whole 10,000-image test split.
2. ``mrl_seg_nano.stardist`` — the MRL nuclei segmentation net — segments the held-out tiles of the
   annotated nuclei image shipped in the ``stardist`` wheel (fluorescence, DSB2018 — not H&E), reports
   DICE / AJI / PQ against its ground truth and writes an overlay PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import timm
import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name: str) -> torch.nn.Module:
    """A published model through torch.hub, exactly as a user would load it from a clone."""
    return torch.hub.load(str(REPO), name, source='local', pretrained=True).eval()


def classify(count: int) -> None:
    from training.data.fashion_mnist import FashionMNIST

    name = 'cf_resnet18_fmnist'
    print(f'== {name}: Fashion-MNIST test images (held out from training)')
    model = _load(name)
    low_rank = timm.models.get_model_args(model).get('ranks', {})
    params = sum(p.numel() for p in model.parameters())
    chosen = ', '.join(f'{layer} (rank {rank})' for layer, rank in low_rank.items()) or 'none'
    print(
        f'  {params:,} parameters; low-rank layers chosen by Cuttlefish during training: {chosen} '
        f'(see hub/cf_resnet18_fmnist/README.md)'
    )
    test = FashionMNIST('test')
    classes = model.pretrained_cfg['label_names']
    picks = np.random.default_rng(0).choice(len(test), count, replace=False)
    with torch.inference_mode():
        probs = model(torch.stack([test[i][0] for i in picks])).softmax(-1)
        print(f'  {"image":>6}  {"true class":<12} {"predicted":<12} confidence')
        for i, p in zip(picks, probs):
            label = test[i][1]
            mark = '' if p.argmax() == label else '  <- wrong'
            print(f'  {i:>6}  {classes[label]:<12} {classes[p.argmax()]:<12} {p.max() * 100:5.1f}%{mark}')
        loader = torch.utils.data.DataLoader(test, batch_size=500)
        correct = sum((model(x).argmax(-1) == y).sum().item() for x, y in loader)
    print(f'  top-1 on all {len(test):,} test images: {correct / len(test) * 100:.2f}%')


def segment(out_dir: Path) -> None:
    from PIL import Image

    from training.data import split_stardist_sample
    from zoo.hovernet import mean_instance_stats
    from zoo.segment import overlay, predict_instances

    name = 'mrl_seg_nano.stardist'
    print(f'\n== {name}: held-out tiles of the stardist nuclei image (fluorescence, not H&E)')
    model = _load(name)
    _, held_out = split_stardist_sample()
    pairs, panels = [], []
    for sample in held_out:
        inst, _ = predict_instances(model, sample.image, tile=128, overlap=32)
        pairs.append((sample.inst_map, inst))
        panels.append(overlay(sample.image, inst))
    stats = mean_instance_stats(pairs)
    print('  ' + ', '.join(f'{k} {v:.3f}' for k, v in stats.items()) + f'  (mean over {len(held_out)} held-out tiles)')
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / 'stardist_overlay.png'
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)
    print(f'  overlay of predicted nuclei: {path}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--count', type=int, default=12, help='test images to show one by one')
    parser.add_argument('--out-dir', type=Path, default=Path('demo_output'))
    args = parser.parse_args()
    torch.set_num_threads(min(4, torch.get_num_threads()))
    classify(args.count)
    segment(args.out_dir)


if __name__ == '__main__':
    main()
