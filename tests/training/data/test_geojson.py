"""QuPath GeoJSON as nuclei labels (training.data.load_geojson): objects, types, regions of slides, every malformed
file as one line and exit 2, and the round trip of the zoo's own GeoJSON of the stardist slide.

Every GeoJSON here is written by the test in QuPath's export format (FeatureCollection or bare list, objectType,
classification, nucleusGeometry); the images are random pixels or the stardist sample (fluorescence, real
annotations, but the labels compared are the zoo's own output, not ground truth).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _segment_oracle import tiny_run
from PIL import Image

from training.cli import main
from training.data import DatasetLayoutError, load_geojson, load_stardist_sample


def square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(geometry: dict, object_type: str = 'detection', name: str | None = None, **extra) -> dict:
    properties = {'objectType': object_type}
    if name is not None:
        properties['classification'] = {'name': name, 'color': [255, 0, 0]}
    return {'type': 'Feature', 'geometry': geometry, 'properties': properties, **extra}


def polygon(*rings) -> dict:
    return {'type': 'Polygon', 'coordinates': list(rings)}


def write(folder: Path, stem: str, image: np.ndarray, features, collection: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f'{stem}.png')
    document = {'type': 'FeatureCollection', 'features': features} if collection else features
    (folder / f'{stem}.geojson').write_text(json.dumps(document))


IMAGE = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
OBJECTS = [
    feature(polygon(square(2, 2, 6, 6)), name='Tumor'),  # pixels rows 2-5, cols 2-5
    feature(  # a cell: its nucleus, not its outline
        polygon(square(9, 1, 15, 7)),
        'cell',
        'Lymphocyte',
        nucleusGeometry=polygon(square(10, 2, 13, 5)),
    ),
    {  # a hand-drawn annotation: a MultiPolygon, its first part with a hole; a derived class (QuPath 0.6)
        'type': 'Feature',
        'geometry': {
            'type': 'MultiPolygon',
            'coordinates': [[square(2, 10, 8, 16), square(4, 12, 6, 14)], [square(14, 10, 16, 12)]],
        },
        'properties': {'objectType': 'annotation', 'classification': {'names': ['Tumor', 'Positive']}},
    },
    feature(polygon(square(5, 5, 8, 8)), name='Tumor'),  # drawn over the first: takes the shared pixels
    feature(polygon(square(0, 0, 24, 20)), 'annotation', 'Ignore*'),  # skipped
]


def expected_maps() -> tuple[np.ndarray, np.ndarray]:
    inst, types = np.zeros((20, 24), np.int32), np.zeros((20, 24), np.int32)
    inst[2:6, 2:6], types[2:6, 2:6] = 1, 1
    inst[2:5, 10:13], types[2:5, 10:13] = 2, 2
    inst[10:16, 2:8], types[10:16, 2:8] = 3, 3
    inst[12:14, 4:6], types[12:14, 4:6] = 0, 0  # the hole
    inst[10:12, 14:16], types[10:12, 14:16] = 3, 3
    inst[5:8, 5:8], types[5:8, 5:8] = 4, 1
    return inst, types


@pytest.mark.parametrize('collection', [True, False], ids=['FeatureCollection', 'list'])
def test_qupath_objects_become_nuclei_with_types(tmp_path, collection):
    write(tmp_path, 'a', IMAGE, OBJECTS, collection)
    (sample,) = load_geojson(tmp_path, types=['Tumor', 'Lymphocyte', 'Tumor: Positive'])
    inst, types = expected_maps()
    assert sample.name == 'a' and np.array_equal(sample.image, IMAGE)
    np.testing.assert_array_equal(sample.inst_map, inst)
    np.testing.assert_array_equal(sample.type_map, types)
    (untyped,) = load_geojson(tmp_path)  # without types, classes are not read
    assert untyped.type_map is None and np.array_equal(untyped.inst_map, inst)


def test_regions_of_a_slide_become_samples(tmp_path):
    """A pyramidal OME-TIFF with a rectangle and a triangle region: only they become samples; what lies in the
    triangle's box but outside it is blacked out, nuclei are clipped to their region, and a nucleus outside
    every region appears nowhere."""
    slide = np.random.default_rng(1).integers(1, 256, (64, 64, 3), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / 's.ome.tif', ome=True) as writer:
        writer.write(slide, subifds=1, metadata={'axes': 'YXS'}, tile=(32, 32))
        writer.write(slide[::2, ::2], subfiletype=1, tile=(32, 32))
    features = [
        feature(polygon(square(8, 8, 40, 32)), 'annotation', 'Region*'),
        feature(polygon(square(12, 12, 16, 16))),  # inside the rectangle
        feature(polygon(square(36, 28, 44, 36))),  # across its corner: clipped
        feature(polygon(square(2, 50, 6, 54))),  # outside every region
        feature(polygon([[40, 40], [60, 40], [40, 60], [40, 40]]), 'annotation', 'Training'),
        feature(polygon(square(44, 44, 52, 52))),  # across the triangle's long side
    ]
    (tmp_path / 's.ome.geojson').write_text(json.dumps({'type': 'FeatureCollection', 'features': features}))
    rectangle, triangle = load_geojson(tmp_path)
    assert (rectangle.name, triangle.name) == ('s.ome_region1', 's.ome_region2')
    np.testing.assert_array_equal(rectangle.image, slide[8:32, 8:40])
    expected = np.zeros((24, 32), np.int32)
    expected[4:8, 4:8] = 1  # nucleus ids are their places among the file's nuclei
    expected[20:24, 28:32] = 2
    np.testing.assert_array_equal(rectangle.inst_map, expected)
    # The triangle (40,40)-(60,40)-(40,60) holds the pixel centres with x + y < 100 - 1 (row, col from 40).
    rows, cols = np.mgrid[40:60, 40:60]
    inside = (cols + 0.5) + (rows + 0.5) < 100
    np.testing.assert_array_equal(triangle.image, np.where(inside[..., None], slide[40:60, 40:60], 0))
    nucleus = (rows >= 44) & (rows < 52) & (cols >= 44) & (cols < 52) & inside
    np.testing.assert_array_equal(triangle.inst_map, np.where(nucleus, 4, 0))


def test_train_and_val_split_like_a_folder(tmp_path):
    for stem in 'abcde':
        write(tmp_path, stem, IMAGE, OBJECTS[:1])
    train, val = load_geojson(tmp_path, 'train'), load_geojson(tmp_path, 'val')
    assert len(val) == 1 and sorted(s.name for s in train + val) == list('abcde')
    write(tmp_path / 'presplit' / 'train', 'a', IMAGE, OBJECTS[:1])
    write(tmp_path / 'presplit' / 'val', 'b', IMAGE, OBJECTS[:1])
    assert [s.name for s in load_geojson(tmp_path / 'presplit', 'val')] == ['b']


def _malformed(folder: Path, kind: str) -> tuple[list[str], str]:
    """A dataset folder with one malformed thing of ``kind``; the extra arguments and the expected message."""
    geojson = folder / 'a.geojson'
    write(folder, 'a', IMAGE, OBJECTS[:1])
    types = []
    if kind == 'not JSON':
        geojson.write_text('{"type": "FeatureCollection", "features": [')
        message = f'{geojson}: cannot read the GeoJSON (JSONDecodeError'
    elif kind == 'not features':
        geojson.write_text('{"type": "Topology"}')
        message = f'{geojson}: expected a GeoJSON FeatureCollection or a list of features'
    elif kind == 'no geometry':
        geojson.write_text(json.dumps([{'type': 'Feature', 'properties': {}}]))
        message = f'{geojson}: feature 1 is not a GeoJSON Feature with a geometry'
    elif kind == 'point':
        geojson.write_text(json.dumps([feature({'type': 'Point', 'coordinates': [3, 4]})]))
        message = f'{geojson}: feature 1 is a Point: nuclei and regions must be Polygon or MultiPolygon outlines'
    elif kind == 'bad coordinates':
        geojson.write_text(json.dumps([feature({'type': 'Polygon', 'coordinates': [[[1, 'x'], [2, 3]]]})]))
        message = f'{geojson}: feature 1: Polygon coordinates are not lists of [x, y] numbers'
    elif kind == 'bad classification':
        geojson.write_text(json.dumps([{**feature(polygon(square(1, 1, 3, 3))), 'properties': {'classification': 7}}]))
        message = f'{geojson}: feature 1: "classification" must be an object with a "name", got 7'
    elif kind == 'unknown class':
        types = ['--types', 'Stroma,Immune cells']
        message = f"{geojson}: classes not among the types ['Stroma', 'Immune cells']: 'Tumor' (1 nuclei); add"
    elif kind == 'unclassified':
        geojson.write_text(json.dumps([feature(polygon(square(1, 1, 3, 3)))]))
        types = ['--types', 'Tumor']
        message = f'{geojson}: 1 nuclei have no classification (features 1); classify them in QuPath'
    elif kind == 'annotation without image':
        (folder / 'a.png').unlink()
        message = f'{geojson} has no image {folder / "a"}.* to go with it'
    elif kind == 'image without annotation':
        Image.fromarray(IMAGE).save(folder / 'b.png')
        message = f'missing annotation {folder / "b.geojson"} for image {folder / "b.png"}'
    elif kind == 'region outside the image':
        geojson.write_text(json.dumps([feature(polygon(square(30, 30, 40, 40)), 'annotation', 'Region*')]))
        message = f'{geojson}: region 1 covers no pixel of the 24x20 image'
    else:  # a slide too large to read whole, without regions
        (folder / 'a.png').unlink()
        tifffile.imwrite(folder / 'a.tif', IMAGE)
        types = ['ZOO_MAX_IMAGE_PIXELS=100']
        message = f'{folder / "a.tif"} is 24x20 pixels, too large to read whole: draw annotation regions'
    return types, message


@pytest.mark.parametrize(
    'kind',
    [
        'not JSON',
        'not features',
        'no geometry',
        'point',
        'bad coordinates',
        'bad classification',
        'unknown class',
        'unclassified',
        'annotation without image',
        'image without annotation',
        'region outside the image',
        'too large',
    ],
)
def test_malformed_files_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, run, kind):
    extra, message = _malformed(tmp_path / 'data', kind)
    if extra and extra[0].startswith('ZOO_MAX_IMAGE_PIXELS='):
        monkeypatch.setenv('ZOO_MAX_IMAGE_PIXELS', extra.pop().partition('=')[2])
    if extra:  # --types: a model with as many types
        run = tiny_run(tmp_path / 'typed', num_types=len(extra[1].split(',')) + 1)
    args = ['evaluate', str(run), '--dataset', 'geojson', '--data-dir', str(tmp_path / 'data')]
    assert main([*args, '--out', str(tmp_path / 'out'), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'zoo evaluate: error: {message}'), err
    with pytest.raises(DatasetLayoutError):
        load_geojson(tmp_path / 'data', types=extra[1].split(',') if extra else None)


def test_the_zoos_own_geojson_reads_back_as_its_label_image(tmp_path, capsys):
    """The round trip: `zoo segment-slide --label-image` of the stardist sample written as a slide, its GeoJSON
    read back by load_geojson: the same ids on the same pixels, every nucleus."""
    slide = tmp_path / 'stardist.ome.tif'
    tifffile.imwrite(slide, load_stardist_sample().image, ome=True, metadata={'axes': 'YXS'})
    out = tmp_path / 'out'
    assert main(['segment-slide', 'mrl_seg_nano.stardist', str(slide), '--out', str(out), '--label-image']) == 0
    assert 'warning' in capsys.readouterr().err  # the model and the file do not state a resolution
    with tifffile.TiffFile(out / 'stardist.ome_labels.ome.tif') as tif:
        labels = tif.series[0].levels[0].asarray()
    annotated = tmp_path / 'annotated'
    annotated.mkdir()
    shutil.copy(slide, annotated)
    shutil.copy(out / 'stardist.ome.geojson', annotated)
    (sample,) = load_geojson(annotated)
    count = len(json.loads((out / 'stardist.ome.geojson').read_text())['features'])
    assert count > 100 and labels.max() == count and np.unique(labels).size == count + 1
    np.testing.assert_array_equal(sample.inst_map, labels)
