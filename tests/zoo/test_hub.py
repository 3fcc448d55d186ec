"""Every weight source (local folder, URL, Hugging Face cache), tampering, shape checks, torch.hub."""

import functools
import http.server
import importlib.util
import json
import re
import shutil
import threading
from pathlib import Path

import pytest
import timm
import torch
import yaml

import zoo
from zoo.cards import ModelCard
from zoo.hub import Weights, WeightsError, WeightsHashError, WeightsShapeError, sha256_file
from zoo.publish import publish

REPO = Path(__file__).resolve().parents[2]
ARCH = 'cf_resnet18'
ARGS = dict(num_classes=10, widths=(8, 16, 32, 64))  # a small ResNet-18 keeps files tiny


def _card():
    return ModelCard(
        title='test model',
        summary='A model published by the test suite.',
        dataset='unit-test data',
        dataset_id='unit-test',
        metrics={'val': {'top1': 12.5}},
        recipe='recipes/none.yaml',
        command='zoo train --recipe recipes/none.yaml',
        model_id=ARCH,
    )


@pytest.fixture
def published(tmp_path):
    """A published folder and the model that wrote it."""
    model = zoo.create_model(ARCH, **ARGS).eval()
    for p in model.parameters():  # move away from the init so a fresh model cannot pass by accident
        p.data.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path / 'published'
    info = publish(model, folder, _card())
    return folder, model, info


def _same_outputs(a, b):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_publish_layout_and_config(published):
    folder, model, info = published
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == ARCH and config['num_classes'] == 10
    assert config['model_args']['widths'] == [8, 16, 32, 64]
    assert config['sha256'] == info['sha256'] == sha256_file(folder / 'model.safetensors')
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32]
    assert 'file' not in config['pretrained_cfg'] and 'hf_hub_id' not in config['pretrained_cfg']
    # timm's own config parser accepts it (the hf-hub: path of timm.create_model uses it)
    timm.models.PretrainedCfg(**{k: v for k, v in config['pretrained_cfg'].items()})
    assert info['num_params'] == sum(p.numel() for p in model.parameters())


def test_card_metadata_is_generated_from_results(published):
    folder, _, info = published
    text = (folder / 'README.md').read_text()
    front = yaml.safe_load(text.split('---')[1])
    assert front['library_name'] == 'timm' and front['datasets'] == ['unit-test']
    result = front['model-index'][0]['results'][0]
    assert result['metrics'] == [dict(type='accuracy', value=12.5, name='top1')]
    assert front['pipeline_tag'] == 'image-classification' and result['dataset']['type'] == 'unit-test'
    assert info['sha256'] in text and f'{info["num_params"]:,}' in text
    assert 'zoo train --recipe recipes/none.yaml' in text


def test_local_dir_roundtrip(published):
    folder, model, _ = published
    loaded = zoo.create_model(f'local-dir:{folder}', pretrained=True)
    _same_outputs(model, loaded)
    assert loaded.pretrained_cfg['file'] == str(folder / 'model.safetensors')


def test_publishing_is_byte_reproducible(published, tmp_path):
    # The registry pins each file's sha256, so republishing the same weights must give the same bytes.
    folder, model, info = published
    hashes = {publish(model, tmp_path / f'again{i}', _card())['sha256'] for i in range(4)}
    assert hashes == {info['sha256']}


def test_fp16_publish_halves_the_file(published, tmp_path):
    folder, model, info = published
    half = publish(model, tmp_path / 'half', _card(), dtype=torch.float16)
    assert half['file_size_mb'] < 0.6 * info['file_size_mb']
    loaded = zoo.create_model(f'local-dir:{tmp_path / "half"}', pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-2, atol=1e-2)


def test_tampered_file_is_refused(published):
    folder, _, info = published
    weights = folder / 'model.safetensors'
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped bit-pattern deep inside a tensor: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsHashError) as e:
        zoo.create_model(f'local-dir:{folder}', pretrained=True)
    message = str(e.value)
    assert str(weights) in message and info['sha256'] in message and sha256_file(weights) in message
    assert ARCH in zoo.hub.read_config(folder)['architecture']


def test_config_cannot_redirect_loading_to_unverified_weights(published):
    """A config.json edited to name another source still loads only the verified model.safetensors."""
    folder, model, _ = published
    config = json.loads((folder / 'config.json').read_text())
    config['pretrained_cfg'].update(source='hf-hub', hf_hub_id='attacker/weights', url='https://example.invalid/x')
    (folder / 'config.json').write_text(json.dumps(config))
    loaded = zoo.create_model(f'local-dir:{folder}', pretrained=True)
    _same_outputs(model, loaded)
    assert loaded.pretrained_cfg['file'] == str(folder / 'model.safetensors')
    assert not loaded.pretrained_cfg.get('hf_hub_id') and not loaded.pretrained_cfg.get('url')


def test_published_files_are_readable_by_others(published):
    folder, _, _ = published
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o044, f'{path.name} is private'


