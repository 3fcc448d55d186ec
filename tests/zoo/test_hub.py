"""Weight sources, config.json validation, torch.hub entry points, and no pickles anywhere."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import timm
import torch
from _hub_fixtures import ARCH, ARGS, same_outputs

import zoo
from zoo.hub import ConfigError, Source, SourceError, Weights, parse_source
from zoo.hub_config import check_config

REPO = Path(__file__).resolve().parents[2]


def test_one_parser_for_every_weight_source():
    assert parse_source('hf-hub:org/name@abc') == Source('hf-hub', 'org/name', 'abc')
    assert parse_source('hf-hub:org/name') == Source('hf-hub', 'org/name', None)
    assert parse_source('https://x/y.safetensors') == Source('url', 'https://x/y.safetensors')
    assert parse_source('local:name').folder == zoo.hub.hub_dir() / 'name'
    assert parse_source('local:/abs/folder').folder == Path('/abs/folder')
    assert str(parse_source('hf-hub:org/name@abc')) == 'hf-hub:org/name@abc'
    release = parse_source('release:cf_resnet18_fmnist@v0.1.0')
    assert (
        release == Source('release', 'cf_resnet18_fmnist', 'v0.1.0')
        and str(release) == 'release:cf_resnet18_fmnist@v0.1.0'
    )
    with pytest.raises(ValueError, match='must start with'):
        parse_source('s3://bucket/x')
    for bad in ('release:a/b@v1', 'release:name', 'release:..@v1'):
        with pytest.raises(SourceError, match='must be release:FOLDER@REVISION'):
            parse_source(bad)


def test_release_url_is_one_setting(monkeypatch):
    source = parse_source('release:cf_resnet18_fmnist@v0.1.0')
    monkeypatch.delenv('ZOO_HUB_URL', raising=False)
    assert source.url == zoo.hub.HUB_URL.replace('{revision}', 'v0.1.0') + '/cf_resnet18_fmnist/model.safetensors'
    monkeypatch.setenv('ZOO_HUB_URL', 'http://mirror/zoo/{revision}/hub/')
    assert source.url == 'http://mirror/zoo/v0.1.0/hub/cf_resnet18_fmnist/model.safetensors'
    monkeypatch.setenv('ZOO_HUB_URL', 'http://mirror/hub')  # a mirror of one release
    assert source.url == 'http://mirror/hub/cf_resnet18_fmnist/model.safetensors'


@pytest.mark.parametrize('repo_id', ['org/name/extra', 'org//name', '../name', 'org/na me'])
def test_hf_hub_ids_are_checked_before_huggingface_hub_is_called(repo_id, monkeypatch):
    import huggingface_hub

    def called(*args, **kwargs):
        raise AssertionError('huggingface_hub was called')

    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', called)
    with pytest.raises(SourceError, match=f"weights source 'hf-hub:{re.escape(repo_id)}': Repo id must"):
        zoo.create_model(f'hf-hub:{repo_id}', pretrained=True)


def test_check_config_accepts_timm_exports_and_names_the_offending_key():
    good = dict(
        architecture=ARCH,
        num_classes=10,
        model_args=dict(num_classes=10, ranks={'layer3.0.conv1': 4}),
        pretrained_cfg=dict(input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.2] * 3, custom_load=False),
    )
    assert check_config(good, 'x', zoo._registry.config_args(ARCH)) == good
    with pytest.raises(ConfigError, match=r'x: model_args.block_fn is not an architecture argument'):
        check_config(dict(good, model_args=dict(block_fn='os.system')), 'x', zoo._registry.config_args(ARCH))
    with pytest.raises(ConfigError, match=r'x: pretrained_cfg.mean = \[0.5\] must be 3 finite numbers'):
        check_config(dict(good, model_args={}, pretrained_cfg=dict(input_size=[3, 8, 8], mean=[0.5])), 'x', ())
    with pytest.raises(ConfigError, match='must hold a JSON object'):
        check_config([1, 2], 'x', ())


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
    folder, model, weights = published
    loaded = torch.hub.load(str(REPO), ARCH, source='local', pretrained=True, weights=weights, **ARGS)
    same_outputs(model, loaded)
    tagged = torch.hub.load(str(REPO), 'cf_resnet18_fmnist.cuttlefish_sr', source='local', pretrained=True)
    assert (
        timm.models.get_model_args(tagged)['ranks']
        == zoo.get_weights('cf_resnet18_fmnist.cuttlefish_sr').model_args['ranks']
    )
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
        for call in re.findall(r'(?<![.\w])torch\.load\([^)]*\)', text):  # not safetensors.torch.load
            if 'weights_only=True' not in call:
                offenders.append(f'{path}: {call}')
        if re.search(r'^\s*import pickle|^\s*from pickle|pickle\.loads?\(', text, re.M):
            offenders.append(f'{path}: pickle')
    assert not offenders, offenders


# ---------------------------------------------------------------------------------------------------------
# The manifest is one validated document; a bad one is a one-line error, never an import crash

_ZERO = '0' * 64


@pytest.mark.parametrize(
    'text, message',
    [
        ('{"cf_resnet18.x": ', 'is not valid JSON: EOF while parsing'),
        ('[]', ': must be an object, got []'),
        (
            json.dumps({'cf_resnet18': dict(sources=['local:x'], sha256=_ZERO)}),
            ': cf_resnet18: must be "architecture.tag"',
        ),
        (json.dumps({'cf_resnet18.x': dict(sources=['local:x'], sha256=_ZERO, plugin=1)}), ".x'].plugin: unknown key"),
        (json.dumps({'cf_resnet18.x': dict(sources=['local:x'], sha256='abc')}), '.sha256: must be 64 lowercase hex'),
        (json.dumps({'cf_resnet18.x': dict(sources=['s3://x'], sha256=_ZERO)}), "sources[0]: weights source 's3://x'"),
        (json.dumps({'cf_resnet18.x': dict(sources=['local:../x'], sha256=_ZERO)}), 'must name a folder of the hub'),
        (json.dumps({'cf_resnet18.x': dict(sources=['local:/etc'], sha256=_ZERO)}), 'must name a folder of the hub'),
        (json.dumps({'cf_resnet18.x': dict(sources=[], sha256=_ZERO)}), '.sources: Value should have at least 1'),
        (
            json.dumps(
                {'cf_resnet18.x': dict(sources=['local:x'], sha256=_ZERO, metrics={'a': {'top1': float('nan')}})}
            ),
            ".x'].metrics.a.top1: must be a finite number",
        ),
    ],
)
def test_a_malformed_manifest_is_one_line_naming_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / 'manifest.json'
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        zoo.hub.read_manifest(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_a_manifest_entry_must_fit_its_architecture(monkeypatch):
    """Checked as the families register; the registry then refuses every lookup with the first problem."""
    from zoo import _registry

    def register(key, weights):
        monkeypatch.setattr(_registry, '_WEIGHTS', {key: weights})
        monkeypatch.setattr(_registry, '_PROBLEMS', [])
        _registry.zoo_cfgs({ARCH: _registry.base_cfg(ARCH)}, _registry.config_args(ARCH))

    register(f'{ARCH}.x', Weights(sources='local:x', sha256=_ZERO, model_args={'block_fn': 'os.system'}))
    for lookup in (zoo.list_models, lambda: zoo.model_info(ARCH), lambda: zoo.create_model(ARCH)):
        with pytest.raises(ConfigError, match=rf'manifest.json: {ARCH}.x: model_args.block_fn is not an architecture'):
            lookup()
    register(f'{ARCH}.x', Weights(sources='local:x', sha256=_ZERO, pretrained_cfg={'url': 'http://elsewhere/x'}))
    with pytest.raises(ConfigError, match=r'pretrained_cfg.url would say where weights or code come from'):
        zoo.list_models(pretrained=True)
    register('cf_resnet19.x', Weights(sources='local:x', sha256=_ZERO))
    with pytest.raises(ConfigError, match=r'manifest.json: cf_resnet19.x: the zoo has no such architecture'):
        zoo.get_weights('cf_resnet19.x')


# ---------------------------------------------------------------------------------------------------------
# zoo list: parameters and MACs are counted once per architecture, not on every call


def test_architectures_are_counted_once_and_published_tags_come_from_the_manifest(tmp_path, monkeypatch):
    from zoo import _registry

    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    _registry._stored_facts.cache_clear()  # as in a new process
    try:
        info = zoo.model_info('cf_resnet18')
        assert (info['num_params'], info['input_size']) == (11_173_962, (3, 32, 32))
        stored_path = tmp_path / 'cuttlefish-mrl-zoo' / 'architecture_facts.json'
        stored = json.loads(stored_path.read_text())
        assert stored['facts']['["cf_resnet18", {}]'] == [info['num_params'], info['macs'], [3, 32, 32]]

        def no_building(*args, **kwargs):
            raise AssertionError('a model was built to count it')

        _registry._stored_facts.cache_clear()  # a new process reads the file and builds nothing
        monkeypatch.setattr(timm, 'create_model', no_building)
        assert zoo.model_info('cf_resnet18') == info
        tag = zoo.model_info('cf_resnet18_fmnist.cuttlefish')
        weights = zoo.get_weights('cf_resnet18_fmnist.cuttlefish')
        assert (tag['num_params'], tag['macs'], tag['input_size']) == (weights.num_params, weights.macs, (1, 28, 28))

        stored_path.write_text(json.dumps(dict(stored, fingerprint='of other code')))
        _registry._stored_facts.cache_clear()  # counts of other code are not used
        with pytest.raises(AssertionError, match='a model was built to count it'):
            zoo.model_info('cf_resnet18')
    finally:
        _registry._stored_facts.cache_clear()
