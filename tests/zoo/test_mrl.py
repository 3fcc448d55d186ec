"""MRL block properties, the mrl_seg nets, tiled inference and the nuclei segmentation task.

The timm API matrix of the mrl_* classifiers runs in tests/test_models.py; these tests cover what is
specific to MRL and to segmentation, on small inputs so they stay fast on two cores.
"""

import numpy as np
import pytest
import tifffile
import timm
import torch
import torch.nn as nn
from PIL import Image

import zoo
from training.data import NucleiPatchDataset, NucleiSample, split_stardist_sample
from training.segmentation import NucleiImageDataset, NucleiSegmentationTask
from zoo.hovernet import hv_map
from zoo.hovernet.losses import hovernet_loss
from zoo.hovernet.metrics import aji
from zoo.io import read_image
from zoo.models.mrl import MRLBlock
from zoo.segment import (
    blend_window,
    overlay,
    predict_instances,
    predict_maps,
    predict_to_overlay,
    tile_starts,
)

SEG_MODELS = [n for n in zoo.list_models('mrl_seg_*')]


# ---------------------------------------------------------------------------------------------------------
# MRL block


def _block(**kwargs) -> MRLBlock:
    # Layer scale 1 so that every branch visibly contributes to the output.
    return MRLBlock(16, num_heads=2, window_size=7, ls_init_value=1.0, **kwargs).eval()


