"""Segmenting one whole slide: read, tile, run the network, merge, write (:func:`segment_slide`)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .._arguments import check_count, check_device, check_positive
from .._registry import check_model_name, list_models, model_task
from ..inference import check_backend, compile, model_sha256
from .errors import SlideError
from .geojson import write_nuclei
from .label_image import write_label_image
from .merge import resolve_duplicates
from .pipeline import Timings, run_tiles, timed
from .reading import Slide, open_slide
from .resolution import Resolution, choose_resolution, read_working
from .store import NucleusStore
from .tiles import TileGrid, check_tiling
from .tissue import tissue_tiles

MAX_WORKERS = 64  # reader threads, each holding a batch read ahead of the network: more only fill memory


@dataclass
class SlideResult:
    """What :func:`segment_slide` did: counts, the resolution used, output paths and time per stage."""

    num_nuclei: int
    tiles: int
    tissue_tiles: int
    tiles_run: int
    duplicates: int
    resolution: Resolution
    megapixels: float
    geojson: Path
    csv: Path
    label_image: Path | None
    store: Path
    timings: Timings


def _file_size(path: str) -> int | None:
    return os.path.getsize(path) if os.path.isfile(path) else None


def _type_names(model: torch.nn.Module, type_names: Sequence[str] | None) -> list[str] | None:
    num_types = getattr(model, 'num_types', 0) or 0
    if not num_types:
        return None
    names = list(type_names or getattr(model, 'pretrained_cfg', {}).get('label_names') or [])
    return names if len(names) == num_types else [f'Type {k}' for k in range(num_types)]


def check_slide_arguments(
    model: torch.nn.Module | str,
    tile: int,
    overlap: int,
    batch_size: int,
    workers: int,
    mpp,
    slide_mpp,
    backend: str,
    precision: str,
    device=None,
) -> None:
    """Refuse, before any slide is read or weights are loaded, what :func:`segment_slide` cannot work with:
    tiling (:func:`zoo.slide.tiles.check_tiling`), reader threads, resolutions, the backend
    (:func:`zoo.inference.check_backend`), a device this machine does not have, and a model of another task."""
    check_tiling(tile, overlap, batch_size)
    check_backend(backend, precision)
    check_device(device, error=SlideError)
    check_count('workers', workers, 0, MAX_WORKERS, error=SlideError)
    for name, value in (('mpp', mpp), ('slide_mpp', slide_mpp)):
        if value is not None:
            check_positive(name, value, error=SlideError)
    check_segmenter(model)


def check_segmenter(model: torch.nn.Module | str, what: str = 'a slide') -> None:
    """Refuse a zoo model of another task (a classifier), by its name: segmenting ``what`` needs a nuclei
    segmentation model. A network of the caller's own passes."""
    name = model if isinstance(model, str) else getattr(model, 'pretrained_cfg', {}).get('architecture')
    if not isinstance(model, str) and name not in list_models():
        return  # a network of the caller's own
    task = model_task(check_model_name(name))
    if task != 'nuclei-segmentation':
        published = [n for n in list_models(tags=True) if model_task(n) == 'nuclei-segmentation']
        raise SlideError(
            f'{name} is a model for {task}; segmenting {what} needs a nuclei segmentation model, e.g. '
            f'{", ".join(published)}'
        )


