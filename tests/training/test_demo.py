"""The README's main job (``make demo``): published weights, real held-out images, printed results."""

import re

import numpy as np
from PIL import Image

import zoo
from training import demo
from zoo.datasets import FASHION_MNIST_TEST_SPLIT


def test_demo_prints_the_published_accuracy_and_writes_the_overlay(tmp_path, capsys):
    demo.classify(count=3)
    demo.segment(tmp_path)
    out = capsys.readouterr().out
    weights = zoo.get_weights('cf_resnet18_fmnist.cuttlefish')
    card_top1 = weights.metrics[FASHION_MNIST_TEST_SPLIT]['top1']
    assert f'top-1 on all 10,000 test images: {card_top1:.2f}%' in out
    assert len(re.findall(r'^\s+\d+\s+\S', out, re.M)) >= 3  # one row per shown image
    dice = float(re.search(r'dice (\d\.\d+)', out).group(1))
    assert dice > 0.9, out
    overlay = np.asarray(Image.open(tmp_path / 'stardist_overlay.png'))
    assert overlay.shape == (128, 4 * 128, 3)  # the 4 held-out tiles side by side
