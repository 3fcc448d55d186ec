"""Tiled inference on images (zoo.segment): blended maps, streaming instance segmentation, overlays."""

import tracemalloc

import numpy as np
import pytest
import tifffile
import timm
from _segment_oracle import PointwiseNet, disks, full_forward, oracle
from PIL import Image

import zoo
from zoo.hovernet.metrics import aji
from zoo.io import read_image
from zoo.segment import (
    blend_window,
    overlay,
    predict_instances,
    predict_maps,
    predict_to_overlay,
    tile_starts,
)


def test_tiles_cover_image_and_blend_weights_are_complementary():
    assert tile_starts(300, 128, 32) == [0, 96, 172]
    assert tile_starts(100, 128, 32) == [0]
    window = blend_window(128, 32)
    assert window.min() > 0 and window.max() == 1
    # Two tiles overlapping by exactly `overlap`: the weights of the shared pixels sum to 1.
    np.testing.assert_allclose(window[-32:] + window[:32], 1, atol=1e-6)


def test_tiled_equals_full_forward_when_image_fits_one_tile():
    model = timm.create_model('mrl_seg_nano', num_types=3).eval()
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    tiled, full = predict_maps(model, image, tile=128, overlap=32), full_forward(model, image)
    for key in ('np', 'hv', 'tp'):
        np.testing.assert_allclose(tiled[key], full[key], rtol=0, atol=1e-5)


def test_stitching_is_exact_for_a_pointwise_model():
    model = PointwiseNet(num_types=3)
    image = np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    tiled, full = predict_maps(model, image, tile=128, overlap=32, batch_size=3), full_forward(model, image)
    for key in ('np', 'hv', 'tp'):
        np.testing.assert_allclose(tiled[key], full[key], rtol=0, atol=1e-5)


def test_tiled_close_to_full_forward_for_mrl_seg():
    # Not exact: a tile's border pixels see zero padding instead of their neighbours and its regional
    # attention sees only the tile. Blending is convex, so the stitched maps stay close.
    model = timm.create_model('mrl_seg_nano').eval()
    image = np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    tiled, full = predict_maps(model, image, tile=128, overlap=32), full_forward(model, image)
    assert tiled['np'].shape == (300, 260) and tiled['hv'].shape == (2, 300, 260) and tiled['tp'] is None
    for key in ('np', 'hv'):
        difference = np.abs(tiled[key] - full[key])
        assert difference.mean() < 1e-3 and difference.max() < 0.05


def test_predict_instances_finds_each_blob():
    centres = [(20, 20), (20, 60), (60, 40), (150, 200), (240, 30)]
    image, truth = disks(260, 230, centres)
    inst_map, info = predict_instances(oracle(), image, tile=128, overlap=32)
    assert inst_map.dtype == np.int32 and inst_map.shape == (260, 230)
    assert inst_map.max() == len(centres) == len(info) and aji(truth, inst_map) > 0.95
    for inst_id, inst in info.items():
        rows, cols = np.nonzero(inst_map == inst_id)
        np.testing.assert_array_equal(inst['bbox'], [[rows.min(), cols.min()], [rows.max() + 1, cols.max() + 1]])
        np.testing.assert_allclose(inst['centroid'], [cols.mean(), rows.mean()])  # image coordinates, [x, y]
        assert (inst_map[inst['contour'][:, 1], inst['contour'][:, 0]] == inst_id).all()
        assert inst['type'] is None and inst['type_prob'] is None


def test_nuclei_on_tile_seams_are_found_once():
    # Tiles of 128 overlapping by 32 start at 0, 96, 192 and 272: disks on, beside and between every seam.
    assert tile_starts(400, 128, 32) == [0, 96, 192, 272]
    lines = [40, 96, 112, 127, 160, 192, 208, 223, 250, 272, 288, 303, 360]
    centres = [(row, col) for row in lines for col in lines]
    image, truth = disks(400, 400, centres)
    inst_map, info = predict_instances(oracle(), image, tile=128, overlap=32)
    assert len(info) == len(centres) == inst_map.max()
    matched = {int(np.bincount(truth[inst_map == inst_id]).argmax()) for inst_id in info}
    assert matched == set(range(1, len(centres) + 1))  # each disk once, none twice
    assert aji(truth, inst_map) > 0.95


