"""Every published weight loads from the checkout with no network, through timm, torch.hub and the zoo,
and still measures what its card says on held-out data (never used for training or model selection)."""

from pathlib import Path

import pytest
import timm
import torch

import zoo
from training.publish import evaluate_weights
from training.recipe import load_recipe
from zoo._registry import read_config
from zoo.hub import hub_dir

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = zoo.list_models(pretrained=True, tags=True)
# Evaluation on CPU is deterministic up to float summation order; allow a little for other machines.
TOLERANCE = {'top1': 0.3, 'top5': 0.3, 'dice': 0.01, 'aji': 0.01, 'aji_plus': 0.01, 'dq': 0.01, 'sq': 0.01, 'pq': 0.01}


def test_something_is_published():
    assert {
        'cf_resnet18_fmnist.cuttlefish',
        'cf_resnet18_fmnist.full_rank',
        'mrl_nano_fmnist.fmnist',
        'mrl_seg_nano.stardist',
    } <= set(PUBLISHED)


@pytest.mark.parametrize('key', PUBLISHED)
def test_hub_folder_matches_the_manifest(key):
    weights = zoo.get_weights(key)
    local, release = (zoo.hub.parse_source(text) for text in weights.sources)
    folder = local.folder
    assert folder.parent == hub_dir(), 'published weights live in the checkout'
    assert release.kind == 'release' and release.location == folder.name, 'and are downloadable from the release'
    config = read_config(folder)
    assert config['sha256'] == weights.sha256 and config['architecture'] == key.split('.')[0]
    assert config['model_args'] == weights.model_args
    assert config['input_domain'] == weights.input_domain
    card = (folder / 'README.md').read_text()
    assert weights.sha256 in card and f'{weights.num_params:,}' in card
    for split, values in weights.metrics.items():
        assert split in card
        for name, value in values.items():
            assert f'| {split} | {name} | {value:.4g} |' in card
    assert (folder / 'model.safetensors').stat().st_size / 2**20 == pytest.approx(weights.file_size_mb, abs=0.01)


@pytest.mark.parametrize('key', PUBLISHED)
def test_published_weights_reproduce_their_card(key):
    weights = zoo.get_weights(key)
    model = timm.create_model(key, pretrained=True)
    assert sum(p.numel() for p in model.parameters()) == weights.num_params
    measured = evaluate_weights(model, load_recipe(weights.recipe))
    for split, values in weights.metrics.items():
        for name, value in values.items():
            assert measured[name] >= value - TOLERANCE[name], f'{key} {split} {name}: {measured[name]} < card {value}'


@pytest.mark.parametrize('key', PUBLISHED)
def test_torch_hub_and_zoo_load_the_same_weights(key):
    by_hub = torch.hub.load(str(REPO), key, source='local', pretrained=True)
    by_zoo = zoo.create_model(key, pretrained=True)
    assert by_hub.state_dict().keys() == by_zoo.state_dict().keys()
    for name, tensor in by_hub.state_dict().items():
        assert torch.equal(tensor, by_zoo.state_dict()[name]), name


def test_bare_name_loads_the_default_tag():
    """``cf_resnet18_fmnist`` with pretrained=True is the Cuttlefish model, ranks and all (the issue's example)."""
    model = torch.hub.load(str(REPO), 'cf_resnet18_fmnist', source='local', pretrained=True)
    assert (
        timm.models.get_model_args(model)['ranks']
        == zoo.get_weights('cf_resnet18_fmnist.cuttlefish').model_args['ranks']
    )
    tagged, twin = (
        zoo.create_model(f'cf_resnet18_fmnist.{tag}', pretrained=True) for tag in ('cuttlefish', 'full_rank')
    )
    assert all(torch.equal(v, tagged.state_dict()[k]) for k, v in model.state_dict().items())
    assert not all(
        torch.equal(v, twin.state_dict()[k]) for k, v in model.state_dict().items() if k in twin.state_dict()
    )
    plain = zoo.create_model('cf_resnet18_fmnist')  # without weights: the plain full-rank architecture
    assert 'ranks' not in timm.models.get_model_args(plain)
