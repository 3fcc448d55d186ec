"""Every way timm, huggingface_hub and torch.hub users load weights loads exactly the file named, verified
against the sha256 recorded for it, or refuses with a clear error (issue 9)."""

import functools
import http.server
import json
import re
import shutil
import threading

import pytest
import timm
import torch
from _hub_fixtures import ARCH, ARGS, make_card, populate_hf_cache, same_outputs, trained_model
from safetensors.torch import load_file, save_file

import zoo
from zoo.hub import ConfigError, Weights, WeightsError, WeightsHashError, WeightsShapeError, hub_dir, sha256_file
from zoo.publish import publish


def _weights_of(folder):
    return load_file(str(folder / 'model.safetensors'))


def _assert_loaded(model, tensors):
    state = model.state_dict()
    for key, tensor in tensors.items():
        assert torch.equal(state[key], tensor.to(state[key].dtype)), key


def _tamper(path):
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # deep inside a tensor: still a valid safetensors file
    path.write_bytes(bytes(data))


def _republish_config_hash(folder):
    config = json.loads((folder / 'config.json').read_text())
    config['sha256'] = sha256_file(folder / 'model.safetensors')
    (folder / 'config.json').write_text(json.dumps(config))


# ---------------------------------------------------------------------------------------------------------
# The hub's own folders, loaded the way timm's documentation and the Hub's model page tell users to


def test_local_dir_loads_that_folder_not_the_registry_default():
    folder = hub_dir() / 'cf_resnet18_fmnist_full_rank'
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    _assert_loaded(model, _weights_of(folder))
    default = zoo.create_model('cf_resnet18_fmnist', pretrained=True)  # the .cuttlefish weights
    assert not torch.equal(default.state_dict()['layer1.0.conv1.weight'], model.state_dict()['layer1.0.conv1.weight'])


@pytest.mark.parametrize('name', ['cf_resnet18_fmnist_full_rank', 'cf_resnet18_fmnist_cuttlefish_sr'])
def test_hf_hub_offline_cache_loads_the_repo_file(name, tmp_path):
    folder = hub_dir() / name
    populate_hf_cache(tmp_path / 'hf', f'zoo-test/{name}', folder)
    model = timm.create_model(f'hf-hub:zoo-test/{name}', pretrained=True, cache_dir=tmp_path / 'hf')
    _assert_loaded(model, _weights_of(folder))  # ranks come from the repo's config.json
    assert set(model.state_dict()) == set(_weights_of(folder))


def test_local_dir_roundtrip_and_pretrained_cfg_records_the_folder(published):
    folder, model, _ = published
    loaded = zoo.create_model(f'local-dir:{folder}', pretrained=True)
    same_outputs(model, loaded)
    assert loaded.pretrained_cfg['source'] == 'local-dir' and loaded.pretrained_cfg['file'] == str(folder)


def test_a_modified_copy_with_its_hash_updated_loads_its_own_weights(tmp_path):
    original = hub_dir() / 'cf_resnet18_fmnist_full_rank'
    copy = tmp_path / 'finetuned'
    shutil.copytree(original, copy)
    tensors = _weights_of(copy)
    tensors['fc.bias'] = tensors['fc.bias'] + 1.0
    save_file(tensors, str(copy / 'model.safetensors'))
    with pytest.raises(WeightsHashError, match='was modified'):  # the hash still names the original bytes
        timm.create_model(f'local-dir:{copy}', pretrained=True)
    _republish_config_hash(copy)
    for model in (
        timm.create_model(f'local-dir:{copy}', pretrained=True),
        timm.create_model(
            'cf_resnet18_fmnist', pretrained=True, pretrained_cfg_overlay=dict(file=str(copy / 'model.safetensors'))
        ),
        zoo.create_model('cf_resnet18_fmnist', checkpoint_path=copy / 'model.safetensors'),
    ):
        _assert_loaded(model, tensors)


def test_pretrained_cfg_overlay_file_is_loaded_and_verified(published):
    folder, model, _ = published
    loaded = timm.create_model(
        ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors')), **ARGS
    )
    same_outputs(model, loaded)
    _tamper(folder / 'model.safetensors')
    with pytest.raises(WeightsHashError):
        timm.create_model(
            ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors')), **ARGS
        )
    with pytest.raises(WeightsHashError):
        zoo.create_model(ARCH, checkpoint_path=folder / 'model.safetensors', **ARGS)


