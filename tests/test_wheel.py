"""A wheel gives the published weights too (issue 23): built from the sources into a temporary folder, unpacked
outside the checkout, with the checkout's ``hub/`` served by a local ``http.server`` as the release location,
it loads every published tag with ``timm.create_model`` and ``torch.hub.load`` exactly as the checkout does;
a tampered file is refused by its hash, a filled cache works offline, and neither is one clear line."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from safetensors.torch import load_file

import zoo
from training.cli import main

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter whose zoo is the unpacked wheel; argv[1] is a JSON object of settings. The
# release location is the checkout's hub/ on a local http.server, stopped halfway.
LOADER = r"""
import contextlib, functools, http.server, io, json, os, sys, threading
settings = json.loads(sys.argv[1])
import huggingface_hub.constants, timm, torch, zoo
from safetensors.torch import save_file
from training.cli import main

assert zoo.__file__.startswith(settings['site']), zoo.__file__  # the wheel's zoo, not the checkout's


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder):
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f'http://127.0.0.1:{server.server_address[1]}'


def load_every_tag(tags, torch_hub):
    outputs = {}
    for tag in tags:
        models = {'timm': timm.create_model(tag, pretrained=True)}
        if torch_hub:
            models['torch.hub'] = torch.hub.load(settings['hubconf'], tag, source='local', pretrained=True)
        for how, model in models.items():
            channels, side = model.pretrained_cfg['input_size'][:2]
            torch.manual_seed(0)
            with torch.no_grad():
                y = model.eval()(torch.randn(1, channels, min(side, 64), min(side, 64)))
            outputs.update({f'{how}/{tag}/{k}': v for k, v in (y if isinstance(y, dict) else {'out': y}).items()})
    return outputs


def error_line(tag):
    try:
        timm.create_model(tag, pretrained=True)
    except zoo.WeightsError as e:
        return f'{type(e).__name__}: {e}'


(server, url), (tampered, tampered_url) = serve(settings['hub']), serve(settings['tampered'])
os.environ.update(ZOO_HUB_URL=url, TORCH_HOME=settings['cache'])
report = dict(url=url, tampered_url=tampered_url, tags=zoo.list_models(pretrained=True, tags=True))
save_file(load_every_tag(report['tags'], torch_hub=True), settings['online'])
with contextlib.redirect_stdout(io.StringIO()) as listing:
    main(['list'])
report['list'] = listing.getvalue()
os.environ.update(ZOO_HUB_URL=tampered_url, TORCH_HOME=settings['tampered_cache'])
report['tampered'] = error_line(report['tags'][0])
for stopped in (server, tampered):
    stopped.shutdown()
    stopped.server_close()
os.environ.update(ZOO_HUB_URL=url, TORCH_HOME=settings['cache'])
save_file(load_every_tag(report['tags'], torch_hub=False), settings['offline'])
os.environ['TORCH_HOME'] = settings['empty_cache']
report['neither'] = error_line(report['tags'][0])
huggingface_hub.constants.HF_HUB_OFFLINE = True
report['neither_offline'] = error_line(report['tags'][0])
print(json.dumps(report))
"""


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the sources (setuptools would otherwise write build/ and *.egg-info into the
    checkout and could reuse a stale build/): no network, no build isolation, no dependencies."""
    tmp = tmp_path_factory.mktemp('wheel')
    source = tmp / 'source'
    source.mkdir()
    for name in ('pyproject.toml', 'README.md'):
        shutil.copy(REPO / name, source / name)
    for package in ('zoo', 'training'):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns('__pycache__'))
    command = [sys.executable, '-m', 'pip', 'wheel', str(source), '--no-deps', '--no-build-isolation', '-q']
    subprocess.run([*command, '-w', str(tmp / 'dist')], check=True, capture_output=True)
    (path,) = (tmp / 'dist').glob('*.whl')
    return path


