"""QuPath GeoJSON as nuclei labels: images or whole slides, each with the objects QuPath exports for it.

Layout (:func:`load_geojson`)::

    ROOT/<stem>.{png,jpg,tif,ome.tif,svs,ndpi,mrxs,...}   an image, or a slide zoo.slide.open_slide reads
    ROOT/<stem>.geojson                                    QuPath: File > Export objects as GeoJSON

either directly under ``ROOT`` or under ``ROOT/train`` and ``ROOT/val``, as :func:`~training.data.load_folder`.
Coordinates are the image's full-resolution pixels, as QuPath exports them (for MRXS, relative to the slide's
bounds, as QuPath shows it).

What the objects mean:

* **nuclei**: detections, cells (their ``nucleusGeometry`` when they have one, else their outline), and
  annotations that do not mark a region. ``Polygon`` and ``MultiPolygon`` geometries, holes included, are
  rasterised with :func:`zoo.slide.polygon_pixels`, the convention the zoo's own GeoJSON is written in, in file
  order (a nucleus drawn over an earlier one takes the shared pixels, as the zoo's label image does). Instance
  ids are the nuclei's places in the file (1 for the first), so the zoo's own GeoJSON reads back as the label
  image ``zoo segment-slide --label-image`` wrote beside it.
* **regions**: annotations classified as one of :data:`REGION_CLASSES` (``Region*``, QuPath's built-in class
  for regions, or ``Training``). When a file has any, each region becomes one sample: its bounding box, read at
  full resolution, with the pixels of the box outside the region blacked out and unlabelled, so tissue nobody
  annotated is never shown to the network as background. Nuclei are clipped to the region. A file without
  regions is one sample, the whole image, which must then be at most ``zoo.io.max_image_pixels()`` pixels: draw
  regions on whole slides.
* objects classified ``Ignore*``, TMA cores and tiles are skipped.

Nuclear types: with ``types`` (names, ids 1, 2, ... in that order) every nucleus's ``classification`` must be
one of them; an unknown name or an unclassified nucleus is an error naming them. Without ``types`` the
classifications are ignored and samples carry no type map.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from zoo.io import max_image_pixels
from zoo.slide import open_slide, polygon_pixels

from .readers import (
    DatasetLayoutError,
    NucleiSample,
    _check_every_label_has_an_image,
    _check_split,
    _files_by_stem,
    _layout_error,
    _read,
    _require_dir,
    _train_or_val,
)

__all__ = ['REGION_CLASSES', 'load_geojson']

REGION_CLASSES = ('Region*', 'Training')
_SKIPPED_CLASSES = ('Ignore*',)
_SKIPPED_OBJECT_TYPES = ('tile', 'tma_core', 'root')
_IMAGE_SUFFIXES = (
    '.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.svs', '.ndpi', '.mrxs', '.scn', '.bif', '.vms', '.vmu',
    '.svslide',
)  # fmt: skip
_LAYOUT = (
    'ROOT/<stem>.{png,jpg,tif,svs,ndpi,mrxs,...} with matching ROOT/<stem>.geojson (QuPath: File > Export objects '
    'as GeoJSON), either directly under ROOT or under ROOT/train and ROOT/val'
)

Polygon = list[np.ndarray]  # rings [x, y]: the outline, then holes


@dataclass
class _Objects:
    """The nuclei and regions of one GeoJSON file."""

    nuclei: list[list[Polygon]]  # each nucleus: one or more polygons (a MultiPolygon)
    types: list[int]  # type id of each nucleus (0 when no types are asked for)
    regions: list[list[Polygon]]


def load_geojson(
    root: str | Path,
    split: Literal['all', 'train', 'val'] = 'all',
    types: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> list[NucleiSample]:
    """Images or slides with QuPath GeoJSON nuclei (see the module for the layout and what objects mean).

    ``split`` works as in :func:`~training.data.load_folder`: ``ROOT/train`` and ``ROOT/val`` when they exist,
    otherwise a deterministic ``val_fraction`` share of the samples (regions count one each) drawn with ``seed``.
    ``types`` names the nuclear types (ids 1, 2, ...); samples then carry type maps.
    """
    _check_split(split, ('all', 'train', 'val'))
    type_ids = None
    if types is not None:
        types = list(types)
        if not types or len(set(types)) != len(types) or not all(isinstance(t, str) and t for t in types):
            raise ValueError(f'types must be distinct, non-empty class names, got {types!r}')
        type_ids = {name: index for index, name in enumerate(types, start=1)}
    root = Path(root)
    _require_dir(root, _LAYOUT, root)
    return _train_or_val(root, split, val_fraction, seed, lambda folder: _load_folder(root, folder, type_ids))


def _load_folder(root: Path, folder: Path, type_ids: dict[str, int] | None) -> list[NucleiSample]:
    _require_dir(folder, _LAYOUT, root)
    annotations = _files_by_stem(folder, ('.geojson',), _LAYOUT, root)
    images = _files_by_stem(folder, _IMAGE_SUFFIXES, _LAYOUT, root)
    if not annotations:
        raise _layout_error(f'no .geojson files in {folder}', _LAYOUT, root)
    _check_every_label_has_an_image(annotations, images, folder, _LAYOUT, root)
    for stem, image_path in images.items():
        if stem not in annotations:
            raise _layout_error(f'missing annotation {folder / stem}.geojson for image {image_path}', _LAYOUT, root)
    samples = []
    for stem, geojson_path in annotations.items():
        objects = _read_objects(geojson_path, type_ids)
        samples += _samples(stem, images[stem], geojson_path, objects, type_ids is not None)
    return samples


# ---------------------------------------------------------------------------------------------
# Reading the objects


def _read_objects(path: Path, type_ids: dict[str, int] | None) -> _Objects:
    document = _read(path, 'the GeoJSON', lambda p: json.loads(p.read_text(encoding='utf-8')))
    if isinstance(document, dict) and document.get('type') == 'FeatureCollection':
        features = document.get('features')
    elif isinstance(document, dict) and document.get('type') == 'Feature':
        features = [document]
    else:
        features = document  # QuPath's "export as list" writes a bare array of features
    if not isinstance(features, list):
        raise DatasetLayoutError(
            f'{path}: expected a GeoJSON FeatureCollection or a list of features (QuPath: File > Export objects '
            f'as GeoJSON), got {type(document).__name__}'
        )
    objects = _Objects(nuclei=[], types=[], regions=[])
    unknown: dict[str, int] = {}
    unclassified = []
    for number, feature in enumerate(features, start=1):
        where = f'{path}: feature {number}'
        if not isinstance(feature, dict) or not isinstance(feature.get('geometry'), dict):
            raise DatasetLayoutError(f'{where} is not a GeoJSON Feature with a geometry')
        properties = feature.get('properties') or {}
        if not isinstance(properties, dict):
            raise DatasetLayoutError(f'{where}: "properties" must be an object')
        object_type = properties.get('objectType', properties.get('object_type', 'detection'))
        class_name = _class_name(properties.get('classification'), where)
        if object_type in _SKIPPED_OBJECT_TYPES or class_name in _SKIPPED_CLASSES:
            continue
        if object_type == 'annotation' and class_name in REGION_CLASSES:
            objects.regions.append(_polygons(feature['geometry'], where))
            continue
        geometry = feature['geometry']
        if object_type == 'cell' and isinstance(feature.get('nucleusGeometry'), dict):
            geometry = feature['nucleusGeometry']
        objects.nuclei.append(_polygons(geometry, where))
        if type_ids is None:
            objects.types.append(0)
        elif class_name is None:
            unclassified.append(number)
        elif class_name not in type_ids:
            unknown[class_name] = unknown.get(class_name, 0) + 1
        else:
            objects.types.append(type_ids[class_name])
    if unknown:
        counts = ', '.join(f'{name!r} ({count} nuclei)' for name, count in sorted(unknown.items()))
        raise DatasetLayoutError(
            f'{path}: classes not among the types {list(type_ids)}: {counts}; add them to --types (task.args.types)'
        )
    if unclassified:
        shown = ', '.join(str(n) for n in unclassified[:5]) + (', ...' if len(unclassified) > 5 else '')
        raise DatasetLayoutError(
            f'{path}: {len(unclassified)} nuclei have no classification (features {shown}); classify them in '
            f'QuPath, or read the file without --types'
        )
    return objects


def _class_name(classification: Any, where: str) -> str | None:
    """QuPath's class name: ``{"name": ...}``, or ``{"names": [...]}`` for a derived class (``Tumor: Positive``)."""
    if classification is None:
        return None
    if isinstance(classification, dict):
        if isinstance(classification.get('name'), str):
            return classification['name']
        names = classification.get('names')
        if isinstance(names, list) and names and all(isinstance(name, str) for name in names):
            return ': '.join(names)
    raise DatasetLayoutError(f'{where}: "classification" must be an object with a "name", got {classification!r}')


