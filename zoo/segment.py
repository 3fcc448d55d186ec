"""Nuclei segmentation inference: tiled prediction, HoVer-Net post-processing and overlays.

:func:`predict_maps` runs a segmentation net (``mrl_seg_*``: ``[0, 1]`` RGB in, ``np``/``hv``/``tp`` maps
out) over overlapping tiles and blends them, so images of any size (a 2000x2000 tile, a slide region)
are processed with memory proportional to one batch of tiles plus the ``H x W`` output maps.
:func:`predict_instances` adds :func:`zoo.hovernet.postprocess.hovernet_postprocess`, :func:`overlay` draws the
instance contours and :func:`predict_to_overlay` does all of it for an image file.

Blending: every tile's predictions are weighted by a separable window that is 1 in the tile's interior
and falls along a raised cosine over the ``overlap`` pixels at each border, but never to 0. Each pixel
is the weighted mean of the tiles covering it (a convex combination), so seams get no visible step
and pixels covered by a single tile keep that tile's prediction.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from skimage.segmentation import find_boundaries

from .hovernet.postprocess import hovernet_postprocess
from .io import read_image

__all__ = ['predict_maps', 'predict_instances', 'overlay', 'predict_to_overlay', 'tile_starts', 'blend_window']


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: stride ``tile - overlap``, the last tile flush with the far edge."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_window(size: int, overlap: int) -> np.ndarray:
    """1-D blending weights: raised-cosine ramps over ``overlap`` pixels at both ends, 1 in between.

    Weights stay strictly positive (the ramp is sampled at pixel centres), so a pixel covered by one
    tile only is never divided by zero.
    """
    weights = np.ones(size, dtype=np.float32)
    ramp_length = min(overlap, size // 2)
    if ramp_length:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_length) + 0.5) / ramp_length)
        weights[:ramp_length] = ramp
        weights[size - ramp_length :] = ramp[::-1]
    return weights


@torch.inference_mode()
def predict_maps(
    model: torch.nn.Module,
    image: np.ndarray,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray | None]:
    """NP probability, HV maps and TP probabilities of a whole image by blended sliding-window inference.

    Args:
        model: a segmentation net returning ``np`` (2-class logits), ``hv`` and optionally ``tp`` logits
            at the input's size from ``[0, 1]`` RGB. It runs in eval mode; its mode is restored after.
        image: ``H x W x 3`` uint8 RGB.
        tile: tile side in pixels (images smaller than a tile are processed whole).
        overlap: pixels shared by neighbouring tiles; must be smaller than ``tile``.
        batch_size: tiles per forward pass.
        device: where to run; the model is moved there. Default: where the model's parameters are.

    Returns:
        ``np``: ``H x W`` float32 nuclear probability; ``hv``: ``2 x H x W`` float32;
        ``tp``: ``T x H x W`` float32 type probabilities, or ``None`` without a TP branch.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}')
    if not 0 <= overlap < tile:
        raise ValueError(f'need 0 <= overlap < tile, got overlap {overlap}, tile {tile}')
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    height, width = image.shape[:2]
    tile_h, tile_w = min(tile, height), min(tile, width)
    origins = [(top, left) for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)]
    window = torch.from_numpy(np.outer(blend_window(tile_h, overlap), blend_window(tile_w, overlap)))

    sums: dict[str, torch.Tensor] = {}
    weight_sum = torch.zeros(height, width)
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(origins), batch_size):
            batch_origins = origins[first : first + batch_size]
            tiles = np.stack([image[top : top + tile_h, left : left + tile_w] for top, left in batch_origins])
            batch = torch.from_numpy(tiles.transpose(0, 3, 1, 2).copy()).to(device).float().div_(255)
            outputs = model(batch)
            maps = {'np': outputs['np'].float().softmax(1)[:, 1:], 'hv': outputs['hv'].float()}
            if 'tp' in outputs:
                maps['tp'] = outputs['tp'].float().softmax(1)
            for name, value in maps.items():
                value = value.cpu()
                total = sums.setdefault(name, torch.zeros(value.shape[1], height, width))
                for (top, left), tile_value in zip(batch_origins, value):
                    total[:, top : top + tile_h, left : left + tile_w] += tile_value * window
            for top, left in batch_origins:
                weight_sum[top : top + tile_h, left : left + tile_w] += window
    finally:
        model.train(was_training)
    result = {name: total.div_(weight_sum).numpy() for name, total in sums.items()}  # in place: no second copy
    return {'np': result['np'][0], 'hv': result['hv'], 'tp': result.get('tp')}


def predict_instances(model: torch.nn.Module, image: np.ndarray, **kwargs) -> tuple[np.ndarray, dict[int, dict]]:
    """``H x W`` int32 instance map (0 = background) and ``inst_info`` (see ``hovernet_postprocess``).

    ``kwargs`` are those of :func:`predict_maps`; post-processing is HoVer-Net's watershed.
    """
    maps = predict_maps(model, image, **kwargs)
    return hovernet_postprocess(maps['np'], maps['hv'], maps['tp'])


def _instance_colours(count: int) -> np.ndarray:
    """``count + 1`` RGB colours (row 0 unused): hues spaced by the golden ratio, so neighbours differ."""
    hues = (np.arange(count + 1) * (math.sqrt(5) - 1) / 2) % 1.0
    return np.array([colorsys.hsv_to_rgb(hue, 0.9, 1.0) for hue in hues]) * 255


def overlay(image: np.ndarray, inst_map: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 copy of ``image`` (RGB or grey) with each instance's contour in its own colour."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[:2] != inst_map.shape:
        raise ValueError(f'image {image.shape[:2]} and instance map {inst_map.shape} differ in size')
    result = np.array(image[..., :3], dtype=np.uint8)
    contour = find_boundaries(inst_map, mode='inner')
    colours = _instance_colours(int(inst_map.max(initial=0))).astype(np.uint8)
    result[contour] = colours[inst_map[contour]]
    return result


def predict_to_overlay(
    model: torch.nn.Module, image_path: str | Path, out_dir: str | Path, **kwargs
) -> dict[str, int | Path]:
    """Segment an image file; write ``<stem>_overlay.png`` and ``<stem>_instances.tif`` (int32 ids) to ``out_dir``.

    ``kwargs`` are those of :func:`predict_maps`. Returns ``num_instances`` and both paths.
    """
    image_path, out_dir = Path(image_path), Path(out_dir)
    image = read_image(image_path)
    inst_map, _ = predict_instances(model, image, **kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay_path = out_dir / f'{image_path.stem}_overlay.png'
    instances_path = out_dir / f'{image_path.stem}_instances.tif'
    Image.fromarray(overlay(image, inst_map)).save(overlay_path)
    tifffile.imwrite(instances_path, inst_map, compression='zlib')
    return dict(num_instances=int(inst_map.max(initial=0)), overlay=overlay_path, instances=instances_path)