def segment_slide(
    model: torch.nn.Module | str,
    slide: str | Path | Slide,
    out_dir: str | Path,
    *,
    mpp: float | None = None,
    slide_mpp: float | None = None,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 8,
    workers: int = 2,
    detect_tissue: bool = True,
    label_image: bool = False,
    type_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    backend: str = 'torch',
    precision: str = 'fp32',
    progress: bool = True,
) -> SlideResult:
    """Segment the nuclei of a whole slide; write ``<stem>.geojson``, ``<stem>.csv`` (and ``<stem>_labels.ome.tif``).

    Args:
        model: a segmentation net (``mrl_seg_*``) or the name of published weights, e.g.
            ``'mrl_seg_nano.stardist'``.
        slide: a slide path (see :func:`open_slide`) or an open :class:`Slide`.
        out_dir: where outputs go; ``<stem>.tiles.sqlite`` there holds finished tiles, so rerunning the same
            call after a kill continues where it stopped.
        mpp: microns per pixel to run the model at; default ``model.microns_per_pixel``. When neither is
            known, level 0 is used as it is (with a :class:`SlideWarning`).
        slide_mpp: microns per pixel of the slide's level 0, overriding the file's.
        tile, overlap: network tile side (at least 32) and the pixels neighbouring tiles share (at most half a
            tile); a nucleus is found whole when it is smaller than ``overlap``.
        batch_size: tiles per forward pass (memory grows with it, not with the slide).
        workers: threads reading and decoding tiles ahead of the network (0: read in turn; at most 64).

    Arguments that cannot work (:func:`zoo.slide.tiles.check_tiling`) and a model of another task raise a
    :class:`SlideError` before the slide is opened; a resolution that would create unbounded work
    (:func:`choose_resolution`) before any tile is read.
        detect_tissue: skip tiles without tissue (:func:`tissue_mask`).
        label_image: also write a pyramidal OME-TIFF of nucleus ids at the working resolution.
        type_names: names of the model's nuclear types (default: its ``label_names``, else ``Type k``).
        device: where to run; the model is moved there.
        backend, precision: how the network runs (:func:`zoo.inference.compile`): ``'torch'`` (eager, the
            default), ``'onnxruntime'``, ``'openvino'`` or ``'auto'`` (the fastest here within tolerance of eager
            fp32); ``'fp32'`` or ``'bf16'``. A resumed run may use another backend than the batches before it.
        progress: show a progress bar with ETA on stderr.
    """
    check_slide_arguments(model, tile, overlap, batch_size, workers, mpp, slide_mpp, backend, precision, device)
    owned = not isinstance(slide, Slide)
    slide = open_slide(slide) if owned else slide  # a bad slide fails before the model loads
    if slide_mpp is not None:
        slide.mpp = float(slide_mpp)
    try:
        if isinstance(model, str):
            import zoo  # the package, for create_model (zoo does not import zoo.slide)

            model = zoo.create_model(model, pretrained=True)
        if device is not None:
            model.to(device)
        device = next(model.parameters()).device
        return _segment_open_slide(
            model,
            slide,
            Path(out_dir),
            mpp=mpp if mpp is not None else getattr(model, 'microns_per_pixel', None),
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            workers=workers,
            detect_tissue=detect_tissue,
            label_image=label_image,
            type_names=_type_names(model, type_names),
            device=device,
            backend=backend,
            precision=precision,
            progress=progress,
        )
    finally:
        if owned:
            slide.close()


def _segment_open_slide(
    model,
    slide: Slide,
    out_dir: Path,
    *,
    mpp,
    tile,
    overlap,
    batch_size,
    workers,
    detect_tissue,
    label_image,
    type_names,
    device,
    backend,
    precision,
    progress,
) -> SlideResult:
    start = time.perf_counter()
    timings = Timings()
    resolution = choose_resolution(slide, mpp)
    width, height = resolution.size
    grid = TileGrid(width, height, tile, overlap)
    tiles = list(range(len(grid)))
    if detect_tissue:
        tiles = tissue_tiles(slide, grid, resolution)
    stem = Path(slide.path).stem
    out_dir.mkdir(parents=True, exist_ok=True)
    store_path = out_dir / f'{stem}.tiles.sqlite'
    store = NucleusStore(store_path)
    try:
        store.check_meta(
            {
                'slide': f'{Path(slide.path).name} {slide.level_dimensions[0]} {_file_size(slide.path)}',
                'model': model_sha256(model)[:16],
                'resolution': f'level {resolution.level} x{resolution.scale:.6g} {resolution.size}',
                'tiles': f'{tile}/{overlap} batch {batch_size} tissue {detect_tissue} {len(tiles)}',
            },
            str(store_path),
        )
        network = compile(model, backend, precision, input_size=(3, *grid.tile_size), batch_size=batch_size)
        tiles_run = run_tiles(
            network,
            lambda left, top, w, h: read_working(slide, resolution, left, top, w, h),
            grid,
            tiles,
            store,
            batch_size=batch_size,
            workers=workers,
            device=device,
            progress=stem if progress else False,
            timings=timings,
        )
        duplicates = timed(timings, 'merge', resolve_duplicates, store, grid)
        write_start = time.perf_counter()
        geojson_path, csv_path = out_dir / f'{stem}.geojson', out_dir / f'{stem}.csv'
        count = write_nuclei(store, grid, resolution, slide, type_names, geojson_path, csv_path)
        label_path = None
        if label_image:
            label_path = out_dir / f'{stem}_labels.ome.tif'
            write_label_image(store, grid, resolution, label_path)
        timings.add('write', time.perf_counter() - write_start)
    finally:
        store.close()
    timings.total = time.perf_counter() - start
    tile_h, tile_w = grid.tile_size
    return SlideResult(
        num_nuclei=count,
        tiles=len(grid),
        tissue_tiles=len(tiles),
        tiles_run=tiles_run,
        duplicates=duplicates,
        resolution=resolution,
        megapixels=len(tiles) * tile_h * tile_w / 1e6,
        geojson=geojson_path,
        csv=csv_path,
        label_image=label_path,
        store=store_path,
        timings=timings,
    )
