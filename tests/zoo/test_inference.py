"""zoo.inference: every backend against eager PyTorch on every model family, the export cache, the fallbacks, and
the slide pipeline's outputs across backends.

Real runtimes on real exports, nothing mocked: a backend's tests are skipped where its wheel is absent. Each family
is a small configuration of a registered architecture (an export costs seconds whatever the width); the published
``mrl_seg_nano.stardist`` is the MRL segmenters' case, and HoVer-Net's own networks (minutes to export) are slow.
Exports are shared through one cache folder for the session.
"""

import importlib.util
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import zoo
from training.cli import main
from training.data.readers import load_stardist_sample
from zoo.inference import TOLERANCE, InferenceError, InferenceWarning, compile
from zoo.inference.auto import output_error
from zoo.inference.cache import export_folder
from zoo.slide import segment_slide

REPO = Path(__file__).resolve().parents[2]
_EXPORTER = all(importlib.util.find_spec(name) for name in ('onnx', 'onnxscript'))
ONNXRUNTIME = pytest.param(
    'onnxruntime',
    marks=pytest.mark.skipif(not (_EXPORTER and importlib.util.find_spec('onnxruntime')), reason='no onnxruntime'),
)
OPENVINO = pytest.param(
    'openvino', marks=pytest.mark.skipif(not (_EXPORTER and importlib.util.find_spec('openvino')), reason='no openvino')
)
EXPORTED = [ONNXRUNTIME, OPENVINO]
needs_onnxruntime = ONNXRUNTIME.marks[0]

_SMALL_RESNET = dict(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64))
# family: (architecture, small configuration, input size). The classifiers' published sizes; segmenters at 64 px.
FAMILIES = {
    'cf_resnet': ('cf_resnet18', _SMALL_RESNET, (3, 32, 32)),
    'cf_resnet-lowrank': ('cf_resnet18', dict(_SMALL_RESNET, rank_ratio=0.25), (3, 32, 32)),
    'cf_vgg': ('cf_vgg19', dict(widths=(8, 16, 32, 32, 32), depths=(1, 1, 1, 1, 1)), (3, 32, 32)),
    'cf_deit': ('cf_deit_small', dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2), (3, 32, 32)),
    'mrl': ('mrl_nano', dict(depths=(1, 1, 1, 1)), (1, 28, 28)),  # 28 px: mrl_nano_fmnist's size, 1x1 regions
    'mrl_seg': ('mrl_seg_nano', dict(encoder_args=dict(depths=(1, 1, 1, 1))), (3, 64, 64)),
    'hovernet-timm': ('hovernet', dict(encoder='test_resnet', decoder_dims=(16, 8, 8, 8, 8), num_types=3), (3, 64, 64)),
}
SLOW_FAMILIES = {  # the paper's networks: minutes to export on two cores
    'hovernet_fast': ('hovernet_fast', dict(num_types=3), (3, 64, 64)),
    'hovernet_original': ('hovernet_original', {}, (3, 64, 64)),
}


@pytest.fixture(scope='session')
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('zoo-cache')


def _family_model(family: str):
    name, kwargs, input_size = {**FAMILIES, **SLOW_FAMILIES}[family]
    torch.manual_seed(0)  # the same weights in every test: one export per family and size for the session
    if input_size[0] == 1:
        kwargs = dict(kwargs, in_chans=1)
    return zoo.create_model(name, **kwargs).eval(), input_size


def _strict_compile(model, backend, **kwargs):
    """compile, failing the test on any fallback."""
    with warnings.catch_warnings():
        warnings.simplefilter('error', InferenceWarning)
        return compile(model, backend, **kwargs)


def _assert_matches_eager(network, model, images, tolerance=TOLERANCE['fp32']):
    with torch.no_grad():
        expected = model(images)
    outputs = network(images)
    if isinstance(expected, dict):
        assert list(outputs) == list(expected)
        assert all(outputs[k].shape == expected[k].shape and outputs[k].dtype == torch.float32 for k in expected)
    else:
        assert outputs.shape == expected.shape and outputs.dtype == torch.float32
    assert output_error(outputs, expected) <= tolerance