def test_overlay_file_takes_the_architecture_arguments_of_its_config():
    """Loading the Cuttlefish weights into the plain architecture name works: the ranks come with the file."""
    folder = hub_dir() / 'cf_resnet18_fmnist_cuttlefish_sr'
    model = timm.create_model(
        'cf_resnet18_fmnist', pretrained=True, pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors'))
    )
    _assert_loaded(model, _weights_of(folder))


def test_a_file_without_config_loads_with_a_warning_and_pickles_never(tmp_path, published):
    _, model, _ = published
    bare = tmp_path / 'bare' / 'weights.safetensors'
    bare.parent.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bare))
    with pytest.warns(UserWarning, match='loaded unverified'):
        same_outputs(model, zoo.create_model(ARCH, checkpoint_path=bare, **ARGS))
    pickle = tmp_path / 'bare' / 'model.pth'
    pickle.write_bytes(b'not read')
    with pytest.raises(WeightsError, match='pickle checkpoint, which the zoo never loads'):
        zoo.create_model(ARCH, checkpoint_path=pickle, **ARGS)


def test_a_folder_as_checkpoint_path_says_what_to_pass(published):
    folder, _, _ = published
    with pytest.raises(WeightsError) as e:
        zoo.create_model(ARCH, checkpoint_path=folder, **ARGS)
    assert str(e.value) == (
        f'cf_resnet18: {folder} is a folder; name its model.safetensors (checkpoint_path='
        f'\'{folder / "model.safetensors"}\'), or load the folder as "local-dir:{folder}"'
    )


def test_a_folder_with_only_a_pickle_is_refused(tmp_path, published):
    folder, _, _ = published
    (folder / 'model.safetensors').rename(folder / 'pytorch_model.bin')
    with pytest.raises(WeightsError, match='pytorch_model.bin, a pickle, which the zoo never loads'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_tampered_and_truncated_files_are_refused(published):
    folder, _, weights = published
    path = folder / 'model.safetensors'
    _tamper(path)
    with pytest.raises(WeightsHashError) as e:
        zoo.create_model(f'local-dir:{folder}', pretrained=True)
    assert str(path) in str(e.value) and weights.sha256 in str(e.value) and sha256_file(path) in str(e.value)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError):  # an unreadable header fails before any hashing
        zoo.create_model(f'local-dir:{folder}', pretrained=True)


# ---------------------------------------------------------------------------------------------------------
# Weights are data: a matching sha256 proves the bytes are the published ones, not that they are sane


def _nan_at(tensor, index=0):
    tensor = tensor.clone()
    tensor.view(-1)[index] = float('nan')
    return tensor


@pytest.mark.parametrize(
    'key, change, message',
    [
        ('fc.weight', lambda t: t.to(torch.int8), 'holds torch.int8 values where the architecture has torch.float32'),
        ('conv1.weight', lambda t: t > 0, 'holds torch.bool values where the architecture has torch.float32'),
        ('fc.bias', _nan_at, 'holds 1 NaN or infinite values of 10'),
        ('layer1.0.bn1.running_var', lambda t: t / 0, 'holds 8 NaN or infinite values of 8'),
    ],
)
def test_weights_with_wrong_dtypes_or_non_finite_values_are_refused_on_every_path(
    published, tmp_path, key, change, message
):
    folder, _, _ = published
    tensors = _weights_of(folder)
    tensors[key] = change(tensors[key])
    save_file(tensors, str(folder / 'model.safetensors'))
    _republish_config_hash(folder)  # the hash now matches: only the values can tell
    sha256 = sha256_file(folder / 'model.safetensors')
    populate_hf_cache(tmp_path / 'hf', 'org/bad', folder)
    for load in (
        lambda: zoo.create_model(f'local-dir:{folder}', pretrained=True),
        lambda: timm.create_model('hf-hub:org/bad', pretrained=True, cache_dir=tmp_path / 'hf'),
        lambda: zoo.create_model(ARCH, checkpoint_path=folder / 'model.safetensors', **ARGS),
        lambda: zoo.create_model(
            ARCH, pretrained=True, weights=Weights(sources=f'local:{folder}', sha256=sha256), **ARGS
        ),
    ):
        with pytest.raises(WeightsError, match=re.escape(f'model.safetensors: {key} {message}')):
            load()