def _polygons(geometry: dict, where: str) -> list[Polygon]:
    """The polygons of a GeoJSON ``Polygon`` or ``MultiPolygon`` as rings of ``[x, y]`` points."""
    kind, coordinates = geometry.get('type'), geometry.get('coordinates')
    if kind not in ('Polygon', 'MultiPolygon'):
        raise DatasetLayoutError(
            f'{where} is a {kind}: nuclei and regions must be Polygon or MultiPolygon outlines; delete it in QuPath '
            f'or classify it Ignore*'
        )
    try:
        polygons = [coordinates] if kind == 'Polygon' else list(coordinates)
        rings = [[np.asarray(ring, dtype=np.float64) for ring in polygon] for polygon in polygons]
    except (TypeError, ValueError) as error:
        raise DatasetLayoutError(f'{where}: {kind} coordinates are not lists of [x, y] numbers') from error
    for polygon in rings:
        if not polygon or any(ring.ndim != 2 or ring.shape[1] < 2 or not np.isfinite(ring).all() for ring in polygon):
            raise DatasetLayoutError(f'{where}: {kind} coordinates are not lists of finite [x, y] numbers')
    return [[ring[:, :2] for ring in polygon] for polygon in rings]


# ---------------------------------------------------------------------------------------------
# Samples


