"""Weight sources, config.json validation, torch.hub entry points, and no pickles anywhere."""

import importlib.util
import re
from pathlib import Path

import pytest
import timm
import torch
from _hub_fixtures import ARCH, ARGS, same_outputs

import zoo
from zoo.hub import ConfigError, Source, SourceError, parse_source
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