# ---------------------------------------------------------------------------------------------------------
# config.json is data: nothing in it may locate weights or code, or ask for absurd allocations


def _edit_config(folder, edit):
    config = json.loads((folder / 'config.json').read_text())
    edit(config)
    (folder / 'config.json').write_text(json.dumps(config))


@pytest.mark.parametrize(
    'edit, named',
    [
        (
            lambda c: c['model_args'].update(pretrained_cfg_overlay={'file': '/elsewhere.safetensors'}),
            'model_args.pretrained_cfg_overlay',
        ),
        (lambda c: c['model_args'].update(checkpoint_path='/elsewhere.safetensors'), 'model_args.checkpoint_path'),
        (lambda c: c['pretrained_cfg'].update(url='http://127.0.0.1:1/x.pth'), 'pretrained_cfg.url'),
        (lambda c: c['pretrained_cfg'].update(file='/elsewhere.safetensors'), 'pretrained_cfg.file'),
        (lambda c: c['pretrained_cfg'].update(hf_hub_id='attacker/weights'), 'pretrained_cfg.hf_hub_id'),
        (lambda c: c['pretrained_cfg'].update(custom_load=True), 'pretrained_cfg.custom_load'),
        (lambda c: c.update(plugin='evil.module'), 'plugin: unknown key'),
        (lambda c: c['model_args'].update(num_classes=1e9), 'model_args.num_classes = 1000000000.0'),
        (lambda c: c['pretrained_cfg'].update(input_size=[1, 6000, 6000]), 'pretrained_cfg.input_size'),
        (lambda c: c.update(sha256='abc'), 'sha256: must be 64 lowercase hex digits'),
    ],
)
def test_config_keys_that_are_not_architecture_data_are_refused(published, edit, named):
    folder, _, _ = published
    _edit_config(folder, edit)
    with pytest.raises(ConfigError, match=named.replace('.', r'\.').replace('(', r'\(')):
        zoo.create_model(f'local-dir:{folder}', pretrained=True)


@pytest.mark.parametrize(
    'edit, named',
    [
        (lambda c: c['pretrained_cfg'].update(std=[0.2, 0.0, 0.2]), 'pretrained_cfg.std[1]: must be greater than 0'),
        (lambda c: c.update(label_names=['a', 'b']), 'label_names has 2 names for 10 classes'),
        (
            lambda c: c.update(label_names=[f'class {i}' for i in range(9)] + ['\x1b[2J']),
            "label_names[9]: must be printable text, got '\\x1b[2J'",
        ),
        (lambda c: c['pretrained_cfg'].update(label_names=['a']), 'pretrained_cfg.label_names has 1 names for 10'),
        (lambda c: c.pop('pretrained_cfg'), 'pretrained_cfg: missing (required)'),
        (
            lambda c: c['model_args'].update(ranks={'layer3.0.conv1': 999}),
            'its model_args do not build cf_resnet18: layer3.0.conv1: rank 999 outside [1, 32]',
        ),
        (
            lambda c: c['model_args'].update(ranks={'layer9.conv1': 4}),
            "its model_args do not build cf_resnet18: not factorizable layers of ResNet: ['layer9.conv1']",
        ),
        (lambda c: c['model_args'].update(widths=[8, 16, 32, 10**9]), 'model_args.widths[3] = 1000000000 must be'),
        (
            lambda c: c['model_args'].update(widths=[8, 16, 32, 65536]),
            'its model_args build cf_resnet18 with 115,987,099,222 parameters and buffers, more than the 2,147,483,648',
        ),
    ],
)
def test_config_values_that_are_well_typed_but_meaningless_are_refused_at_load(published, edit, named):
    """One line naming the file and the key, before anything is built, with or without loading the weights."""
    folder, _, _ = published
    _edit_config(folder, edit)
    for pretrained in (True, False):
        with pytest.raises(ConfigError) as e:
            zoo.create_model(f'local-dir:{folder}', pretrained=pretrained)
        assert str(e.value).startswith(f'{folder / "config.json"}: ') and named in str(e.value), str(e.value)
        assert '\n' not in str(e.value)
        if 'pretrained_cfg' in json.loads((folder / 'config.json').read_text()):  # else timm's parser fails first
            with pytest.raises(ConfigError, match=re.escape(named)):
                timm.create_model(f'local-dir:{folder}', pretrained=pretrained)


