"""Golden outputs: fail when a change alters what a model computes, on any x86-64 CPU.

Weights and input come from a formula, not the RNG, so the outputs depend only on the architecture. To
survive another machine's kernels (AVX-512, AVX2, AMX, oneDNN's choices; ``make test`` also runs this
module under ``ATEN_CPU_CAPABILITY=default`` and ``=avx2``):

* the stored goldens are computed in float64, so they are the exact outputs to ~1e-15 of their scale,
  whichever machine regenerates them (``PYTHONPATH=tests python tests/zoo/test_golden.py --update-golden
  [CASE...]``; slow: float64 depthwise convolutions have no fast kernel). The test runs the model in
  float32, as users do, and compares with them;
* the formula keeps activations O(1) through every depth (a Weyl sequence scaled to std 1/sqrt(fan_in)), so
  float32 rounding is not amplified. The sinusoid used before resonated with the input and grew outputs to
  15,587 (mrl_seg_nano), where rounding became differences of 5 % between machines;
* the formula is exact: a multiply and a floor in float64 give the same bits on every CPU (``sin`` does not).

Tolerance: 1e-4 of the largest magnitude of each output. Here a float32 forward is within 1.1e-5 of that
scale of the exact outputs for cf_deit_small-lowrank and within 5e-6 for every other case, under each of
ATen's AVX-512, AVX2 and plain C++ kernels alike; another machine's float32 kernels round differently, by
the same order of magnitude. The tolerance is 9 times the worst case and 20 times the others, while a change
to what a layer computes (a swapped branch, a missing scale, another activation) moves outputs by far more.
"""

import math
from pathlib import Path

import pytest
import timm
import torch
from _helpers import CASE_IDS, CASES, SEGMENTERS, input_size
from safetensors.torch import load_file

# HoVer-Net's own nets are pinned to the reference implementation's outputs instead (tests/zoo/test_seg_models.py).
GOLDEN_SEGMENTERS = [n for n in SEGMENTERS if not n.startswith('hovernet_')]
GOLDEN_CASES, GOLDEN_IDS = CASES + [(n, {}) for n in GOLDEN_SEGMENTERS], CASE_IDS + GOLDEN_SEGMENTERS
GOLDEN_DIR = Path(__file__).resolve().parents[1] / 'golden'
UPDATE = 'PYTHONPATH=tests python tests/zoo/test_golden.py --update-golden'
TOLERANCE = 1e-4  # of the largest magnitude of each output (see the module docstring)


def _weyl(count: int, offset: float) -> torch.Tensor:
    """``count`` float64 values in [-1, 1): frac(k·φ + offset), equidistributed and exact on every machine."""
    golden_ratio_conjugate = (math.sqrt(5) - 1) / 2
    return torch.frac(torch.arange(count, dtype=torch.float64) * golden_ratio_conjugate + offset) * 2 - 1


def deterministic_init_(model: torch.nn.Module) -> torch.nn.Module:
    """Set every floating-point tensor of ``model`` by formula: weights with std 1/sqrt(fan_in) (activations
    neither vanish nor explode), norm scales near 1, biases and BN means near 0, BN variances near 1."""
    with torch.no_grad():
        for i, (name, tensor) in enumerate(sorted(model.state_dict().items())):
            if not tensor.is_floating_point():
                continue
            wave = _weyl(tensor.numel(), i * math.sqrt(2)).reshape(tensor.shape)  # irrational offsets: no repeats
            if name.endswith('running_var'):
                value = 1 + 0.1 * wave.abs()
            elif tensor.dim() == 1:
                value = (1 + 0.1 * wave) if name.endswith('weight') and 'norm' in _kind(model, name) else 0.01 * wave
            else:
                value = wave * math.sqrt(3 / tensor[0].numel())  # uniform on [-a, a] has std a/sqrt(3)
            tensor.copy_(value.to(tensor.dtype))
    return model


def _kind(model, name):
    module = model.get_submodule(name.rpartition('.')[0])
    return 'norm' if 'Norm' in type(module).__name__ else 'other'


def _golden_input(channels: int, size: int) -> torch.Tensor:
    return _weyl(channels * size * size, 0.5).reshape(1, channels, size, size)


def _golden_case(name, kwargs, dtype=torch.float32):
    """The golden input and the model's outputs (as float64) when it runs in ``dtype``."""
    model = deterministic_init_(timm.create_model(name, **kwargs)).eval().to(dtype)
    c, h, _ = input_size(model, 64)
    x = _golden_input(c, h)
    with torch.no_grad():
        out = model(x.to(dtype))
        outputs = {f'output_{k}': v for k, v in out.items()} if isinstance(out, dict) else dict(output=out)
        if not isinstance(out, dict):  # segmentation nets have one output map per branch instead
            outputs['features'] = model.forward_features(x.to(dtype))
    return dict(input=x, **{k: v.double() for k, v in outputs.items()})


@pytest.mark.parametrize('name,kwargs', GOLDEN_CASES, ids=GOLDEN_IDS)
def test_model_golden(name, kwargs):
    path = GOLDEN_DIR / f'{name}{"-lowrank" if kwargs else ""}.safetensors'
    assert path.exists(), f'{path} missing: run `{UPDATE} {path.stem}` and review the diff'
    golden = load_file(str(path))
    current = _golden_case(name, kwargs)
    assert torch.equal(current['input'], golden['input']), 'the golden input formula changed'
    assert set(current) == set(golden)
    for key in sorted(set(golden) - {'input'}):
        assert golden[key].dtype == torch.float64
        scale = golden[key].abs().max().item()
        torch.testing.assert_close(
            current[key],
            golden[key],
            rtol=0,
            atol=TOLERANCE * scale,
            msg=lambda m: f'{name} {key} changed numerically: {m}',
        )


def test_goldens_are_well_conditioned():
    """The premise of the tolerance: outputs are O(1), not thousands (whose rounding moves between CPUs)."""
    for path in sorted(GOLDEN_DIR.glob('*.safetensors')):
        for key, value in load_file(str(path)).items():
            assert 1e-3 < value.abs().max().item() < 100, f'{path.name} {key}: max {value.abs().max().item():.3g}'


if __name__ == '__main__':
    import sys

    from safetensors.torch import save_file

    if sys.argv[1:2] != ['--update-golden'] or not set(sys.argv[2:]) <= set(GOLDEN_IDS):
        sys.exit(f'usage: {UPDATE} [CASE...]; cases: {" ".join(GOLDEN_IDS)}')
    GOLDEN_DIR.mkdir(exist_ok=True)
    for (name, kwargs), case_id in zip(GOLDEN_CASES, GOLDEN_IDS):
        if sys.argv[2:] and case_id not in sys.argv[2:]:
            continue
        save_file(
            {k: v.contiguous() for k, v in _golden_case(name, kwargs, torch.float64).items()},
            str(GOLDEN_DIR / f'{case_id}.safetensors'),
        )
        print('wrote', case_id)
