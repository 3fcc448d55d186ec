"""The MoNuSAC reader on SYNTHETIC images with ImageScope XML written in the challenge's format (one Annotation per
type, its Attribute Name the type, Regions of Vertices). The release's images are single-level .svs; these are
.tif and .png, which the same slide reader opens. None of it is MoNuSAC data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from _segment_oracle import evaluate_refusal
from PIL import Image
from skimage.draw import polygon

from training.data import MONUSAC_TYPE_NAMES, DatasetLayoutError, load_monusac
from training.segmentation import NucleiSegmentationTask

REGIONS = {  # type: outlines [x, y]; later ones are drawn over earlier ones
    'Epithelial': [[(4, 4), (14, 4), (14, 12), (4, 12)], [(30, 30), (38, 26), (40, 36)]],
    'Lymphocyte': [[(12, 10), (20, 10), (20, 18), (12, 18)]],
    'Macrophage': [[(40, 4), (46, 4), (46, 9)]],
    'Ambiguous': [[(0, 30), (10, 30), (10, 40), (0, 40)]],
}


def annotation_xml(regions: dict) -> str:
    annotations = []
    for number, (name, outlines) in enumerate(regions.items(), start=1):
        region_xml = ''.join(
            f'<Region Id="{k}" Type="0"><Attributes/><Vertices>'
            + ''.join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in outline)
            + '</Vertices></Region>'
            for k, outline in enumerate(outlines, start=1)
        )
        annotations.append(
            f'<Annotation Id="{number}" Name="" ReadOnly="0" LineColor="65280" Visible="1">'
            f'<Attributes><Attribute Name="{name}" Id="0" Value=""/></Attributes>'
            f'<Regions><RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>'
            f'</RegionAttributeHeaders>{region_xml}</Regions><Plots/></Annotation>'
        )
    return f'<?xml version="1.0"?><Annotations MicronsPerPixel="0.252100">{"".join(annotations)}</Annotations>'


def write_monusac(root: Path, split: str, patient: str, name: str, suffix: str = '.tif', seed: int = 0) -> np.ndarray:
    folder = root / split / patient
    folder.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(1, 256, (44, 52, 3), dtype=np.uint8)
    if suffix == '.tif':
        tifffile.imwrite(folder / f'{name}.tif', image)
    else:
        Image.fromarray(image).save(folder / f'{name}{suffix}')
    (folder / f'{name}.xml').write_text(annotation_xml(REGIONS))
    return image


def test_types_and_ambiguous_areas(tmp_path):
    image = write_monusac(tmp_path, 'test', 'TCGA-55-1594-01Z-00-DX1', 'TCGA-55-1594-01Z-00-DX1_001')
    write_monusac(tmp_path, 'test', 'TCGA-69-7760-01Z-00-DX1', 'TCGA-69-7760-01Z-00-DX1_002', '.png', seed=1)
    first, second = load_monusac(tmp_path, 'test')
    assert (first.name, second.name) == ('TCGA-55-1594-01Z-00-DX1_001', 'TCGA-69-7760-01Z-00-DX1_002')
    # What the organisers' mask code draws: skimage.draw.polygon(Y, X), in file order.
    inst, types, ambiguous = np.zeros((44, 52), int), np.zeros((44, 52), int), np.zeros((44, 52), bool)
    inst_id = 0
    for name, outlines in REGIONS.items():
        for outline in outlines:
            inst_id += 1
            xy = np.array(outline, float)
            rows, cols = polygon(xy[:, 1], xy[:, 0], shape=(44, 52))
            if name == 'Ambiguous':
                ambiguous[rows, cols] = True
            else:
                inst[rows, cols], types[rows, cols] = inst_id, MONUSAC_TYPE_NAMES.index(name.lower())
    inst[ambiguous] = types[ambiguous] = 0
    np.testing.assert_array_equal(first.image, np.where(ambiguous[..., None], 0, image))
    np.testing.assert_array_equal(first.inst_map, inst)
    np.testing.assert_array_equal(first.type_map, types)
    assert set(np.unique(first.type_map)) == {0, 1, 2, 4}
    task = NucleiSegmentationTask('monusac', str(tmp_path), num_types=5)
    assert task.type_names() == list(MONUSAC_TYPE_NAMES) and len(task.split_samples('test')) == 2


def _malformed(root: Path, kind: str) -> str:
    write_monusac(root, 'test', 'P1', 'P1_001')
    folder = root / 'test' / 'P1'
    xml = folder / 'P1_001.xml'
    if kind == 'missing split folder':
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir(), (root / 'test').rmdir()
        return f'missing directory {root / "test"}; expected layout'
    if kind == 'empty split folder':
        for path in folder.iterdir():
            path.unlink()
        return f'no annotated images in {root / "test"}/<patient>/; expected layout'
    if kind == 'image without annotation':
        xml.unlink()
        return f'missing annotation {xml} for image {folder / "P1_001.tif"}'
    if kind == 'annotation without image':
        (folder / 'P1_001.tif').unlink()
        return f'{xml} has no image {folder / "P1_001"}.* to go with it'
    if kind == 'unparsable XML':
        xml.write_text('<Annotations><Annotation>')
        return f'{xml}: cannot read the XML annotation (ParseError'
    if kind == 'another root':
        xml.write_text('<Regions/>')
        return f'{xml}: expected Annotations/Annotation/Regions/Region/Vertices/Vertex, the root element is <Regions>'
    if kind == 'annotation without a name':
        xml.write_text(annotation_xml(REGIONS).replace('<Attribute Name="Lymphocyte" Id="0" Value=""/>', ''))
        return f'{xml}: an Annotation is named None; MoNuSAC names Epithelial, Lymphocyte'
    if kind == 'unknown type':
        xml.write_text(annotation_xml({'Tumour': REGIONS['Epithelial']}))
        return f"{xml}: an Annotation is named 'Tumour'; MoNuSAC names Epithelial, Lymphocyte"
    if kind == 'vertex without numbers':
        xml.write_text(annotation_xml(REGIONS).replace('X="14" Y="4"', 'X="fourteen" Y="4"'))
        return f'{xml}: Region 1 has a Vertex without numeric X/Y'
    if kind in ('vertex nan', 'vertex far outside'):
        value = 'nan' if kind == 'vertex nan' else '1e12'
        xml.write_text(annotation_xml(REGIONS).replace('X="14" Y="4"', f'X="{value}" Y="4"'))
        return f'{xml}: Region 1 has a Vertex at {float(value):g}; coordinates are finite pixels, at most 10,000,000'
    (folder / 'P1_001.tif').write_bytes(b'II*\x00 truncated')  # an unreadable image
    return f'{folder / "P1_001.tif"}: unreadable TIFF'


KINDS = [
    'missing split folder',
    'empty split folder',
    'image without annotation',
    'annotation without image',
    'unparsable XML',
    'another root',
    'annotation without a name',
    'unknown type',
    'vertex without numbers',
    'vertex nan',
    'vertex far outside',
    'unreadable image',
]


@pytest.mark.parametrize('kind', KINDS)
def test_malformed_files_are_one_line_and_exit_2(tmp_path, capsys, run, kind):
    message = _malformed(tmp_path, kind)
    assert evaluate_refusal(capsys, run, 'monusac', tmp_path).startswith(message)
    with pytest.raises(DatasetLayoutError):
        load_monusac(tmp_path, 'test')
