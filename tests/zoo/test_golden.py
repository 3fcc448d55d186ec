"""Golden outputs: fail when a refactor changes a model's numerics."""

from pathlib import Path

import pytest
import timm
import torch
from _helpers import CASE_IDS, CASES, input_size
from safetensors.torch import load_file

# Segmenters have their own goldens (tests/zoo/test_seg_models.py): this formula makes their deep BN nets chaotic.
GOLDEN_CASES, GOLDEN_IDS = CASES, CASE_IDS
GOLDEN_DIR = Path(__file__).resolve().parents[1] / 'golden'


# ---------------------------------------------------------------------------------------------------------
# Golden outputs. Weights are set by a formula (not the RNG), so the stored outputs depend only on the
# architecture's numerics. Regenerate deliberately with `python tests/zoo/test_golden.py --update-golden`.


def deterministic_init_(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for i, (name, tensor) in enumerate(sorted(model.state_dict().items())):
            if not tensor.is_floating_point():
                continue
            wave = torch.sin(torch.arange(tensor.numel(), dtype=torch.float64) * 0.7 + i).reshape(tensor.shape)
            if name.endswith('running_var'):
                value = 1 + 0.1 * wave.abs()
            elif tensor.dim() == 1:
                value = (1 + 0.1 * wave) if name.endswith('weight') and 'norm' in _kind(model, name) else 0.01 * wave
            else:
                value = wave * (3 / (tensor[0].numel() ** 0.5))
            tensor.copy_(value.to(tensor.dtype))
    return model


def _kind(model, name):
    module = model.get_submodule(name.rpartition('.')[0])
    return 'norm' if 'Norm' in type(module).__name__ else 'other'


def _golden_input(channels: int, size: int) -> torch.Tensor:
    n = channels * size * size
    return torch.cos(torch.arange(n, dtype=torch.float64) * 0.3).reshape(1, channels, size, size).float()


def _golden_case(name, kwargs):
    model = deterministic_init_(timm.create_model(name, **kwargs)).eval()
    c, h, _ = input_size(model, 64)
    x = _golden_input(c, h)
    with torch.no_grad():
        return dict(input=x, output=model(x), features=model.forward_features(x))


@pytest.mark.parametrize('name,kwargs', GOLDEN_CASES, ids=GOLDEN_IDS)
def test_model_golden(name, kwargs):
    path = GOLDEN_DIR / f'{name}{"-lowrank" if kwargs else ""}.safetensors'
    assert path.exists(), f'{path} missing: run `python tests/zoo/test_golden.py --update-golden` and review the diff'
    golden = load_file(str(path))
    current = _golden_case(name, kwargs)
    torch.testing.assert_close(current['input'], golden['input'])
    assert set(current) == set(golden)
    for key in sorted(set(golden) - {'input'}):
        scale = golden[key].abs().max().item()
        torch.testing.assert_close(
            current[key],
            golden[key],
            rtol=1e-4,
            atol=1e-4 * scale,
            msg=lambda m: f'{name} {key} changed numerically: {m}',
        )


if __name__ == '__main__':
    import sys

    from safetensors.torch import save_file

    if '--update-golden' not in sys.argv:
        sys.exit('usage: python tests/zoo/test_golden.py --update-golden')
    GOLDEN_DIR.mkdir(exist_ok=True)
    for (name, kwargs), case_id in zip(GOLDEN_CASES, GOLDEN_IDS):
        save_file(
            {k: v.contiguous() for k, v in _golden_case(name, kwargs).items()},
            str(GOLDEN_DIR / f'{case_id}.safetensors'),
        )
        print('wrote', case_id)
