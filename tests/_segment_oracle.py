"""Stand-ins for segmentation nets whose answer is known, shared by the segmentation, slide and evaluation tests.

:func:`disks` draws disk nuclei whose image encodes their own HoVer-Net targets, and :func:`oracle` is a
1x1-conv net that reads them back: every output pixel depends on its input pixel only, so tiling cannot
change what it predicts and the instances it yields are the disks. :func:`synthetic_sample` and
:class:`ReadOffNet` do the same with nuclear types. :func:`tiny_run` writes a run directory of a small real
net, for command-line tests where only the data matters.
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import save_file

import zoo
from training.data import NucleiSample
from zoo.hovernet import hv_map, instance_info
from zoo.slide import Nucleus, nucleus_polygon


class PointwiseNet(nn.Module):
    """A 1x1-conv stand-in for a segmentation net: each output pixel depends on its input pixel only,
    so tiled inference must reproduce the full-image forward exactly."""

    def __init__(self, num_types: int = 0):
        super().__init__()
        self.num_types = num_types
        self.conv = nn.Conv2d(3, 4 + num_types, 1)

    def forward(self, x):
        out = self.conv(x)
        maps = dict(np=out[:, :2], hv=out[:, 2:4])
        return maps | (dict(tp=out[:, 4:]) if self.num_types else {})


def oracle() -> PointwiseNet:
    """Reads the answer off a :func:`disks` image: NP from red, HV from green and blue."""
    model = PointwiseNet()
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.zero_()
        model.conv.weight[0, 0], model.conv.bias[0] = -20.0, 10.0
        model.conv.weight[1, 0], model.conv.bias[1] = 20.0, -10.0
        model.conv.weight[2, 1], model.conv.bias[2] = 2.0, -1.0
        model.conv.weight[3, 2], model.conv.bias[3] = 2.0, -1.0
    return model


def typed_oracle() -> PointwiseNet:
    """The :func:`oracle` with three nuclear types, type 2 winning everywhere."""
    model = PointwiseNet(num_types=3)
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.zero_()
        model.conv.weight[:4], model.conv.bias[:4] = oracle().conv.weight, oracle().conv.bias
        model.conv.bias[6] = 3.0
    return model


def disks(height: int, width: int, centres, radius: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Disk nuclei; red is bright inside them, green and blue hold their HoVer-Net HV maps in [0, 1]."""
    rows, cols = np.mgrid[:height, :width]
    inst_map = np.zeros((height, width), np.int32)
    for inst_id, (row, col) in enumerate(centres, start=1):
        inst_map[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = inst_id
    red = np.where(inst_map > 0, 230, 20)
    green, blue = np.round((hv_map(inst_map) + 1) * 127.5)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8), inst_map


def full_forward(model, image):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = model.eval()(x)
    return dict(
        np=out['np'].softmax(1)[0, 1].numpy(),
        hv=out['hv'][0].numpy(),
        tp=out['tp'].softmax(1)[0].numpy() if 'tp' in out else None,
    )


# Synthetic images: red encodes the nuclear type (background 20, type t: 40 + 50 t), green and blue the
# HoVer-Net HV maps, so that a 1x1 convolution can read every answer off the image.
RED_LEVELS = np.array([20.0, 90.0, 140.0, 190.0, 240.0])


def synthetic_sample(name: str, discs: list[tuple[int, int, int]], size: int = 64) -> NucleiSample:
    """Disc nuclei ``(row, col, type)`` of radius 6."""
    rows, cols = np.mgrid[:size, :size]
    inst_map = np.zeros((size, size), np.int32)
    type_map = np.zeros((size, size), np.int32)
    for inst_id, (row, col, nucleus_type) in enumerate(discs, start=1):
        inside = (rows - row) ** 2 + (cols - col) ** 2 <= 36
        inst_map[inside], type_map[inside] = inst_id, nucleus_type
    red = RED_LEVELS[type_map]
    green, blue = np.round((hv_map(inst_map) + 1) * 127.5)
    image = np.stack([red, green, blue], axis=-1).astype(np.uint8)
    return NucleiSample(name, image, inst_map, type_map)