def test_timm_itself_refuses_a_redirecting_config_before_loading(published):
    folder, _, _ = published
    _edit_config(folder, lambda c: c['pretrained_cfg'].update(url='http://127.0.0.1:1/x.pth'))
    with pytest.raises(ConfigError, match='pretrained_cfg.url'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_config_is_validated_before_any_download(published):
    """A config pointing at a local server is refused before the server sees a request."""
    folder, _, _ = published
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_error(404)

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f'http://127.0.0.1:{server.server_address[1]}/x.pth'
        _edit_config(folder, lambda c: c['pretrained_cfg'].update(url=url))
        with pytest.raises(ConfigError):
            zoo.create_model(f'local-dir:{folder}', pretrained=True)
    finally:
        server.shutdown()
        server.server_close()
    assert requests == []


def test_a_config_head_that_does_not_fit_the_weights_is_an_error_not_a_random_head(published):
    folder, _, _ = published
    _edit_config(folder, lambda c: c['model_args'].update(num_classes=5))
    with pytest.raises(WeightsShapeError, match=r'fc.weight: file has \(10, 64\), model has \(5, 64\)'):
        zoo.create_model(f'local-dir:{folder}', pretrained=True)


def test_malformed_config_json(published):
    folder, _, _ = published
    (folder / 'config.json').write_text('{"architecture": ')
    with pytest.raises(ConfigError, match='is not valid JSON'):
        zoo.create_model(f'local-dir:{folder}', pretrained=True)


# ---------------------------------------------------------------------------------------------------------
# Shapes are compared before anything is allocated; only the adaptations the caller asks for happen


def test_wrong_architecture_lists_every_mismatch(published):
    folder, _, weights = published
    named = Weights(sources=f'local:{folder}', sha256=weights.sha256)
    with pytest.raises(WeightsShapeError) as e:
        zoo.create_model(ARCH, pretrained=True, weights=named, num_classes=10, widths=(8, 16, 32, 128))
    assert 'layer4.0.conv1.weight: file has (64, 32, 3, 3), model has (128, 32, 3, 3)' in str(e.value)
    # Ranks for a layer the weights hold dense factorize it after loading (zoo compress's SVD start), not a mismatch.
    small = zoo.create_model(ARCH, pretrained=True, weights=named, ranks={'layer3.0.conv1': 4}, **ARGS)
    assert small.state_dict()['layer3.0.conv1.conv_v.weight'].shape[0] == 4


def test_head_and_input_adaptation_the_caller_asks_for(published):
    """A different num_classes drops the classifier and in_chans=1 sums the stem, as timm does."""
    folder, model, _ = published
    five = zoo.create_model(f'local-dir:{folder}', pretrained=True, num_classes=5)
    assert five.fc.out_features == 5
    torch.testing.assert_close(five.layer1[0].conv1.weight, model.layer1[0].conv1.weight)
    grey = zoo.create_model(f'local-dir:{folder}', pretrained=True, in_chans=1)
    torch.testing.assert_close(grey.conv1.weight, model.conv1.weight.sum(1, keepdim=True))
    features = zoo.create_model(f'local-dir:{folder}', pretrained=True, features_only=True)
    assert len(features(torch.randn(1, 3, 32, 32))) == 5


def test_shapes_are_checked_on_the_meta_device_before_allocating(published, monkeypatch):
    folder, _, _ = published
    _edit_config(folder, lambda c: c['model_args'].update(num_classes=1_000_000))
    allocations = []
    real = torch.nn.Linear.__init__

    def tracking(self, *args, **kwargs):
        allocations.append(torch.empty(0).device.type)
        real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Linear, '__init__', tracking)
    with pytest.raises(WeightsShapeError):
        zoo.create_model(f'local-dir:{folder}', pretrained=True)
    assert allocations == ['meta'], 'the million-class head was only ever built on the meta device'


