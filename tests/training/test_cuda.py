"""The CUDA paths, on a machine that has a GPU (skipped elsewhere): AMP training steps, the Cuttlefish profiler
on CUDA, and the 2D-torus DDP hook at world size 1 on NCCL with its CUDA side stream."""

import os

import pytest
import torch
import torch.distributed as dist

import zoo

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def _recipe(tmp_path, amp: str) -> dict:
    from training.recipe import load_recipe

    return load_recipe(
        'fmnist_resnet18',
        [
            'epochs=2', 'task.args.train_subset=2048', 'task.args.holdout=1024', 'task.args.on_device=true',
            f'amp={amp}', 'batch.stages=[[0, 256]]', 'batch.base=256', 'log.progress=false', 'log.tensorboard=false',
        ],
    )  # fmt: skip


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_amp_training_on_cuda(tmp_path, amp):
    from training.trainer import Trainer

    trainer = Trainer(_recipe(tmp_path, amp), tmp_path / 'run')
    assert trainer.device.type == 'cuda' and trainer.amp_dtype == {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]
    assert trainer.scaler.is_enabled() == (amp == 'fp16')  # a loss scaler only where fp16 needs one
    best = trainer.fit()
    rows = trainer.history
    print(f'{amp}: ' + '; '.join(f'epoch {r["epoch"]} loss {r["train_loss"]:.3f} top1 {r["top1"]:.1f}' for r in rows))
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r['train_loss'])) for r in rows)
    assert rows[1]['train_loss'] < rows[0]['train_loss'] and best['top1'] > 15  # it learns (chance: 10 %)
    assert next(trainer.model.parameters()).dtype == torch.float32  # autocast, not a cast of the weights


def test_cuttlefish_profiler_times_layers_on_cuda():
    from zoo.profile import profile_layers

    model = zoo.create_model('cf_resnet18', num_classes=10).cuda()
    names = ['layer3.0.conv2', 'layer4.1.conv2']
    layers = {n: model.get_submodule(n) for n in names}
    shapes = {'layer3.0.conv2': (256, 256, 8, 8), 'layer4.1.conv2': (256, 512, 4, 4)}
    rows = profile_layers(layers, {n: 32 for n in names}, shapes, repeats=5, amp_dtype=torch.bfloat16)
    for row in rows:
        print(f'{row["layer"]}: dense {row["dense_ms"]:.3f} ms, rank 32 {row["low_rank_ms"]:.3f} ms, '
              f'speed-up {row["speedup"]:.2f}x')  # fmt: skip
    assert [r['layer'] for r in rows] == names and all(r['dense_ms'] > 0 and r['low_rank_ms'] > 0 for r in rows)
    assert all(layer.weight.grad is None for layer in layers.values())  # the profiler leaves no gradients behind


def test_torus_hook_world_size_one_on_nccl(tmp_path):
    from torch.nn.parallel import DistributedDataParallel

    from training.torus import TorusGrid, register_torus_hook, torus_all_reduce

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='29533', LOCAL_WORLD_SIZE='1')
    dist.init_process_group('nccl', rank=0, world_size=1, device_id=torch.device('cuda', 0))
    # The hooked and the plain model must run the same kernels for their gradients to be comparable.
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        grid = TorusGrid.create(backend='nccl')
        assert (grid.x, grid.y) == (1, 1)
        tensor = torch.arange(10, dtype=torch.float16, device='cuda') * 3000
        torch.testing.assert_close(torus_all_reduce(tensor.clone(), grid, op='avg'), tensor)  # no fp16 overflow
        torch.manual_seed(0)
        model = zoo.create_model('cf_resnet18_fmnist', num_classes=10).cuda()
        reference = zoo.create_model('cf_resnet18_fmnist', num_classes=10).cuda()
        reference.load_state_dict(model.state_dict())
        ddp = DistributedDataParallel(model, device_ids=[0])
        register_torus_hook(ddp, grid)
        x = torch.randn(8, 1, 28, 28, device='cuda')
        ddp(x).sum().backward()
        reference(x).sum().backward()
        torch.cuda.synchronize()
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=lambda m, name=name: f'{name}: {m}')
        print("torus hook on NCCL, world size 1: gradients equal to the plain model's")
    finally:
        torch.backends.cudnn.deterministic = False
        dist.destroy_process_group()