def test_truncated_file_is_refused(published):
    folder, _, info = published
    weights = folder / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(WeightsHashError, match=info['sha256']):
        zoo.create_model(f'local-dir:{folder}', pretrained=True)


def test_unreadable_file_with_matching_hash_names_the_file(tmp_path):
    bogus = tmp_path / 'model.safetensors'
    bogus.write_bytes(b'not a safetensors file at all')
    weights = Weights(source=f'local:{tmp_path}', sha256=sha256_file(bogus))
    with pytest.raises(WeightsError, match='not a readable safetensors file'):
        zoo.create_model(ARCH, pretrained=True, weights=weights, **ARGS)


def test_wrong_architecture_lists_every_mismatch(published):
    folder, _, info = published
    weights = Weights(source=f'local:{folder}', sha256=info['sha256'])
    with pytest.raises(WeightsShapeError) as e:
        zoo.create_model(ARCH, pretrained=True, weights=weights, num_classes=10, widths=(8, 16, 32, 128))
    message = str(e.value)
    assert 'layer4.0.conv1.weight: file has (64, 32, 3, 3), model has (128, 32, 3, 3)' in message
    with pytest.raises(WeightsShapeError, match=r'missing layer3.0.conv1.conv_v.weight'):
        zoo.create_model(ARCH, pretrained=True, weights=weights, ranks={'layer3.0.conv1': 4}, **ARGS)


def test_head_and_input_adaptation(published):
    """A different num_classes drops the classifier and in_chans=1 sums the stem, as timm does."""
    folder, model, info = published
    weights = Weights(source=f'local:{folder}', sha256=info['sha256'])
    five = zoo.create_model(ARCH, pretrained=True, weights=weights, **dict(ARGS, num_classes=5))
    assert five.fc.out_features == 5
    torch.testing.assert_close(five.layer1[0].conv1.weight, model.layer1[0].conv1.weight)
    grey = zoo.create_model(ARCH, pretrained=True, weights=weights, in_chans=1, **ARGS)
    torch.testing.assert_close(grey.conv1.weight, model.conv1.weight.sum(1, keepdim=True))
    features = zoo.create_model(ARCH, pretrained=True, weights=weights, features_only=True, **ARGS)
    assert len(features(torch.randn(1, 3, 32, 32))) == 5


@pytest.fixture
def http_server(published):
    folder, _, _ = published
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


def test_url_source_downloads_once_and_verifies_every_load(published, http_server, tmp_path, monkeypatch):
    folder, model, info = published
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    weights = Weights(source=f'{http_server}/model.safetensors', sha256=info['sha256'])
    _same_outputs(model, zoo.create_model(ARCH, pretrained=True, weights=weights, **ARGS))
    cached = list((tmp_path / 'torch_home' / 'hub' / 'checkpoints').iterdir())
    assert len(cached) == 1 and cached[0].name.startswith(info['sha256'][:12])
    (folder / 'model.safetensors').unlink()  # the server can no longer provide it: the cache must be used
    _same_outputs(model, zoo.create_model(ARCH, pretrained=True, weights=weights, **ARGS))
    # torch.hub only checks a hash when it downloads; the zoo checks the cached copy on every load
    cached[0].write_bytes(cached[0].read_bytes()[:-10])
    with pytest.raises(WeightsHashError, match=str(cached[0])):
        zoo.create_model(ARCH, pretrained=True, weights=weights, **ARGS)


def test_file_url_source(published, tmp_path, monkeypatch):
    folder, model, info = published
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    weights = Weights(source=(folder / 'model.safetensors').as_uri(), sha256=info['sha256'])
    _same_outputs(model, zoo.create_model(ARCH, pretrained=True, weights=weights, **ARGS))