class ReadOffNet(torch.nn.Module):
    """NP from red (nucleus when red > 55), HV from green and blue, and TP logits that pick the type whose
    red level is nearest: ``-(red - level)^2`` up to a term shared by all types, i.e. linear in red."""

    def __init__(self, type_levels: np.ndarray | None):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(200.0))  # inference reads the device off a parameter
        self.type_levels = None if type_levels is None else torch.tensor(type_levels / 255.0, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        red = x[:, :1]
        nucleus = (red - 55 / 255) * self.gain
        outputs = {'np': torch.cat([-nucleus, nucleus], 1), 'hv': x[:, 1:] * 2 - 1}
        if self.type_levels is not None:
            levels = self.type_levels.view(1, -1, 1, 1)
            outputs['tp'] = (2 * levels * red - levels**2) * 1000
        return outputs


def tiny_run(run_dir: Path, num_types: int = 0, **task_args) -> Path:
    """A run directory as ``zoo train`` leaves one (``best/run.json``, ``best/model.safetensors``) holding HoVer-Net's
    branches on timm's ``test_efficientnet`` (121k parameters, random weights, ``num_types`` types): it builds in a
    fraction of a second, for command-line tests where only the data matters. ``task_args`` are its recipe's."""
    model_args = {'encoder': 'test_efficientnet', 'decoder_dims': [16, 16, 16, 8, 8]}
    if num_types:
        model_args['num_types'] = num_types
    model = zoo.create_model('hovernet', **model_args)
    (run_dir / 'best').mkdir(parents=True)
    save_file(model.state_dict(), str(run_dir / 'best' / 'model.safetensors'))
    recipe = {'task': {'name': 'nuclei-segmentation', 'args': {'tile': 64, 'overlap': 16, **task_args}}}
    info = {'model_name': 'hovernet', 'model_args': model_args, 'recipe': recipe, 'metrics': {}}
    (run_dir / 'best' / 'run.json').write_text(json.dumps(info))
    return run_dir


def evaluate_refusal(capsys, run: Path, dataset: str, data_dir: Path, *extra: str) -> str:
    """``zoo evaluate RUN --dataset DATASET --data-dir DATA_DIR``, in-process: it must exit with status 2 and one
    line on stderr; returns that line after ``zoo evaluate: error: ``."""
    from training.cli import main

    args = ['evaluate', str(run), '--dataset', dataset, '--data-dir', str(data_dir), '--out', str(data_dir / 'out')]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('zoo evaluate: error: '), err
    return err[len('zoo evaluate: error: ') :].strip()


def write_qupath(folder: Path, samples, names) -> None:
    """Each sample as a PNG and a QuPath GeoJSON of its nuclei, classified by type name (the zoo's own outlines)."""
    folder.mkdir(parents=True)
    for sample in samples:
        Image.fromarray(sample.image).save(folder / f'{sample.name}.png')
        features = []
        for inst_id, info in instance_info(sample.inst_map, sample.type_map).items():
            (rmin, cmin), (rmax, cmax) = info['bbox']
            mask = sample.inst_map[rmin:rmax, cmin:cmax] == inst_id
            nucleus = Nucleus(0, (rmin, cmin, rmax, cmax), mask, np.zeros(2), np.zeros((1, 2)), 1)
            geometry = {'type': 'Polygon', 'coordinates': [nucleus_polygon(nucleus).tolist()]}
            classification = {'name': names[info['type']]}
            features.append({'type': 'Feature', 'geometry': geometry, 'properties': {'classification': classification}})
        (folder / f'{sample.name}.geojson').write_text(json.dumps({'type': 'FeatureCollection', 'features': features}))
