"""Nuclei segmentation inference on images: tiled prediction, HoVer-Net post-processing and overlays.

:func:`predict_instances` segments an image of any size with the whole-slide machinery of :mod:`zoo.slide`:
overlapping tiles stream through the network in batches, each tile is post-processed with HoVer-Net's
watershed on its own, and nuclei are merged across tile borders exactly once. Memory is the image, its
``H x W`` int32 instance map and one batch of tiles; an 8000x8000 image never has whole-image float maps.
:func:`overlay` draws the instance contours and :func:`predict_to_overlay` does all of it for an image file.

:func:`predict_maps` returns the network's blended NP / HV / TP maps of a whole image, for inspection and
for images small enough to hold ``H x W`` float maps: every tile's predictions are weighted by a separable
window that is 1 in the tile's interior and falls along a raised cosine over the ``overlap`` pixels at each
border, but never to 0. Each pixel is the weighted mean of the tiles covering it (a convex combination), so
seams get no visible step and pixels covered by a single tile keep that tile's prediction.
"""

from __future__ import annotations

import colorsys
import io
import math
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from skimage.segmentation import find_boundaries

from ._arguments import check_device
from .inference import check_backend, compile
from .io import atomic_file, atomic_write_bytes, read_image
from .slide import (
    ArraySlide,
    NucleusStore,
    TileGrid,
    check_segmenter,
    check_tiling,
    forward_tiles,
    paint_labels,
    resolve_duplicates,
    run_tiles,
    tile_starts,
)

__all__ = ['predict_maps', 'predict_instances', 'overlay', 'predict_to_overlay', 'tile_starts', 'blend_window']

OVERLAY_BAND = 1024  # rows per band when drawing overlays


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


