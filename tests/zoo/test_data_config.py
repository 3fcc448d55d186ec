"""The preprocessing a classifier declares in its pretrained cfg is all a user needs: timm's own pipeline
(``resolve_data_config`` + ``create_transform``) on the raw images reproduces the figure on the card."""

import numpy as np
import timm
import timm.data
import torch
from PIL import Image

import zoo
from training.data import load_fashion_mnist

KEY = 'cf_resnet18_fmnist.cuttlefish'
SPLIT = 'Fashion-MNIST test split (10,000 images)'


def test_timm_transform_reproduces_the_card_top1():
    model = timm.create_model(KEY, pretrained=True).eval()
    config = timm.data.resolve_data_config(model=model)
    assert config['input_size'] == (1, 28, 28) and config['crop_pct'] == 1.0
    transform = timm.data.create_transform(**config)
    images, labels = load_fashion_mnist('test')
    assert len(images) == 10_000
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), 500):
            batch = torch.stack([transform(Image.fromarray(a)) for a in images[start : start + 500]])
            predicted = model(batch).argmax(1).numpy()
            correct += int((predicted == labels[start : start + 500]).sum())
    top1 = 100 * correct / len(images)
    card = zoo.get_weights(KEY).metrics[SPLIT]['top1']
    assert abs(top1 - card) <= 0.3, f'timm pipeline top-1 {top1:.2f} vs card {card}'


def test_the_transform_is_exactly_the_declared_normalisation():
    """Fashion-MNIST at its own size: no resampling, only ``(x / 255 - mean) / std`` with the cfg's statistics."""
    model = timm.create_model(KEY, pretrained=False)
    config = timm.data.resolve_data_config(model=model)
    transform = timm.data.create_transform(**config)
    image = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    expected = (torch.from_numpy(image).float()[None] / 255 - config['mean'][0]) / config['std'][0]
    torch.testing.assert_close(transform(Image.fromarray(image)), expected)
    assert (config['mean'], config['std']) == (model.pretrained_cfg['mean'], model.pretrained_cfg['std'])
