"""MRL block properties, the mrl_seg nets and the nuclei segmentation task (tiled inference: test_segment.py).

The timm API matrix of the mrl_* classifiers runs in tests/test_models.py; these tests cover what is
specific to MRL and to segmentation, on small inputs so they stay fast on two cores.
"""

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from _segment_oracle import disks, oracle
from PIL import Image

import zoo
from training.data import NucleiPatchDataset, NucleiSample, split_stardist_sample
from training.segmentation import NucleiImageDataset, NucleiSegmentationTask
from zoo.hovernet.losses import hovernet_loss
from zoo.models.mrl import MRLBlock

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
# Training task


def test_task_evaluate_returns_sums_and_count(tmp_path):
    image, inst_map = disks(80, 96, [(20, 20), (50, 70)])
    samples = NucleiImageDataset([NucleiSample('a', image, inst_map), NucleiSample('b', image, inst_map)])
    task = NucleiSegmentationTask('stardist', tile=64, overlap=16)
    sums = task.evaluate(oracle(), samples, torch.device('cpu'), batch_size=2)
    assert set(sums) == {'dice', 'aji', 'aji_plus', 'dq', 'sq', 'pq', 'count'}
    assert sums['count'] == 2 and sums['dice'] == pytest.approx(2.0, abs=0.05) and sums['pq'] > 1.5
    paths = task.write_examples(oracle(), samples, tmp_path, torch.device('cpu'))
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
    with pytest.raises(ValueError, match='consep has 5 or 8 types'):
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
