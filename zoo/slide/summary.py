"""What a cohort's slides came to: per-slide figures, a QC thumbnail per slide, and the cohort table (CSV).

Each slide's figures are kept in ``<stem>.slide.json`` (its record, written by :mod:`.cohort` once the slide's
outputs are complete); the cohort table ``cohort.csv`` is made from the records alone, so it can be remade at
any time (:func:`write_cohort_summary`). CSV only: Parquet would need ``pyarrow``, which the zoo does not depend on.
"""

from __future__ import annotations

import csv
import io
import json
from array import array
from pathlib import Path

import cv2
import numpy as np

from ..io import atomic_write_bytes
from .errors import SlideError
from .reading import open_slide
from .tissue import THUMBNAIL_SIZE, tissue_mask
from .whole_slide import SlideResult

SUMMARY_NAME = 'cohort.csv'
RECORD_SUFFIX = '.slide.json'
QC_SUFFIX = '.qc.png'
HEAT_MAP_CELLS = 48  # density cells along the thumbnail's longer side...
MIN_CELL = 128  # ...of at least this many level-0 pixels (a few nuclei per cell on small slides)
OUTLINE_RGB = (0, 230, 0)
# The table's columns; per-type counts (``nuclei_<type>``, typed models only) go after ``median_nucleus_px2``.
FIRST_COLUMNS = (
    'slide',
    'status',
    'reason',
    'nuclei',
    'tissue_mm2',
    'nuclei_per_mm2',
    'median_nucleus_um2',
    'tissue_px2',
    'median_nucleus_px2',
)
LAST_COLUMNS = ('seconds', 'megapixels_per_s', 'model', 'model_sha256', 'parameters')