# ---------------------------------------------------------------------------------------------------------
# Sources of registered weights: URL, Hugging Face cache


@pytest.fixture
def http_server(published, monkeypatch):
    """The published folder served on 127.0.0.1, with downloads allowed (conftest sets HF_HUB_OFFLINE=1)."""
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', False)
    folder, _, _ = published
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


def test_url_source_downloads_once_and_verifies_every_load(published, http_server, tmp_path, monkeypatch):
    folder, model, info = published
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    weights = Weights(sources=f'{http_server}/model.safetensors', sha256=info.sha256)
    same_outputs(model, zoo.create_model(ARCH, pretrained=True, weights=weights, **ARGS))
    cached = list((tmp_path / 'torch_home' / 'hub' / 'checkpoints').iterdir())
    assert len(cached) == 1 and cached[0].name.startswith(info.sha256[:12])
    (folder / 'model.safetensors').unlink()  # the server can no longer provide it: the cache must be used
    same_outputs(model, zoo.create_model(ARCH, pretrained=True, weights=weights, **ARGS))
    # torch.hub only checks a hash when it downloads; the zoo checks the cached copy on every load
    cached[0].write_bytes(cached[0].read_bytes()[:-10] + bytes(10))
    with pytest.raises(WeightsHashError, match=str(cached[0])):
        zoo.create_model(ARCH, pretrained=True, weights=weights, **ARGS)


def test_url_with_wrong_hash_or_none_is_refused(published, http_server, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    weights = Weights(sources=f'{http_server}/model.safetensors', sha256='0' * 64)
    with pytest.raises(WeightsHashError, match='0' * 64):
        zoo.create_model(ARCH, pretrained=True, weights=weights, **ARGS)
    with pytest.raises(WeightsError, match='without a sha256'):
        timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(url=f'{http_server}/model.safetensors'))


def test_hf_hub_weights_entry_offline_from_cache(published, tmp_path):
    folder, model, info = published
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE  # set by conftest: nothing may touch the network
    commit = populate_hf_cache(tmp_path / 'hf', 'zoo-test/tiny', folder)
    for source in (f'hf-hub:zoo-test/tiny@{commit}', 'hf-hub:zoo-test/tiny'):
        weights = Weights(sources=source, sha256=info.sha256)
        same_outputs(model, zoo.create_model(ARCH, pretrained=True, weights=weights, cache_dir=tmp_path / 'hf', **ARGS))
    same_outputs(model, timm.create_model(f'hf-hub:zoo-test/tiny@{commit}', pretrained=True, cache_dir=tmp_path / 'hf'))
    snapshot = tmp_path / 'hf' / 'models--zoo-test--tiny' / 'snapshots' / commit / 'model.safetensors'
    _tamper(snapshot)
    with pytest.raises(WeightsHashError):
        timm.create_model(f'hf-hub:zoo-test/tiny@{commit}', pretrained=True, cache_dir=tmp_path / 'hf')


def test_hf_hub_offline_cache_miss_explains(tmp_path):
    weights = Weights(sources='hf-hub:zoo-test/absent', sha256='1' * 64)
    with pytest.raises(WeightsError, match='HF_HUB_OFFLINE'):
        zoo.create_model(ARCH, pretrained=True, weights=weights, cache_dir=tmp_path, **ARGS)


def test_hub_folders_and_files_stay_inside_the_hub_directory(published, tmp_path, monkeypatch):
    folder, _, weights = published  # outside the hub directory below
    hub = tmp_path / 'hub'
    (hub / 'real').mkdir(parents=True)
    monkeypatch.setenv('ZOO_HUB_DIR', str(hub))
    (hub / 'link').symlink_to(folder, target_is_directory=True)
    (hub / 'real' / 'model.safetensors').symlink_to(folder / 'model.safetensors')
    for name, outside in (('link', folder), ('../published', folder), ('real', folder / 'model.safetensors')):
        entry = Weights(sources=f'local:{name}', sha256=weights.sha256)
        with pytest.raises(WeightsError, match=f'resolves to {re.escape(str(outside))}, outside'):
            zoo.create_model(ARCH, pretrained=True, weights=entry, **ARGS)


