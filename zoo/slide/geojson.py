"""Writing nuclei: GeoJSON that QuPath imports (one detection per nucleus) and the same nuclei as CSV rows."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import numpy as np
from skimage.measure import find_contours

from ..hovernet.postprocess import fill_holes
from ..io import atomic_file
from .nuclei import Nucleus
from .reading import Slide
from .resolution import Resolution
from .store import NucleusStore
from .tiles import TileGrid

TYPE_COLOURS = [(128, 128, 128), (255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (255, 128, 0), (0, 200, 200)]


def nucleus_polygon(nucleus: Nucleus) -> np.ndarray:
    """The nucleus outline as a closed ``N x 2`` ``[x, y]`` ring on pixel edges (working-image pixels,
    pixel ``(r, c)`` covering ``[c, c + 1) x [r, r + 1)``), counter-clockwise on screen.

    Marching squares on the hole-filled mask never crosses itself, so the ring is a valid polygon;
    collinear points are dropped.
    """
    mask = np.zeros((nucleus.mask.shape[0] + 2, nucleus.mask.shape[1] + 2), np.float32)  # a frame of background
    mask[1:-1, 1:-1] = fill_holes(nucleus.mask)
    contours = find_contours(mask, 0.5)
    ring = max(contours, key=len)[:, ::-1] + (nucleus.bbox[1] - 0.5, nucleus.bbox[0] - 0.5)  # [x, y]
    previous, following = np.roll(ring[:-1], 1, axis=0), np.roll(ring[:-1], -1, axis=0)
    cross = (ring[:-1, 0] - previous[:, 0]) * (following[:, 1] - ring[:-1, 1]) - (ring[:-1, 1] - previous[:, 1]) * (
        following[:, 0] - ring[:-1, 0]
    )
    ring = ring[:-1][np.abs(cross) > 1e-9]
    ring = np.vstack([ring, ring[:1]])
    signed_area = np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
    return ring if signed_area < 0 else ring[::-1]  # y points down: negative shoelace is counter-clockwise


def write_nuclei(
    store: NucleusStore,
    grid: TileGrid,
    resolution: Resolution,
    slide: Slide,
    type_names: list[str] | None,
    geojson_path: Path,
    csv_path: Path,
) -> int:
    """Stream the kept nuclei, tile by tile, into the GeoJSON and CSV files; returns their number."""
    factor, (origin_x, origin_y) = resolution.downsample, slide.origin
    area_unit = (resolution.mpp or 1.0) ** 2
    area_name = 'Area µm^2' if resolution.mpp else 'Area px^2'
    slide_name = Path(slide.path).name
    count = 0
    with atomic_file(geojson_path) as geo, atomic_file(csv_path) as table_file:
        table_text = io.TextIOWrapper(table_file, encoding='utf-8', newline='')
        table = csv.writer(table_text)
        table.writerow(
            [
                'id',
                'centroid_x',
                'centroid_y',
                'area_um2' if resolution.mpp else 'area_px',
                'type',
                'type_name',
                'type_prob',
            ]
        )
        geo.write(b'{"type": "FeatureCollection", "features": [')
        for index in range(len(grid)):
            for nucleus in store.nuclei(index):
                count += 1
                ring = nucleus_polygon(nucleus) * factor - (origin_x, origin_y)
                centroid = (nucleus.centroid + 0.5) * factor - (origin_x, origin_y)  # pixel centre, level 0
                area = nucleus.area * area_unit
                measurements = {
                    area_name: round(area, 3),
                    'Centroid X px': round(centroid[0], 2),
                    'Centroid Y px': round(centroid[1], 2),
                }
                properties = {'objectType': 'detection', 'name': f'Nucleus {count}'}
                name = None
                if type_names is not None and nucleus.type is not None:
                    name = type_names[nucleus.type]
                    colour = TYPE_COLOURS[nucleus.type % len(TYPE_COLOURS)]
                    properties['classification'] = {'name': name, 'color': list(colour)}
                    measurements['Type probability'] = round(float(nucleus.type_prob), 4)
                properties['measurements'] = measurements
                feature = {
                    'type': 'Feature',
                    'id': str(uuid.uuid5(uuid.NAMESPACE_URL, f'{slide_name}#{count}')),  # QuPath reads UUIDs
                    'geometry': {'type': 'Polygon', 'coordinates': [np.round(ring, 2).tolist()]},
                    'properties': properties,
                }
                geo.write((',\n' if count > 1 else '\n').encode() + json.dumps(feature, allow_nan=False).encode())
                table.writerow(
                    [
                        count,
                        f'{centroid[0]:.2f}',
                        f'{centroid[1]:.2f}',
                        f'{area:.3f}',
                        '' if nucleus.type is None else nucleus.type,
                        name or '',
                        '' if nucleus.type_prob is None else f'{nucleus.type_prob:.4f}',
                    ]
                )
        geo.write(b'\n]}\n')
        table_text.flush()
        table_text.detach()
    return count