def slide_figures(slide_path: Path, result: SlideResult, type_names: list[str] | None = None) -> dict:
    """A segmented slide's figures for the table, from its nuclei CSV and its thumbnail; writes the QC thumbnail.

    Tissue is the mask :func:`tissue_mask` finds on the thumbnail tile selection uses (the whole slide for grey
    slides, which have none), in level-0 pixels and, when the resolution is known, mm². Nucleus areas are those
    of the nuclei CSV: µm² when the resolution is known, else pixels. Nuclei are counted per type of
    ``type_names`` (the model's), none left out.
    """
    with open_slide(slide_path) as slide:
        thumbnail = slide.thumbnail(THUMBNAIL_SIZE)
        (width, height), (origin_x, origin_y) = slide.level_dimensions[0], slide.origin
    mask = tissue_mask(thumbnail)
    tissue = np.ones(thumbnail.shape[:2], bool) if mask is None else mask
    thumb_height, thumb_width = thumbnail.shape[:2]
    per_x, per_y = width / thumb_width, height / thumb_height  # level-0 pixels per thumbnail pixel
    tissue_px2 = float(tissue.sum()) * per_x * per_y
    level0_mpp = result.resolution.mpp / result.resolution.downsample if result.resolution.mpp else None

    cell = max(1, round(max(thumb_height, thumb_width) / HEAT_MAP_CELLS), round(MIN_CELL / per_x))  # thumbnail px
    counts = np.zeros((-(-thumb_height // cell), -(-thumb_width // cell)))
    areas = array('d')  # 8 bytes a nucleus, for the median
    with open(result.csv, newline='', encoding='utf-8') as file:
        rows = csv.DictReader(file)
        area_column = 'area_um2' if 'area_um2' in rows.fieldnames else 'area_px'
        type_counts = dict.fromkeys(type_names or (), 0)
        for row in rows:
            x = (float(row['centroid_x']) + origin_x) / per_x  # the CSV's are relative to the slide's origin
            y = (float(row['centroid_y']) + origin_y) / per_y
            if 0 <= x < thumb_width and 0 <= y < thumb_height:
                counts[int(y // cell), int(x // cell)] += 1
            areas.append(float(row[area_column]))
            if row['type_name']:
                type_counts[row['type_name']] = type_counts.get(row['type_name'], 0) + 1
    median_area = round(float(np.median(areas)), 3) if areas else None
    tissue_mm2 = tissue_px2 * level0_mpp**2 / 1e6 if level0_mpp else None
    cell_mm2 = cell**2 * per_x * per_y * level0_mpp**2 / 1e6 if level0_mpp else None

    qc_path = result.csv.with_name(result.csv.stem + QC_SUFFIX)
    write_qc_thumbnail(qc_path, thumbnail, mask, counts, cell, cell_mm2, cell * per_x)
    return dict(
        nuclei=result.num_nuclei,
        tissue_mm2=float(f'{tissue_mm2:.6g}') if tissue_mm2 else None,
        nuclei_per_mm2=round(result.num_nuclei / tissue_mm2, 1) if tissue_mm2 else None,
        median_nucleus_um2=median_area if area_column == 'area_um2' else None,
        tissue_px2=round(tissue_px2),
        median_nucleus_px2=median_area if area_column == 'area_px' else None,
        type_counts=type_counts,
        qc=qc_path,
    )


def write_qc_thumbnail(
    path: Path,
    thumbnail: np.ndarray,
    mask: np.ndarray | None,
    counts: np.ndarray,
    cell: int,
    cell_mm2: float | None,
    cell_level0_px: float,
) -> None:
    """The thumbnail with the tissue mask's outline (green) and the nuclei density as a heat map (inferno, blended
    where there are nuclei), a colour bar with its scale below; PNG, written atomically.

    ``counts`` are nuclei per square of ``cell`` thumbnail pixels (``cell_level0_px`` level-0 pixels, ``cell_mm2``
    mm² when the resolution is known); the scale is per mm², else per cell.
    """
    height, width = thumbnail.shape[:2]
    density = counts / cell_mm2 if cell_mm2 else counts
    top = density.max()
    colours = cv2.applyColorMap(np.round(density / (top or 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    size = (counts.shape[1] * cell, counts.shape[0] * cell)
    colours = cv2.resize(colours[..., ::-1], size, interpolation=cv2.INTER_NEAREST)[:height, :width]
    has_nuclei = np.kron(counts > 0, np.ones((cell, cell), bool))[:height, :width]
    image = thumbnail.copy()
    image[has_nuclei] = (0.4 * image[has_nuclei] + 0.6 * colours[has_nuclei]).round().astype(np.uint8)
    if mask is not None:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(image, contours, -1, OUTLINE_RGB, max(1, round(max(height, width) / 500)))

    bar = np.full((28, width, 3), 255, np.uint8)  # colour bar 0 -> max, labelled
    ramp = cv2.applyColorMap(np.linspace(0, 255, max(width // 3, 2)).astype(np.uint8)[None], cv2.COLORMAP_INFERNO)
    bar[2:12, : ramp.shape[1]] = ramp[0, :, ::-1]
    unit = 'nuclei/mm2' if cell_mm2 else f'nuclei per {cell_level0_px:.0f} px cell'
    label = f'0 - {top:.0f} {unit}; green: tissue'
    cv2.putText(bar, label, (2, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    _, png = cv2.imencode('.png', np.ascontiguousarray(np.concatenate([image, bar])[..., ::-1]))
    atomic_write_bytes(path, png.tobytes())


def read_records(out_dir: Path) -> list[dict]:
    """The slide records (``<stem>.slide.json``) of a cohort folder, in the order of their slides."""
    records = [json.loads(path.read_text(encoding='utf-8')) for path in Path(out_dir).glob(f'*{RECORD_SUFFIX}')]
    return sorted(records, key=lambda record: record['slide'])


def write_cohort_summary(out_dir: str | Path) -> tuple[Path, list[dict]]:
    """Write ``cohort.csv`` in ``out_dir`` from its slide records, atomically: one row per slide (see
    ``FIRST_COLUMNS``, per-type counts, ``LAST_COLUMNS``); returns its path and rows."""
    out_dir = Path(out_dir)
    records = read_records(out_dir)
    if not records:
        raise SlideError(f'{out_dir}: no slide records (*{RECORD_SUFFIX}) to summarise; segment_slides writes them')
    type_columns = list(dict.fromkeys(f'nuclei_{name}' for r in records for name in r.get('type_counts') or {}))
    rows = []
    for record in records:
        row = {key: record.get(key) for key in FIRST_COLUMNS + LAST_COLUMNS}
        row.update({f'nuclei_{name}': count for name, count in (record.get('type_counts') or {}).items()})
        row['parameters'] = json.dumps(record['parameters'], sort_keys=True)
        rows.append(row)
    text = io.StringIO()
    writer = csv.DictWriter(text, [*FIRST_COLUMNS, *type_columns, *LAST_COLUMNS], lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    path = out_dir / SUMMARY_NAME
    atomic_write_bytes(path, text.getvalue().encode('utf-8'))
    return path, rows