def _check_family(family, backend, cache):
    model, input_size = _family_model(family)
    network = _strict_compile(model, backend, input_size=input_size, cache_dir=cache)
    assert (network.backend, network.precision) == (backend, 'fp32')
    for batch in (1, 3):  # exported with a batch of 2: the batch is dynamic
        _assert_matches_eager(network, model, torch.rand(batch, *input_size))


@pytest.mark.parametrize('backend', EXPORTED)
@pytest.mark.parametrize('family', FAMILIES)
def test_backend_matches_eager_on_every_family(family, backend, cache):
    _check_family(family, backend, cache)


@pytest.mark.slow
@pytest.mark.parametrize('backend', EXPORTED)
@pytest.mark.parametrize('family', SLOW_FAMILIES)
def test_backend_matches_eager_on_hovernets_own_networks(family, backend, cache):
    _check_family(family, backend, cache)


@pytest.mark.parametrize('backend', EXPORTED)
def test_every_input_size_gets_its_own_export(backend, cache):
    model, input_size = _family_model('cf_resnet')
    network = _strict_compile(model, backend, input_size=input_size, cache_dir=cache)
    for size in ((32, 32), (48, 40)):
        _assert_matches_eager(network, model, torch.rand(2, 3, *size))
    assert {'32x32.onnx', '48x40.onnx'} <= {p.name for p in export_folder(model, cache).iterdir()}


@needs_onnxruntime
def test_one_dynamic_export_serves_every_size(tmp_path):
    model, input_size = _family_model('cf_resnet')
    network = _strict_compile(model, 'onnxruntime', input_size=input_size, dynamic=True, cache_dir=tmp_path)
    for size in (32, 48, 40):
        _assert_matches_eager(network, model, torch.rand(2, 3, size, size))
    assert [p.name for p in tmp_path.glob('exports/*/*.onnx')] == ['dynamic.onnx']


@needs_onnxruntime
@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_auto_takes_a_backend_within_tolerance_and_says_why_in_one_line(precision, cache, caplog):
    model, input_size = _family_model('cf_resnet')
    with caplog.at_level(logging.INFO, logger='zoo.inference'):
        network = compile(model, 'auto', precision, input_size=input_size, batch_size=4, cache_dir=cache)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith('auto:')]
    assert line.startswith(f'auto: {network.backend} {network.precision} for cf_resnet18 (torch fp32 ')
    assert 'onnxruntime fp32' in line and 'fp32 within 0.0001, bf16 within 0.05' in line and '\n' not in line
    from zoo.inference.backend_torch import lacks

    # bf16 competes where this CPU runs it natively; emulated bf16 (many times slower) is not even timed.
    assert ('torch bf16' in line) == (precision == 'bf16' and lacks('bf16') is None)
    _assert_matches_eager(network, model, torch.rand(4, *input_size), TOLERANCE[network.precision])


def test_bf16_within_its_tolerance_where_it_runs(cache):
    model, input_size = _family_model('mrl_seg')
    images = torch.rand(2, *input_size)
    _assert_matches_eager(compile(model, 'torch', 'bf16'), model, images, TOLERANCE['bf16'])
    if not (_EXPORTER and importlib.util.find_spec('openvino')):
        return
    from zoo.inference.backend_openvino import lacks

    if lacks('bf16'):  # this CPU: OpenVINO would run fp32 under a bf16 hint, and the zoo says so
        with pytest.warns(InferenceWarning, match='no bf16 instructions .* running openvino fp32'):
            network = compile(model, 'openvino', 'bf16', input_size=input_size, cache_dir=cache)
        assert network.precision == 'fp32'
    else:
        network = _strict_compile(model, 'openvino', precision='bf16', input_size=input_size, cache_dir=cache)
        assert network.precision == 'bf16'
        _assert_matches_eager(network, model, images, TOLERANCE['bf16'])


