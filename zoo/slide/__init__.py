"""Whole-slide nuclei segmentation: a slide in, QuPath-ready nuclei out, with memory bounded by the batch.

:func:`segment_slide` runs a segmentation net (``mrl_seg_*``) over a pyramidal slide, one file per step:

1. ``reading.py``: :func:`open_slide` reads SVS, NDPI, MRXS, SCN, tiled TIFF... through OpenSlide, OME-TIFF and
   plain TIFF through tifffile, and PNG/JPEG images into memory.
2. ``resolution.py``: :func:`choose_resolution` picks the pyramid level that matches the model's microns per
   pixel and resamples when no level matches.
3. ``tissue.py``: :func:`tissue_mask` thresholds the saturation of a thumbnail (Otsu), so tiles of bare glass
   are skipped.
4. ``tiles.py`` lays out overlapping tiles; ``pipeline.py`` streams them through the network in batches, on any
   :mod:`zoo.inference` backend (read ahead by ``workers`` threads, post-processed by one more while the network
   runs the next batch, both below the network's priority); ``nuclei.py`` post-processes each tile on its own
   (HoVer-Net's watershed) and ``store.py`` keeps its nuclei in an SQLite file, one transaction per batch: a rerun
   after a kill skips the finished batches.
5. ``merge.py``: nuclei are merged across tile borders exactly once (:func:`resolve_duplicates`): a nucleus that
   touches an inner tile border is cut there and dropped (the overlap guarantees a neighbour sees it whole); a
   nucleus seen whole by several tiles is kept from the tile where it lies deepest inside, away from the margin,
   as HoVer-Net keeps each nucleus from the tile where it is not cut.
6. Outputs, each written atomically: ``geojson.py`` writes GeoJSON that QuPath imports (one detection per
   nucleus) and a per-nucleus CSV, ``label_image.py`` an optional pyramidal OME-TIFF label image;
   ``rasterize.py`` turns polygons in the same convention back into pixels (:func:`polygon_pixels`).

``whole_slide.py`` puts the steps together. Nothing proportional to the slide's area is held in memory: per
tile, the maps and instance map of one batch; per slide, the list of tissue tiles and the few nuclei seen twice
where tiles overlap. ``zoo.segment.predict_instances`` runs the same tiling and merging on an in-memory image.

Cohorts: ``cohort.py`` runs many slides (:func:`segment_slides`) in one process, under torchrun or as a SLURM job
array, resumable through the output folder alone; ``summary.py`` writes each slide's figures and QC thumbnail, and
the cohort's table.
"""

from .cohort import CohortResult, list_slides, segment_slides, worker_shard
from .errors import SlideError, SlideWarning
from .geojson import nucleus_polygon
from .label_image import paint_labels
from .merge import resolve_duplicates
from .nuclei import Nucleus, tile_nuclei
from .pipeline import Timings, forward_tiles, run_tiles
from .rasterize import polygon_pixels
from .reading import ArraySlide, OpenSlideSlide, Slide, TiffSlide, open_slide
from .resolution import Resolution, choose_resolution, read_working
from .store import NucleusStore
from .summary import write_cohort_summary
from .tiles import TileGrid, check_tiling, tile_starts
from .tissue import tissue_mask
from .whole_slide import SlideResult, check_segmenter, segment_slide

__all__ = [
    'ArraySlide',
    'CohortResult',
    'Nucleus',
    'NucleusStore',
    'OpenSlideSlide',
    'Resolution',
    'Slide',
    'SlideError',
    'SlideResult',
    'SlideWarning',
    'TiffSlide',
    'TileGrid',
    'Timings',
    'check_segmenter',
    'check_tiling',
    'choose_resolution',
    'forward_tiles',
    'list_slides',
    'nucleus_polygon',
    'open_slide',
    'paint_labels',
    'polygon_pixels',
    'read_working',
    'resolve_duplicates',
    'run_tiles',
    'segment_slide',
    'segment_slides',
    'tile_nuclei',
    'tile_starts',
    'tissue_mask',
    'worker_shard',
    'write_cohort_summary',
]