def _samples(stem: str, image_path: Path, geojson_path: Path, objects: _Objects, typed: bool) -> list[NucleiSample]:
    with open_slide(image_path) as slide:
        width, height = slide.level_dimensions[0]
        if objects.regions:
            boxes = [
                _region_box(region, width, height, f'{geojson_path}: region {k}')
                for k, region in enumerate(objects.regions, start=1)
            ]
        elif width * height > max_image_pixels():
            raise DatasetLayoutError(
                f'{image_path} is {width}x{height} pixels, too large to read whole: draw annotation regions in '
                f'QuPath classified as one of {list(REGION_CLASSES)} (only they become samples), or raise '
                f'$ZOO_MAX_IMAGE_PIXELS'
            )
        else:
            boxes = [(0, 0, height, width)]
        # [xmin, ymin, xmax, ymax] of every nucleus, to paint only those that reach into a box
        extents = np.array(
            [
                [*np.min([p[0].min(axis=0) for p in n], axis=0), *np.max([p[0].max(axis=0) for p in n], axis=0)]
                for n in objects.nuclei
            ]
        ).reshape(-1, 4)
        origin_x, origin_y = slide.origin
        samples = []
        for index, (top, left, bottom, right) in enumerate(boxes):
            image = np.array(slide.read(0, left + origin_x, top + origin_y, right - left, bottom - top))
            inst_map = np.zeros(image.shape[:2], np.int32)
            type_map = np.zeros(image.shape[:2], np.int32) if typed else None
            reaching = (
                (extents[:, 0] < right) & (extents[:, 2] > left) & (extents[:, 1] < bottom) & (extents[:, 3] > top)
            )
            for nucleus in np.flatnonzero(reaching):  # in file order: a later nucleus takes shared pixels
                rows, cols = _pixels(objects.nuclei[nucleus], (top, left), inst_map.shape)
                inst_map[rows, cols] = nucleus + 1
                if type_map is not None:
                    type_map[rows, cols] = objects.types[nucleus]
            if objects.regions:  # what lies in the box but outside the region is blanked
                outside = np.ones(inst_map.shape, bool)
                outside[_pixels(objects.regions[index], (top, left), inst_map.shape)] = False
                for array in (image, inst_map, type_map):
                    if array is not None:
                        array[outside] = 0
            name = f'{stem}_region{index + 1}' if objects.regions else stem
            samples.append(NucleiSample(name, image, inst_map, type_map))
    return samples


def _region_box(region: list[Polygon], width: int, height: int, where: str) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)``: the pixels whose centres the region's outlines can cover, in the image."""
    points = np.concatenate([polygon[0] for polygon in region])
    (xmin, ymin), (xmax, ymax) = points.min(axis=0), points.max(axis=0)
    top, bottom = max(math.ceil(ymin - 0.5), 0), min(math.ceil(ymax - 0.5), height)
    left, right = max(math.ceil(xmin - 0.5), 0), min(math.ceil(xmax - 0.5), width)
    if top >= bottom or left >= right:
        raise DatasetLayoutError(f'{where} covers no pixel of the {width}x{height} image')
    return top, left, bottom, right


def _pixels(polygons: list[Polygon], offset: tuple[int, int], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``rows, cols`` covered by the polygons, in a box of ``shape`` whose top-left pixel is ``offset`` (row, col)."""
    shift = np.array([offset[1], offset[0]], np.float64)
    pixels = [polygon_pixels([ring - shift for ring in polygon], shape) for polygon in polygons]
    return np.concatenate([rows for rows, _ in pixels]), np.concatenate([cols for _, cols in pixels])