def test_requests_that_cannot_work_are_one_line_errors(tmp_path):
    model, _ = _family_model('cf_resnet')
    with pytest.raises(InferenceError, match="unknown backend 'tensorrt'; choose one of auto, torch, onnxruntime"):
        compile(model, 'tensorrt')
    with pytest.raises(InferenceError, match="unknown precision 'fp16'"):
        compile(model, 'torch', 'fp16')
    with pytest.raises(InferenceError, match='onnxruntime runs fp32 only; for bf16 choose openvino'):
        compile(model, 'onnxruntime', 'bf16')
    model.to('meta')
    with pytest.raises(InferenceError, match='openvino runs on the CPU but the model is on meta'):
        compile(model, 'openvino')
    image = tmp_path / 'shirt.png'
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    assert main(['predict', 'cf_resnet18_fmnist', str(image), '--backend', 'onnxruntime', '--precision', 'bf16']) == 2


@needs_onnxruntime
def test_a_model_that_does_not_convert_runs_on_torch_with_one_warning_line(tmp_path):
    class DataDependent(torch.nn.Module):  # torch.export cannot trace a branch on the values
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x) if x.mean() > 0.5 else -self.conv(x)

    model = DataDependent()
    with pytest.warns(InferenceWarning) as caught:
        network = compile(model, 'onnxruntime', input_size=(3, 8, 8), cache_dir=tmp_path)
    [warning] = caught
    assert str(warning.message).startswith('onnxruntime cannot run DataDependent at 8x8 (') and '\n' not in str(
        warning.message
    )
    assert str(warning.message).endswith('); running torch') and network.backend == 'torch'
    _assert_matches_eager(network, model, torch.rand(2, 3, 8, 8))


# ---------------------------------------------------------------------------------------------------------
# The export cache


@needs_onnxruntime
def test_an_export_is_reused_and_a_tampered_one_is_refused_and_rebuilt(tmp_path, caplog):
    model, input_size = _family_model('cf_resnet')
    with caplog.at_level(logging.INFO, logger='zoo.inference'):
        compile(model, 'onnxruntime', input_size=input_size, cache_dir=tmp_path)
        [exported] = tmp_path.glob('exports/cf_resnet18-*/32x32.onnx')
        record = json.loads(exported.with_suffix('.json').read_text())
        network = _strict_compile(model, 'onnxruntime', input_size=input_size, cache_dir=tmp_path)  # reused
    assert sum('exported' in r.getMessage() for r in caplog.records) == 1
    _assert_matches_eager(network, model, torch.rand(2, *input_size))

    data = bytearray(exported.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights
    exported.write_bytes(bytes(data))
    with pytest.warns(InferenceWarning, match='cached export does not match the sha256 recorded in 32x32.json'):
        network = compile(model, 'onnxruntime', input_size=input_size, cache_dir=tmp_path)
    assert network.backend == 'onnxruntime'
    assert json.loads(exported.with_suffix('.json').read_text())['sha256'] == record['sha256']  # the same export
    _assert_matches_eager(network, model, torch.rand(2, *input_size))

    # Other weights, or the same weights in another architecture, are another entry.
    folder = export_folder(model, tmp_path)
    assert folder == exported.parent
    model.layer1[0].conv1.stride = (2, 2)  # a setting the state dict does not hold
    assert export_folder(model, tmp_path) != folder
    model.layer1[0].conv1.stride = (1, 1)
    with torch.no_grad():
        model.fc.bias += 1
    assert export_folder(model, tmp_path) != folder


_CONCURRENT = """
import logging, sys, time, torch
from pathlib import Path
import zoo.inference
logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
images = torch.rand(2, 3, 16, 16)
barrier = Path(sys.argv[1])
(barrier / sys.argv[2]).touch()
while len(list(barrier.iterdir())) < 2:  # both processes reach compile together
    time.sleep(0.01)
network = zoo.inference.compile(model, 'onnxruntime', input_size=(3, 16, 16), cache_dir=sys.argv[3])
assert network.backend == 'onnxruntime'
assert (network(images) - model(images)).abs().max() < 1e-5
"""


@needs_onnxruntime
def test_two_processes_exporting_the_same_model_export_it_once(tmp_path):
    barrier = tmp_path / 'barrier'
    barrier.mkdir()
    command = [sys.executable, '-c', _CONCURRENT, str(barrier)]
    processes = [
        subprocess.Popen([*command, name, str(tmp_path / 'cache')], stderr=subprocess.PIPE, text=True, cwd=REPO)
        for name in ('a', 'b')
    ]
    logs = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], logs
    assert sum(log.count('zoo.inference: exported') for log in logs) == 1  # the other waited and reused it
    assert len(list(tmp_path.glob('cache/exports/*/16x16.onnx'))) == 1