def test_local_dir_files_stay_inside_the_folder(published, tmp_path):
    folder, _, _ = published
    copy = tmp_path / 'copy'
    copy.mkdir()
    shutil.copy(folder / 'config.json', copy / 'config.json')
    (copy / 'model.safetensors').symlink_to(folder / 'model.safetensors')
    with pytest.raises(
        WeightsError, match=r'copy/model.safetensors resolves to .*published/model.safetensors, outside'
    ):
        timm.create_model(f'local-dir:{copy}', pretrained=True)
    (copy / 'config.json').unlink()
    (copy / 'config.json').symlink_to(folder / 'config.json')
    with pytest.raises(WeightsError, match=r'copy/config.json resolves to .*published/config.json, outside'):
        zoo.create_model(f'local-dir:{copy}')


def test_no_retry_storm_when_the_hugging_face_hub_fails(tmp_path, monkeypatch):
    """One request, one line: huggingface_hub alone retries a failing request five times, for about 30 s."""
    import huggingface_hub.constants

    requests = []

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            requests.append(self.path)
            self.send_error(503)

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f'http://127.0.0.1:{server.server_address[1]}'
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', endpoint)
    monkeypatch.setattr(
        huggingface_hub.constants, 'HUGGINGFACE_CO_URL_TEMPLATE', endpoint + '/{repo_id}/resolve/{revision}/{filename}'
    )
    entry = Weights(sources='hf-hub:zoo-test/tiny@' + 'a' * 40, sha256='1' * 64)
    try:
        with pytest.raises(WeightsError) as e:
            zoo.create_model(ARCH, pretrained=True, weights=entry, cache_dir=tmp_path, **ARGS)
        assert len(requests) == 1 and '503' in str(e.value) and '\n' not in str(e.value), (requests, str(e.value))
        server.shutdown()  # nothing listens now: the Hub cannot be reached, and the cache has no file
        server.server_close()
        with pytest.raises(
            WeightsError, match='is not in the Hugging Face cache .* and the Hugging Face Hub cannot be reached'
        ):
            zoo.create_model(ARCH, pretrained=True, weights=entry, cache_dir=tmp_path, **ARGS)
    finally:
        server.shutdown()
        server.server_close()


def test_missing_weights_and_unknown_names():
    with pytest.raises(WeightsError, match='No pretrained weights for cf_resnet50'):
        zoo.create_model('cf_resnet50', pretrained=True)
    with pytest.raises(zoo.UnknownModelError, match='Did you mean: cf_resnet18'):
        zoo.create_model('cf_resnet19')
    with pytest.raises(zoo.UnknownModelError, match="no tag 'nope'"):
        zoo.create_model('cf_resnet18.nope')
    with pytest.raises(WeightsError, match='/nonexistent/folder/config.json does not exist'):
        zoo.create_model('local-dir:/nonexistent/folder', pretrained=True)


def test_an_unknown_architecture_in_a_config(published):
    folder, _, _ = published
    _edit_config(folder, lambda c: c.update(architecture='cf_resnet19'))
    with pytest.raises(zoo.UnknownModelError, match='Did you mean: cf_resnet18'):
        zoo.create_model(f'local-dir:{folder}', pretrained=True)


def test_weights_entry_validates_itself():
    with pytest.raises(ValueError, match='64 lowercase hex'):
        Weights(sources='local:x', sha256='abc')
    with pytest.raises(ValueError, match="weights source 'ftp://host/x' must start with local:, release:, hf-hub:"):
        Weights(sources='ftp://host/x', sha256='0' * 64)


def test_publish_then_load_every_way_gives_the_same_model(tmp_path):
    model = trained_model(seed=3)
    folder = tmp_path / 'hub' / 'tiny'
    weights = publish(model, folder, make_card())
    populate_hf_cache(tmp_path / 'hf', 'org/tiny', folder)
    loads = [
        zoo.create_model(f'local-dir:{folder}', pretrained=True),
        timm.create_model('hf-hub:org/tiny', pretrained=True, cache_dir=tmp_path / 'hf'),
        zoo.create_model(ARCH, pretrained=True, weights=weights, **ARGS),
        zoo.create_model(ARCH, checkpoint_path=folder / 'model.safetensors', **ARGS),
    ]
    for loaded in loads:
        same_outputs(model, loaded)
