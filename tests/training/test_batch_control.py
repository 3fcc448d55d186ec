"""Batch-size control and the learning-rate schedule."""

import math

import pytest

from training.batch_control import BatchSchedule, LRSchedule, per_rank_batch


def test_batch_grows_at_its_stages():
    schedule = BatchSchedule([(0, 34_816), (5, 69_632)], base_batch=256)
    assert [schedule.global_batch(e) for e in (0, 4, 5, 80)] == [34_816, 34_816, 69_632, 69_632]


def test_linear_rule_scales_lr_with_the_batch():
    schedule = BatchSchedule([(0, 512), (10, 1024)], base_batch=256, rule='linear')
    assert schedule.lr_scale(0) == 2 and schedule.lr_scale(10) == 4


def test_smith_rule_grows_the_batch_instead_of_the_lr():
    schedule = BatchSchedule([(0, 512), (10, 1024)], base_batch=256, rule='smith')
    assert schedule.lr_scale(0) == schedule.lr_scale(10) == 2


@pytest.mark.parametrize(
    'stages,message',
    [([(1, 128)], 'start at epoch 0'), ([(0, 128), (0, 256)], 'increasing epochs'), ([(0, 0)], 'positive')],
)
def test_bad_stages(stages, message):
    with pytest.raises(ValueError, match=message):
        BatchSchedule(stages, base_batch=128)


def test_per_rank_batch_and_accumulation():
    assert per_rank_batch(1024, 4) == (256, 1)
    assert per_rank_batch(1024, 4, max_per_rank=64) == (64, 4)
    assert per_rank_batch(96, 4, max_per_rank=10) == (8, 3)  # 24 per rank does not split into 10s
    with pytest.raises(ValueError, match='not divisible by the world size 3'):
        per_rank_batch(128, 3)
    with pytest.raises(ValueError, match='a per-rank batch of 257 splits .* only as 257 x 1'):
        per_rank_batch(1028, 4, max_per_rank=256)  # 257 is prime: micro-batches of 1 would break BatchNorm


def test_warmup_then_step_decay():
    lr = LRSchedule(0.1, epochs=90, decay='step', milestones=(30, 60), warmup_epochs=5, warmup_start=0.1)
    assert lr.lr(0) == pytest.approx(0.01)
    assert lr.lr(2, 0.5) == pytest.approx(0.1 * (0.1 + 0.9 * 2.5 / 5))
    assert lr.lr(5) == pytest.approx(0.1)
    assert lr.lr(30) == pytest.approx(0.01) and lr.lr(60) == pytest.approx(0.001)


def test_warmup_restart_for_the_cuttlefish_switch():
    lr = LRSchedule(0.8, epochs=300, milestones=(150, 225), warmup_epochs=5, warmup_start=0.125)
    assert lr.lr(40, warmup_from=40) == pytest.approx(0.1)  # 0.8 * 0.125: the paper's restart at 0.1
    assert lr.lr(45, warmup_from=40) == pytest.approx(0.8)


def test_cosine_with_batch_scaling():
    batch = BatchSchedule([(0, 256), (5, 512)], base_batch=256)
    lr = LRSchedule(0.1, epochs=10, decay='cosine', batch=batch)
    assert lr.lr(0) == pytest.approx(0.1)
    assert lr.lr(5) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr.lr(10) == pytest.approx(0.0, abs=1e-12)