@pytest.mark.parametrize('size', [(28, 28), (23, 17), (5, 3), (1, 1)])
def test_block_keeps_shape_for_any_size(size):
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        out = _block()(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def _corner_response(block: MRLBlock) -> torch.Tensor:
    """Change of the bottom-right region's output when the top-left pixel changes (4x4 regions of 7x7)."""
    x = torch.randn(1, 16, 28, 28)
    perturbed = x.clone()
    perturbed[0, :, 0, 0] += torch.linspace(-5, 5, 16)  # not a constant: LayerNorm would remove that
    with torch.no_grad():
        return (block(perturbed) - block(x))[..., -7:, -7:]


def test_block_receptive_field_is_global():
    assert _corner_response(_block()).abs().max() > 1e-4


def test_block_without_attention_is_local():
    block = _block()
    nn.init.zeros_(block.regional.attn.proj.weight)
    nn.init.zeros_(block.regional.attn.proj.bias)
    # Position encoding (one region) plus the 7x7 depthwise conv cannot reach three regions away.
    assert torch.equal(_corner_response(block), torch.zeros(1, 16, 7, 7))


def test_group_conv_ffn_variant():
    dense = timm.create_model('mrl_nano', num_classes=10)
    grouped = timm.create_model('mrl_nano', num_classes=10, ffn_groups=4)
    assert sum(p.numel() for p in grouped.parameters()) < sum(p.numel() for p in dense.parameters())
    assert grouped.stages[1].blocks[0].ffn.fc1.groups == 4
    out = grouped(torch.randn(2, 3, 64, 64))
    out.mean().backward()
    assert out.shape == (2, 10)
    assert all(p.grad is not None for p in grouped.parameters())
    with pytest.raises(ValueError, match='ffn_groups'):
        timm.create_model('mrl_nano', ffn_groups=3)


def test_classifier_any_input_size_and_intermediates():
    model = timm.create_model('mrl_nano').eval()
    x = torch.randn(1, 3, 96, 160)  # no stage size is a multiple of the 7 px window
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        assert model(x).shape == (1, 1000)
    assert [tuple(f.shape[-2:]) for f in intermediates] == [(24, 40), (12, 20), (6, 10), (3, 5)]


# ---------------------------------------------------------------------------------------------------------
# Segmentation nets


@pytest.mark.parametrize('name', SEG_MODELS)
@pytest.mark.parametrize('size', [(64, 64), (72, 80)])
def test_seg_output_shapes(name, size):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert set(out) == {'np', 'hv'}
    assert out['np'].shape == out['hv'].shape == (2, 2, *size)


def test_seg_type_branch_present_when_requested():
    with_types = timm.create_model('mrl_seg_nano', num_types=5).eval()
    assert with_types.num_types == 5 and zoo.model_info('mrl_seg_nano')['task'] == 'nuclei-segmentation'
    with torch.no_grad():
        out = with_types(torch.rand(1, 3, 40, 56))
    assert set(out) == {'np', 'hv', 'tp'} and out['tp'].shape == (1, 5, 40, 56)
    # timm's name for the same thing
    assert timm.create_model('mrl_seg_nano', num_classes=5).num_types == 5
    assert not any(name.startswith('branches.tp') for name, _ in timm.create_model('mrl_seg_nano').named_parameters())


def test_seg_gradients_reach_every_parameter():
    model = timm.create_model('mrl_seg_nano', num_types=3).train()
    out = model(torch.rand(2, 3, 64, 64))
    targets = dict(
        np=torch.randint(0, 2, (2, 64, 64)), hv=torch.rand(2, 2, 64, 64) * 2 - 1, tp=torch.randint(0, 3, (2, 64, 64))
    )
    loss, _ = hovernet_loss(out, targets)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f'parameters without gradient: {missing}'


# ---------------------------------------------------------------------------------------------------------
# Tiled inference


class PointwiseNet(nn.Module):
    """A 1x1-conv stand-in for a segmentation net: each output pixel depends on its input pixel only,
    so tiled inference must reproduce the full-image forward exactly."""

    def __init__(self, num_types: int = 0):
        super().__init__()
        self.num_types = num_types
        self.conv = nn.Conv2d(3, 4 + num_types, 1)

    def forward(self, x):
        out = self.conv(x)
        maps = dict(np=out[:, :2], hv=out[:, 2:4])
        return maps | (dict(tp=out[:, 4:]) if self.num_types else {})


def _oracle() -> PointwiseNet:
    """Reads the answer off a :func:`_disks` image: NP from red, HV from green and blue."""
    model = PointwiseNet()
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.zero_()
        model.conv.weight[0, 0], model.conv.bias[0] = -20.0, 10.0
        model.conv.weight[1, 0], model.conv.bias[1] = 20.0, -10.0
        model.conv.weight[2, 1], model.conv.bias[2] = 2.0, -1.0
        model.conv.weight[3, 2], model.conv.bias[3] = 2.0, -1.0
    return model


def _disks(height: int, width: int, centres, radius: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Disk nuclei; red is bright inside them, green and blue hold their HoVer-Net HV maps in [0, 1]."""
    rows, cols = np.mgrid[:height, :width]
    inst_map = np.zeros((height, width), np.int32)
    for inst_id, (row, col) in enumerate(centres, start=1):
        inst_map[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = inst_id
    red = np.where(inst_map > 0, 230, 20)
    green, blue = np.round((hv_map(inst_map) + 1) * 127.5)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8), inst_map


def _full_forward(model, image):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = model.eval()(x)
    return dict(
        np=out['np'].softmax(1)[0, 1].numpy(),
        hv=out['hv'][0].numpy(),
        tp=out['tp'].softmax(1)[0].numpy() if 'tp' in out else None,
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
    tiled, full = predict_maps(model, image, tile=128, overlap=32), _full_forward(model, image)
    for key in ('np', 'hv', 'tp'):
        np.testing.assert_allclose(tiled[key], full[key], rtol=0, atol=1e-5)


def test_stitching_is_exact_for_a_pointwise_model():
    model = PointwiseNet(num_types=3)
    image = np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    tiled, full = predict_maps(model, image, tile=128, overlap=32, batch_size=3), _full_forward(model, image)
    for key in ('np', 'hv', 'tp'):
        np.testing.assert_allclose(tiled[key], full[key], rtol=0, atol=1e-5)


def test_tiled_close_to_full_forward_for_mrl_seg():
    # Not exact: a tile's border pixels see zero padding instead of their neighbours and its regional
    # attention sees only the tile. Blending is convex, so the stitched maps stay close.
    model = timm.create_model('mrl_seg_nano').eval()
    image = np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    tiled, full = predict_maps(model, image, tile=128, overlap=32), _full_forward(model, image)
    assert tiled['np'].shape == (300, 260) and tiled['hv'].shape == (2, 300, 260) and tiled['tp'] is None
    for key in ('np', 'hv'):
        difference = np.abs(tiled[key] - full[key])
        assert difference.mean() < 1e-3 and difference.max() < 0.05


def test_predict_instances_finds_each_blob():
    centres = [(20, 20), (20, 60), (60, 40), (150, 200), (240, 30)]
    image, _ = _disks(260, 230, centres)
    inst_map, info = predict_instances(_oracle(), image, tile=128, overlap=32)
    assert inst_map.dtype == np.int32 and inst_map.shape == (260, 230) and info[1]['type'] is None
    assert inst_map.max() == len(centres)


def test_overlay_draws_coloured_contours():
    image, inst_map = _disks(64, 64, [(20, 20), (44, 44)])
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
def test_predict_to_overlay_writes_files(tmp_path, suffix):
    image, _ = _disks(96, 96, [(30, 30), (64, 60)])
    path = tmp_path / f'cells{suffix}'
    if suffix == '.tif':  # 16-bit, as microscopes write it
        tifffile.imwrite(path, image.astype(np.uint16) * 200)
    else:
        Image.fromarray(image).save(path)
    result = predict_to_overlay(_oracle(), path, tmp_path / 'out', tile=64, overlap=16)
    assert result['num_instances'] == 2
    assert result['overlay'].name == 'cells_overlay.png' and result['instances'].name == 'cells_instances.tif'
    assert np.asarray(Image.open(result['overlay'])).shape == (96, 96, 3)
    instances = tifffile.imread(result['instances'])
    assert instances.dtype == np.int32 and instances.max() == 2


# ---------------------------------------------------------------------------------------------------------
# Training task


def test_task_evaluate_returns_sums_and_count(tmp_path):
    image, inst_map = _disks(80, 96, [(20, 20), (50, 70)])
    samples = NucleiImageDataset([NucleiSample('a', image, inst_map), NucleiSample('b', image, inst_map)])
    task = NucleiSegmentationTask('stardist', tile=64, overlap=16)
    sums = task.evaluate(_oracle(), samples, torch.device('cpu'), batch_size=2)
    assert set(sums) == {'dice', 'aji', 'aji_plus', 'dq', 'sq', 'pq', 'count'}
    assert sums['count'] == 2 and sums['dice'] == pytest.approx(2.0, abs=0.05) and sums['pq'] > 1.5
    paths = task.write_examples(_oracle(), samples, tmp_path, torch.device('cpu'))
    assert [p.name for p in paths] == ['a_overlay.png', 'b_overlay.png']
    assert np.asarray(Image.open(paths[0])).shape == (80, 192, 3)  # ground truth | prediction


def test_task_datasets_and_loss():
    task = NucleiSegmentationTask('stardist', patch_size=64, step=64)
    train, val = task.datasets()
    assert isinstance(val[0], NucleiSample) and len(val) == 2  # 10 train / 2 val / 4 held-out tiles
    assert len(task.test_dataset()) == 4
    assert len(train) == 10 * (128 // 64) ** 2
    batch = torch.utils.data.default_collate([train[0], train[1]])
    assert batch['image'].shape == (2, 3, 64, 64)
    loss, parts = task.loss(timm.create_model('mrl_seg_nano'), batch, torch.device('cpu'))
    assert torch.isfinite(loss) and set(parts) == {'np_ce', 'np_dice', 'hv_mse', 'hv_msge'}
    with pytest.raises(ValueError, match='no nuclear type'):
        NucleiSegmentationTask('kumar', data_dir='.', num_types=3)
    with pytest.raises(ValueError, match='CoNSeP'):
        NucleiSegmentationTask('consep', data_dir='.', num_types=4)


def test_mrl_seg_nano_overfits_two_stardist_tiles():
    train_tiles, _ = split_stardist_sample()
    patches = NucleiPatchDataset(train_tiles[:2], patch_size=128, step=128, augment=False)
    batch = torch.utils.data.default_collate([patches[0], patches[1]])
    model = timm.create_model('mrl_seg_nano').train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0)
    losses = []
    for _ in range(30):
        loss, _ = hovernet_loss(model(batch['image']), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0], losses


def test_a_2000_pixel_image_runs_tile_by_tile():
    """A 2000x2000 tile (a slide region) is segmented with the network only ever seeing tile batches."""
    centres = [(row, col) for row in range(40, 2000, 160) for col in range(40, 2000, 160)]
    image, inst_map = _disks(2000, 2000, centres)
    model, seen = _oracle(), []
    model.register_forward_pre_hook(lambda _module, args: seen.append(tuple(args[0].shape)))
    pred, _ = predict_instances(model, image, tile=256, overlap=64, batch_size=4)
    assert pred.shape == (2000, 2000) and pred.max() == len(centres)
    assert max(seen) <= (4, 3, 256, 256) and len(seen) == -(-(len(tile_starts(2000, 256, 64)) ** 2) // 4)
    assert aji(inst_map, pred) > 0.95