def test_the_wheel_carries_the_index_no_weights_and_only_declared_dependencies(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        index = archive.read('zoo/manifest.json')
        metadata = archive.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
    assert index == (REPO / 'zoo' / 'manifest.json').read_bytes()  # one file, not a copy that can drift
    assert {n.split('/')[0] for n in names} == {'zoo', 'training', 'cuttlefish_mrl_zoo-0.1.0.dist-info'}
    assert not [n for n in names if n.endswith(('.safetensors', '.bin', '.pth', '.pt'))]
    assert wheel.stat().st_size < 1_000_000
    tomllib = pytest.importorskip('tomllib')  # Python 3.11+
    project = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']
    declared = set(project['dependencies'])
    declared |= {f'{r}; extra == "{e}"' for e, reqs in project['optional-dependencies'].items() for r in reqs}
    required = [
        line.removeprefix('Requires-Dist: ') for line in metadata.splitlines() if line.startswith('Requires-Dist')
    ]
    assert {Requirement(r) for r in required} == {Requirement(r) for r in declared}


def _checkout_outputs(tags) -> dict:
    outputs = {}
    for tag in tags:
        model = zoo.create_model(tag, pretrained=True).eval()
        channels, side = model.pretrained_cfg['input_size'][:2]
        torch.manual_seed(0)
        with torch.no_grad():
            y = model(torch.randn(1, channels, min(side, 64), min(side, 64)))
        outputs.update({f'{tag}/{k}': v for k, v in (y if isinstance(y, dict) else {'out': y}).items()})
    return outputs


def test_an_installed_wheel_loads_every_published_tag_as_the_checkout_does(wheel, tmp_path, capsys):
    site, hubconf = tmp_path / 'site', tmp_path / 'hubconf'  # no hub/ next to site/: not a checkout
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    hubconf.mkdir()
    shutil.copy(REPO / 'hubconf.py', hubconf / 'hubconf.py')  # torch.hub's entry points, with the wheel's zoo
    tags = zoo.list_models(pretrained=True, tags=True)
    first = zoo.get_weights(tags[0])
    folder = zoo.hub.parse_source(first.sources[0]).location
    tampered = tmp_path / 'tampered'
    shutil.copytree(REPO / 'hub' / folder, tampered / folder)
    data = bytearray((tampered / folder / 'model.safetensors').read_bytes())
    data[-100] ^= 0xFF  # still a readable safetensors file: only the hash can tell
    (tampered / folder / 'model.safetensors').write_bytes(bytes(data))
    settings = {name: str(tmp_path / name) for name in ('cache', 'tampered_cache', 'empty_cache', 'online', 'offline')}
    settings.update(site=str(site), hubconf=str(hubconf), hub=str(REPO / 'hub'), tampered=str(tampered))
    env = {k: v for k, v in os.environ.items() if not k.startswith(('ZOO_', 'PYTHONPATH'))}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE='0', HF_HOME=str(tmp_path / 'hf'))
    result = subprocess.run(
        [sys.executable, '-c', LOADER, json.dumps(settings)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])

    assert report['tags'] == tags
    assert main(['list']) == 0
    assert report['list'] == capsys.readouterr().out  # zoo list is the same from the wheel
    expected = _checkout_outputs(tags)
    for phase in ('online', 'offline'):  # served by http.server, then from the cache with the server stopped
        outputs = load_file(settings[phase])
        assert {k.split('/', 1)[1] for k in outputs} == set(expected)
        for key, value in outputs.items():
            assert torch.equal(value, expected[key.split('/', 1)[1]]), key
    cached = sorted(p.name for p in (tmp_path / 'cache' / 'hub' / 'checkpoints').iterdir())
    assert cached == sorted(f'{zoo.get_weights(t).sha256[:12]}-model.safetensors' for t in tags)

    served = f'{report["tampered_url"]}/{folder}/model.safetensors'
    assert report['tampered'].startswith(f'WeightsHashError: {served} served a file with sha256 ')
    assert f'but {first.sha256} was expected: it is corrupt or was modified, and was not kept' in report['tampered']
    assert not list((tmp_path / 'tampered_cache' / 'hub' / 'checkpoints').iterdir())
    for line, reason in (
        (report['neither'], 'Connection refused'),
        (report['neither_offline'], 'HF_HUB_OFFLINE=1 forbids downloading it'),
    ):
        assert line.startswith(f'WeightsError: {tags[0]}: its weights cannot be found here: ') and '\n' not in line
        assert f'{report["url"]}/{folder}/model.safetensors' in line and reason in line, line
        assert str(tmp_path / 'empty_cache' / 'hub' / 'checkpoints') in line, line