def test_url_with_wrong_hash_is_refused(published, http_server, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    weights = Weights(source=f'{http_server}/model.safetensors', sha256='0' * 64)
    with pytest.raises(WeightsHashError, match='0' * 64):
        zoo.create_model(ARCH, pretrained=True, weights=weights, **ARGS)


def _populate_hf_cache(cache: Path, repo_id: str, folder: Path) -> str:
    """The layout huggingface_hub itself writes: refs/main -> commit, snapshots/<commit>/<files>."""
    commit = 'a' * 40
    repo = cache / f'models--{repo_id.replace("/", "--")}'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    shutil.copytree(folder, repo / 'snapshots' / commit)
    return commit


def test_hf_hub_source_offline_from_cache(published, tmp_path):
    folder, model, info = published
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # set by conftest: nothing may touch the network
    commit = _populate_hf_cache(tmp_path / 'hf', 'zoo-test/tiny', folder)
    for source in (f'hf-hub:zoo-test/tiny@{commit}', 'hf-hub:zoo-test/tiny'):
        weights = Weights(source=source, sha256=info['sha256'])
        loaded = zoo.create_model(ARCH, pretrained=True, weights=weights, cache_dir=tmp_path / 'hf', **ARGS)
        _same_outputs(model, loaded)
    # the whole published repo: architecture and arguments come from its config.json
    _same_outputs(model, zoo.create_model(f'hf-hub:zoo-test/tiny@{commit}', pretrained=True, cache_dir=tmp_path / 'hf'))


def test_hf_hub_offline_cache_miss_explains(tmp_path):
    weights = Weights(source='hf-hub:zoo-test/absent', sha256='1' * 64)
    with pytest.raises(WeightsError, match='HF_HUB_OFFLINE'):
        zoo.create_model(ARCH, pretrained=True, weights=weights, cache_dir=tmp_path, **ARGS)


def test_hf_hub_tampered_snapshot_is_refused(published, tmp_path):
    folder, _, info = published
    commit = _populate_hf_cache(tmp_path / 'hf', 'zoo-test/tiny', folder)
    snapshot_file = tmp_path / 'hf' / 'models--zoo-test--tiny' / 'snapshots' / commit / 'model.safetensors'
    snapshot_file.write_bytes(snapshot_file.read_bytes()[:-4] + b'\0\0\0\0')
    with pytest.raises(WeightsHashError):
        zoo.create_model(
            ARCH,
            pretrained=True,
            weights=Weights(source='hf-hub:zoo-test/tiny', sha256=info['sha256']),
            cache_dir=tmp_path / 'hf',
            **ARGS,
        )


def test_missing_weights_and_unknown_names():
    with pytest.raises(WeightsError, match='No pretrained weights for cf_resnet50'):
        zoo.create_model('cf_resnet50', pretrained=True)
    with pytest.raises(zoo.UnknownModelError, match='Did you mean: cf_resnet18'):
        zoo.create_model('cf_resnet19')
    with pytest.raises(zoo.UnknownModelError, match="no tag 'nope'"):
        zoo.create_model('cf_resnet18.nope')
    with pytest.raises(WeightsError, match='/nonexistent/folder/config.json does not exist'):
        zoo.create_model('local-dir:/nonexistent/folder', pretrained=True)


def test_weights_entry_validates_itself():
    with pytest.raises(ValueError, match='64 lowercase hex'):
        Weights(source='local:x', sha256='abc')
    with pytest.raises(ValueError, match='must start with one of'):
        Weights(source='ftp://host/x', sha256='0' * 64)


# ---------------------------------------------------------------------------------------------------------
# torch.hub


def _hubconf():
    spec = importlib.util.spec_from_file_location('hubconf_under_test', REPO / 'hubconf.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_hub_list_semantics():
    hubconf = _hubconf()
    # exactly what torch.hub.list computes
    entrypoints = [f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith('_')]
    assert {
        'cf_resnet18',
        'cf_resnet50',
        'cf_vgg19',
        'cf_deit_small',
        'mrl_tiny',
        'mrl_seg_nano',
        'cf_resnet18_fmnist.cuttlefish',
        'mrl_seg_nano.stardist',
    } <= set(entrypoints)
    assert 'dependencies' in dir(hubconf) and 'dependencies' not in entrypoints
    assert not any(name.startswith('_') for name in entrypoints)
    assert all(name.startswith(('cf_', 'mrl_', 'hovernet')) for name in entrypoints)
    assert 'CIFAR ResNet-18' in getattr(hubconf, 'cf_resnet18').__doc__  # what torch.hub.help prints


def test_torch_hub_load_local(published):
    folder, model, info = published
    weights = Weights(source=f'local:{folder}', sha256=info['sha256'])
    loaded = torch.hub.load(str(REPO), ARCH, source='local', pretrained=True, weights=weights, **ARGS)
    _same_outputs(model, loaded)
    with pytest.raises(RuntimeError, match='Cannot find callable cf_resnet19'):
        torch.hub.load(str(REPO), 'cf_resnet19', source='local')


def test_torch_hub_reports_missing_dependencies_before_importing_zoo():
    hubconf = _hubconf()
    hubconf.dependencies = [*hubconf.dependencies, 'surely_not_an_installed_package']
    assert dir(hubconf) == ['dependencies']
    with pytest.raises(RuntimeError, match='Missing dependencies: surely_not_an_installed_package'):
        torch.hub._load_entry_from_hubconf(hubconf, 'cf_resnet18')


def test_nothing_is_ever_unpickled():
    offenders = []
    for path in [
        *REPO.glob('zoo/**/*.py'),
        *REPO.glob('training/**/*.py'),
        REPO / 'hubconf.py',
        *REPO.glob('benchmarks/*.py'),
    ]:
        text = path.read_text()
        for call in re.findall(r'torch\.load\([^)]*\)', text):
            if 'weights_only=True' not in call:
                offenders.append(f'{path}: {call}')
        if re.search(r'^\s*import pickle|^\s*from pickle|pickle\.loads?\(', text, re.M):
            offenders.append(f'{path}: pickle')
    assert not offenders, offenders
