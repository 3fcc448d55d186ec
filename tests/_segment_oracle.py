"""Stand-ins for segmentation nets whose answer is known, shared by the segmentation and slide tests.

:func:`disks` draws disk nuclei whose image encodes their own HoVer-Net targets, and :func:`oracle` is a
1x1-conv net that reads them back: every output pixel depends on its input pixel only, so tiling cannot
change what it predicts and the instances it yields are the disks.
"""

import numpy as np
import torch
import torch.nn as nn

from zoo.hovernet import hv_map


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