_WITHOUT_THE_EXTRA = """
import sys
for name in ('onnxruntime', 'openvino'):
    sys.modules[name] = None  # import fails as if the fast extra were not installed
from training.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_the_fast_extra_everything_runs_on_torch_with_one_warning_line(tmp_path):
    image = tmp_path / 'shirt.png'
    shirt = np.zeros((28, 28), np.uint8)
    shirt[6:22, 8:20] = 200  # an object on a black background, as Fashion-MNIST's
    Image.fromarray(shirt).save(image)
    result = subprocess.run(
        [
            sys.executable,
            '-c',
            _WITHOUT_THE_EXTRA,
            'predict',
            'cf_resnet18_fmnist',
            str(image),
            '--backend',
            'openvino',
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, 'ZOO_CACHE_DIR': str(tmp_path / 'cache')},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "zoo predict: warning: openvino: openvino is not installed (pip install 'cuttlefish-mrl-zoo[fast]'); "
        'running torch fp32'
    ]
    assert result.stdout.startswith(f'{image}\n') and '%' in result.stdout
    assert not (tmp_path / 'cache').exists()


# ---------------------------------------------------------------------------------------------------------
# Slides


@pytest.mark.parametrize('backend', EXPORTED)
def test_slide_outputs_are_identical_across_backends_in_fp32(backend, cache, tmp_path_factory, monkeypatch):
    """The stardist sample (real nuclei, the published model's domain) as a slide of 3x3 tiles of 256 px: the
    GeoJSON and CSV written through each backend are byte for byte those of eager torch fp32 (same nuclei, same
    polygons, same measurements), because no pixel's maps move across the watershed's thresholds."""
    monkeypatch.setenv('ZOO_CACHE_DIR', str(cache))
    folder = tmp_path_factory.getbasetemp() / 'stardist-slide'
    slide = folder / 'stardist.ome.tif'
    model = zoo.create_model('mrl_seg_nano.stardist', pretrained=True)
    kwargs = dict(mpp=0.5, tile=256, overlap=64, batch_size=4, progress=False)
    if not slide.exists():
        folder.mkdir(exist_ok=True)
        tifffile.imwrite(slide, load_stardist_sample().image, ome=True, metadata={'axes': 'YXS'}, tile=(256, 256))
        segment_slide(model, slide, folder / 'torch', backend='torch', slide_mpp=0.5, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter('error', InferenceWarning)
        result = segment_slide(model, slide, folder / backend, backend=backend, slide_mpp=0.5, **kwargs)
    assert result.tiles_run == result.tiles == 9 and result.num_nuclei > 100
    for suffix in ('geojson', 'csv'):
        expected = (folder / 'torch' / f'stardist.ome.{suffix}').read_bytes()
        assert (folder / backend / f'stardist.ome.{suffix}').read_bytes() == expected