def test_single_tile_equals_whole_image_postprocessing():
    from zoo.hovernet.postprocess import hovernet_postprocess

    model = timm.create_model('mrl_seg_nano', num_types=3).eval()
    image, _ = disks(100, 120, [(30, 30), (60, 80)])
    maps = predict_maps(model, image, tile=128)
    expected, expected_info = hovernet_postprocess(maps['np'], maps['hv'], maps['tp'])
    inst_map, info = predict_instances(model, image, tile=128)
    np.testing.assert_array_equal(inst_map, expected)
    assert [i['type'] for i in info.values()] == [i['type'] for i in expected_info.values()]


def test_overlay_draws_coloured_contours():
    image, inst_map = disks(64, 64, [(20, 20), (44, 44)])
    drawn = overlay(image, inst_map)
    assert drawn.shape == (64, 64, 3) and drawn.dtype == np.uint8
    changed = (drawn != image).any(axis=2)
    assert changed.any() and (inst_map[changed] > 0).all()  # contours lie on the instances
    assert not np.array_equal(drawn[20, 14], drawn[44, 38])  # left edges of the two disks differ in colour
    assert overlay(image[..., 0], inst_map).shape == (64, 64, 3)  # grey input


def test_read_image_converts_grey_and_16_bit(tmp_path):
    grey = np.arange(48 * 40, dtype=np.uint16).reshape(48, 40)
    tifffile.imwrite(tmp_path / 'grey16.tif', grey)
    Image.fromarray((grey % 256).astype(np.uint8)).save(tmp_path / 'grey8.png')
    scaled = read_image(tmp_path / 'grey16.tif')
    assert scaled.shape == (48, 40, 3) and scaled.dtype == np.uint8
    assert scaled[0, 0, 0] == 0 and scaled[-1, -1, 0] == 255  # stretched to the 1st-99.8th percentiles
    np.testing.assert_array_equal(read_image(tmp_path / 'grey8.png'), np.repeat((grey % 256)[..., None], 3, 2))


@pytest.mark.parametrize('suffix', ['.png', '.tif'])
def test_predict_to_overlay_writes_files(tmp_path, suffix, capsys):
    image, _ = disks(96, 96, [(30, 30), (64, 60)])
    path = tmp_path / f'cells{suffix}'
    if suffix == '.tif':  # 16-bit, as microscopes write it
        tifffile.imwrite(path, image.astype(np.uint16) * 200)
    else:
        Image.fromarray(image).save(path)
    result = predict_to_overlay(oracle(), path, tmp_path / 'out', tile=64, overlap=16)
    assert result['num_instances'] == 2
    assert result['overlay'].name == 'cells_overlay.png' and result['instances'].name == 'cells_instances.tif'
    assert np.asarray(Image.open(result['overlay'])).shape == (96, 96, 3)
    instances = tifffile.imread(result['instances'])
    assert instances.dtype == np.int32 and instances.max() == 2
    assert '4/4' in capsys.readouterr().err  # the progress bar counted the 2x2 tiles


def test_a_2000_pixel_image_runs_tile_by_tile():
    """A 2000x2000 image is segmented with the network only ever seeing tile batches, and without whole-image
    float maps: numpy's peak is the int32 instance map plus a batch, under two maps' worth."""
    centres = [(row, col) for row in range(40, 2000, 160) for col in range(40, 2000, 160)]
    image, inst_map = disks(2000, 2000, centres)
    model, seen = oracle(), []
    model.register_forward_pre_hook(lambda _module, args: seen.append(tuple(args[0].shape)))
    tracemalloc.start()
    try:
        pred, info = predict_instances(model, image, tile=256, overlap=64, batch_size=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pred.shape == (2000, 2000) and pred.max() == len(centres) == len(info)
    assert max(seen) <= (4, 3, 256, 256) and len(seen) == -(-(len(tile_starts(2000, 256, 64)) ** 2) // 4)
    assert aji(inst_map, pred) > 0.95
    assert peak < 2 * pred.nbytes, f'peak {peak / 2**20:.1f} MiB'  # blended NP + HV maps alone were 3 float maps


@pytest.mark.parametrize('predict', [predict_instances, predict_maps])
def test_a_classifier_is_refused_by_name(predict):
    from zoo.slide import SlideError

    classifier = zoo.create_model('cf_resnet18_fmnist')
    with pytest.raises(SlideError) as error:
        predict(classifier, np.zeros((64, 64, 3), np.uint8))
    assert str(error.value) == (
        'cf_resnet18_fmnist is a model for image-classification; segmenting an image needs a nuclei segmentation '
        'model, e.g. mrl_seg_nano.stardist, mrl_seg_nano.stardist_compressed'
    )