def predict_maps(
    model: torch.nn.Module,
    image: np.ndarray,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    backend: str = 'torch',
    precision: str = 'fp32',
) -> dict[str, np.ndarray | None]:
    """NP probability, HV maps and TP probabilities of a whole image by blended sliding-window inference.

    Args:
        model: a segmentation net returning ``np`` (2-class logits), ``hv`` and optionally ``tp`` logits
            at the input's size from ``[0, 1]`` RGB. It runs in eval mode; its mode is restored after.
        image: ``H x W x 3`` uint8 RGB.
        tile: tile side in pixels, at least 32 (images smaller than a tile are processed whole).
        overlap: pixels shared by neighbouring tiles, at most half a tile.
        batch_size: tiles per forward pass (``zoo.slide.check_tiling`` bounds all three).
        device: where to run; the model is moved there. Default: where the model's parameters are.
        backend, precision: how the network runs (:func:`zoo.inference.compile`): ``'torch'`` (eager, the
            default), ``'onnxruntime'``, ``'openvino'`` or ``'auto'``; ``'fp32'`` or ``'bf16'``.

    Returns:
        ``np``: ``H x W`` float32 nuclear probability; ``hv``: ``2 x H x W`` float32;
        ``tp``: ``T x H x W`` float32 type probabilities, or ``None`` without a TP branch.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}')
    check_segmenter(model, 'an image')
    check_tiling(tile, overlap, batch_size)
    check_backend(backend, precision)
    check_device(device)
    if device is not None:
        model.to(device)
    height, width = image.shape[:2]
    tile_h, tile_w = min(tile, height), min(tile, width)
    network = compile(model, backend, precision, input_size=(3, tile_h, tile_w), batch_size=batch_size)
    origins = [(top, left) for top in tile_starts(height, tile, overlap) for left in tile_starts(width, tile, overlap)]
    window = torch.from_numpy(np.outer(blend_window(tile_h, overlap), blend_window(tile_w, overlap)))

    sums: dict[str, torch.Tensor] = {}
    weight_sum = torch.zeros(height, width)
    for first in range(0, len(origins), batch_size):
        batch_origins = origins[first : first + batch_size]
        tiles = np.stack([image[top : top + tile_h, left : left + tile_w] for top, left in batch_origins])
        maps = forward_tiles(network, tiles, network.device)
        maps['np'] = maps['np'][:, None]
        for name, value in maps.items():
            if value is None:
                continue
            value = torch.from_numpy(value)
            total = sums.setdefault(name, torch.zeros(value.shape[1], height, width))
            for (top, left), tile_value in zip(batch_origins, value):
                total[:, top : top + tile_h, left : left + tile_w] += tile_value * window
        for top, left in batch_origins:
            weight_sum[top : top + tile_h, left : left + tile_w] += window
    result = {name: total.div_(weight_sum).numpy() for name, total in sums.items()}  # in place: no second copy
    return {'np': result['np'][0], 'hv': result['hv'], 'tp': result.get('tp')}


def predict_instances(
    model: torch.nn.Module,
    image: np.ndarray,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    progress: bool = False,
    backend: str = 'torch',
    precision: str = 'fp32',
) -> tuple[np.ndarray, dict[int, dict]]:
    """Instance map and per-instance information of an image, tile by tile (see :mod:`zoo.slide`).

    Args:
        model: a segmentation net as for :func:`predict_maps`; it runs in eval mode, its mode restored after.
        image: ``H x W x 3`` uint8 RGB.
        tile, overlap, batch_size, device: as for :func:`predict_maps`; a nucleus is found whole when it is
            smaller than ``overlap``. An image that fits one tile is post-processed whole.
        progress: show a progress bar with ETA on stderr.
        backend, precision: as for :func:`predict_maps`.

    Returns:
        ``inst_map``: ``H x W`` int32, 0 = background, nuclei ``1..N`` in tile order; ``inst_info``:
        ``{id: {'bbox', 'centroid', 'contour', 'type', 'type_prob'}}`` as
        :func:`zoo.hovernet.postprocess.hovernet_postprocess` reports them, in image coordinates.
    """
    check_segmenter(model, 'an image')
    check_tiling(tile, overlap, batch_size)
    check_backend(backend, precision)
    check_device(device)
    slide = ArraySlide(image)
    if device is not None:
        model.to(device)
    grid = TileGrid(image.shape[1], image.shape[0], tile, overlap)
    network = compile(model, backend, precision, input_size=(3, *grid.tile_size), batch_size=batch_size)
    store = NucleusStore()
    try:
        read_tile = lambda left, top, width, height: slide.read(0, left, top, width, height)  # noqa: E731
        run_tiles(network, read_tile, grid, range(len(grid)), store, batch_size=batch_size, progress=progress)
        resolve_duplicates(store, grid)
        nuclei = [nucleus for index in range(len(grid)) for nucleus in store.nuclei(index)]
        ids = {nucleus.id: inst_id for inst_id, nucleus in enumerate(nuclei, start=1)}
        inst_map = paint_labels(store, grid, ids, 0, 0, image.shape[:2])
    finally:
        store.close()
    inst_info = {
        inst_id: {
            'bbox': np.array([nucleus.bbox[:2], nucleus.bbox[2:]]),
            'centroid': nucleus.centroid,
            'contour': nucleus.contour,
            'type': nucleus.type,
            'type_prob': nucleus.type_prob,
        }
        for inst_id, nucleus in enumerate(nuclei, start=1)
    }
    return inst_map, inst_info


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
    colours = _instance_colours(int(inst_map.max(initial=0))).astype(np.uint8)
    height = inst_map.shape[0]
    for top in range(0, height, OVERLAY_BAND):  # in bands (plus a row of context): no whole-image temporaries
        above, bottom = max(top - 1, 0), min(top + OVERLAY_BAND, height)
        band = inst_map[above : bottom + 1]
        contour = find_boundaries(band, mode='inner')[top - above : top - above + bottom - top]
        result[top:bottom][contour] = colours[band[top - above : top - above + bottom - top][contour]]
    return result


def predict_to_overlay(
    model: torch.nn.Module,
    image_path: str | Path,
    out_dir: str | Path,
    progress: bool = True,
    image: np.ndarray | None = None,
    **kwargs,
) -> dict[str, int | Path]:
    """Segment an image file; write ``<stem>_overlay.png`` and ``<stem>_instances.tif`` (int32 ids) to ``out_dir``.

    ``kwargs`` are those of :func:`predict_instances`; ``progress`` shows a bar with ETA on stderr; ``image`` is
    the file's pixels when the caller has already decoded them with :func:`zoo.io.read_image` (a large image is
    not decoded twice). Both files are written atomically. Returns ``num_instances`` and both paths.
    """
    image_path, out_dir = Path(image_path), Path(out_dir)
    image = read_image(image_path) if image is None else image
    inst_map, _ = predict_instances(model, image, progress=progress, **kwargs)
    overlay_path = out_dir / f'{image_path.stem}_overlay.png'
    instances_path = out_dir / f'{image_path.stem}_instances.tif'
    png = io.BytesIO()
    Image.fromarray(overlay(image, inst_map)).save(png, format='png')
    atomic_write_bytes(overlay_path, png.getvalue())
    with atomic_file(instances_path) as file:
        tifffile.imwrite(file, inst_map, compression='zlib', tile=(256, 256))
    return dict(num_instances=int(inst_map.max(initial=0)), overlay=overlay_path, instances=instances_path)
