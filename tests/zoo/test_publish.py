"""Publishing: the folder layout, config.json written by timm's exporter, cards from structured data, atomic
replacement, the manifest the registry reads, and timm's own exports round-tripping every model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from _hub_fixtures import ARCH, make_card, populate_hf_cache, same_outputs, trained_model

import zoo
from zoo.cards import read_card, render_folder, sync_cards
from zoo.hub import hub_dir, sha256_file
from zoo.publish import PublishError, publish

REPO = Path(__file__).resolve().parents[2]


def test_publish_layout_and_config(published):
    folder, model, weights = published
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'card.json', 'config.json', 'model.safetensors']
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == ARCH and config['num_classes'] == 10
    assert config['model_args']['widths'] == [8, 16, 32, 64]
    assert config['sha256'] == weights.sha256 == sha256_file(folder / 'model.safetensors')
    assert config['pretrained_cfg']['input_size'] == [3, 32, 32]
    assert not {'file', 'url', 'hf_hub_id', 'source'} & set(config['pretrained_cfg'])
    timm.models.PretrainedCfg(**config['pretrained_cfg'])  # timm's own parser accepts it
    assert weights.num_params == sum(p.numel() for p in model.parameters())
    assert sorted(os.listdir(folder.parent)) == ['published']  # no staging folder left behind


def test_card_is_rendered_from_structured_data(published):
    folder, _, weights = published
    text = (folder / 'README.md').read_text()
    front = yaml.safe_load(text.split('---')[1])
    assert front['library_name'] == 'timm' and front['datasets'] == ['unit-test']
    result = front['model-index'][0]['results'][0]
    assert result['metrics'] == [dict(type='accuracy', value=12.5, name='top1')]
    assert front['pipeline_tag'] == 'image-classification' and result['dataset']['type'] == 'unit-test'
    assert weights.sha256 in text and f'{weights.num_params:,}' in text
    assert 'zoo train --recipe recipes/none.yaml' in text
    assert read_card(folder).num_params == weights.num_params
    assert render_folder(folder) == text  # README.md is exactly what card.json + config.json render


def test_publishing_does_not_touch_the_model(tmp_path):
    model = trained_model().train()  # counting MACs must not move BatchNorm statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    publish(model, tmp_path / 'pub', make_card())
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_publishing_is_byte_reproducible(published, tmp_path):
    # The manifest pins each file's sha256, so republishing the same weights must give the same bytes.
    folder, model, weights = published
    hashes = {publish(model, tmp_path / f'again{i}', make_card()).sha256 for i in range(3)}
    assert hashes == {weights.sha256}


def test_fp16_publish_halves_the_file(published, tmp_path):
    folder, model, weights = published
    half = publish(model, tmp_path / 'half', make_card(), dtype=torch.float16)
    assert half.file_size_mb < 0.6 * weights.file_size_mb
    loaded = zoo.create_model(f'local-dir:{tmp_path / "half"}', pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-2, atol=1e-2)
    assert next(model.parameters()).dtype == torch.float32  # the published model itself is untouched


def test_published_files_are_readable_by_others(published):
    folder, _, _ = published
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o044, f'{path.name} is private'


@pytest.mark.parametrize('umask', [0o022, 0o027])
def test_the_published_folder_gets_the_users_umask(tmp_path, umask):
    saved = os.umask(umask)
    try:
        publish(trained_model(), tmp_path / 'pub', make_card())
    finally:
        os.umask(saved)
    assert (tmp_path / 'pub').stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700


def test_weights_that_are_not_finite_are_not_published(tmp_path):
    model = trained_model()
    with torch.no_grad():
        model.fc.bias[3] = float('nan')
    with pytest.raises(zoo.WeightsError, match=r'fc.bias holds 1 NaN or infinite values of 10'):
        publish(model, tmp_path / 'pub', make_card())
    assert not (tmp_path / 'pub').exists()


def test_a_non_empty_target_is_replaced_only_on_request_and_atomically(published, tmp_path):
    folder, model, weights = published
    (folder / 'old_overlay.png').write_bytes(b'left over from an earlier model')
    other = trained_model(seed=1)
    with pytest.raises(PublishError, match='exists and is not empty; pass --overwrite'):
        publish(other, folder, make_card())
    assert (folder / 'old_overlay.png').exists() and sha256_file(folder / 'model.safetensors') == weights.sha256
    new = publish(other, folder, make_card(), overwrite=True)
    assert not (folder / 'old_overlay.png').exists()  # the folder is replaced, not merged
    assert sha256_file(folder / 'model.safetensors') == new.sha256 != weights.sha256
    assert sorted(os.listdir(folder.parent)) == ['published']


def test_a_failed_publish_leaves_the_old_folder_and_no_debris(published, monkeypatch):
    folder, model, weights = published
    monkeypatch.setattr('zoo.publish.render_card', lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        publish(trained_model(seed=2), folder, make_card(), overwrite=True)
    assert sha256_file(folder / 'model.safetensors') == weights.sha256
    assert sorted(os.listdir(folder.parent)) == ['published']


def test_register_writes_the_manifest_the_registry_reads(tmp_path):
    hub = tmp_path / 'hub'
    weights = publish(
        trained_model(seed=4), hub / 'tiny', make_card(model_id=f'{ARCH}.tiny'), register_as=f'{ARCH}.tiny'
    )
    manifest = json.loads((hub / 'manifest.json').read_text())
    assert manifest[f'{ARCH}.tiny']['sha256'] == weights.sha256 and manifest[f'{ARCH}.tiny']['sources'] == [
        'local:tiny'
    ]
    with pytest.raises(PublishError, match='cannot register cf_resnet18 weights as'):
        publish(trained_model(), hub / 'other', make_card(), register_as='cf_vgg19.tiny')
    # A fresh process with this hub directory loads the weights by name, with their architecture arguments.
    script = (
        'import zoo, torch; from safetensors.torch import load_file\n'
        f'm = zoo.create_model("{ARCH}.tiny", pretrained=True)\n'
        f'w = load_file("{hub / "tiny" / "model.safetensors"}")\n'
        'assert all(torch.equal(m.state_dict()[k], v) for k, v in w.items())\n'
        f'print(zoo.list_models(pretrained=True, tags=True))\n'
    )
    result = subprocess.run(
        [sys.executable, '-c', script],
        env=dict(os.environ, ZOO_HUB_DIR=str(hub)),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert f"'{ARCH}.tiny'" in result.stdout


# ---------------------------------------------------------------------------------------------------------
# timm's own exporters round-trip every family (Cuttlefish ranks included) through a Hub-layout folder

EXPORTED = [
    ('cf_resnet18_fmnist.cuttlefish_sr', True),  # published factorized weights: per-layer ranks
    ('cf_resnet18', False),
    ('cf_vgg19', False),
    ('cf_deit_small', False),
    ('mrl_nano', False),
    ('mrl_nano_fmnist.fmnist', True),
    ('mrl_seg_nano.stardist', True),
]


@pytest.mark.parametrize('name, pretrained', EXPORTED, ids=[n for n, _ in EXPORTED])
def test_timm_save_for_hf_round_trips(name, pretrained, tmp_path):
    model = zoo.create_model(name, pretrained=pretrained).eval()
    if name == 'cf_resnet18':  # factorized by arguments, not by published weights
        model = zoo.create_model(name, rank_ratio=0.25).eval()
    timm.models.save_for_hf(model, tmp_path / 'export', safe_serialization=True)
    populate_hf_cache(tmp_path / 'hf', 'org/export', tmp_path / 'export')
    with pytest.warns(UserWarning, match='loaded unverified'):  # timm's export records no sha256
        loads = [
            timm.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True),
            timm.create_model('hf-hub:org/export', pretrained=True, cache_dir=tmp_path / 'hf'),
        ]
    for loaded in loads:
        assert loaded.state_dict().keys() == model.state_dict().keys()
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_timm_push_to_hf_hub_round_trips_cuttlefish_ranks(tmp_path, monkeypatch):
    """push_to_hf_hub's real code path, with the upload landing in an offline Hugging Face cache."""

    class OfflineApi:
        def __init__(self, **kwargs):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type('RepoUrl', (), {'repo_id': repo_id})()

        def file_exists(self, **kwargs):
            return False

        def upload_folder(self, repo_id, folder_path, **kwargs):
            populate_hf_cache(tmp_path / 'hf', repo_id, Path(folder_path))

    monkeypatch.setattr('timm.models._hub.HfApi', OfflineApi)
    model = zoo.create_model('cf_resnet18_fmnist.cuttlefish_sr', pretrained=True)
    timm.models.push_to_hf_hub(model, 'org/cuttlefish', safe_serialization=True)
    with pytest.warns(UserWarning, match='loaded unverified'):
        loaded = timm.create_model('hf-hub:org/cuttlefish', pretrained=True, cache_dir=tmp_path / 'hf')
    assert timm.models.get_model_args(loaded)['ranks'] == timm.models.get_model_args(model)['ranks']
    same_outputs(model, loaded, channels=1)


def test_zoo_publish_round_trips_through_the_hf_cache(tmp_path):
    model = zoo.create_model('cf_resnet18_fmnist.cuttlefish_sr', pretrained=True)
    publish(model, tmp_path / 'pub', make_card(task='image-classification'))
    populate_hf_cache(tmp_path / 'hf', 'org/pub', tmp_path / 'pub')
    same_outputs(model, timm.create_model('hf-hub:org/pub', pretrained=True, cache_dir=tmp_path / 'hf'), channels=1)


# ---------------------------------------------------------------------------------------------------------
# The hub in the repository


def test_model_cards_agree_with_their_structured_data():
    assert sync_cards(hub_dir(), REPO / 'model_cards', check=True) == [], 'run `zoo cards`'


def test_cards_render_into_both_places(tmp_path):
    hub = tmp_path / 'hub'
    shutil.copytree(hub_dir() / 'mrl_seg_nano_stardist', hub / 'mrl_seg_nano_stardist')
    (hub / 'mrl_seg_nano_stardist' / 'README.md').unlink()
    written = sync_cards(hub, tmp_path / 'model_cards')
    assert sorted(p.name for p in written) == ['README.md', 'mrl_seg_nano_stardist.md']
    card = (tmp_path / 'model_cards' / 'mrl_seg_nano_stardist.md').read_text()
    assert '](../hub/mrl_seg_nano_stardist/stardist_dsb2018_r0_c0_overlay.png)' in card
    assert 'fluorescence microscopy of nuclei' in card  # the card states its input domain
    assert sync_cards(hub, tmp_path / 'model_cards', check=True) == []


@pytest.mark.parametrize(
    'hub,message',
    [
        ('nothing', '{hub}: no such hub directory; check the path'),
        ('a_file', '{hub}: is a file, not a hub directory; check the path'),
        ('.', '{hub}: no folder in it has a card.json; check the path'),
    ],
)
def test_zoo_cards_refuses_a_hub_without_cards(capsys, tmp_path, hub, message):
    from training.cli import main

    (tmp_path / 'a_file').write_text('not a hub')
    hub = tmp_path / hub
    assert main(['cards', '--hub-dir', str(hub), '--model-cards', str(tmp_path / 'mc')]) == 2
    assert capsys.readouterr().err == f'zoo cards: error: {message.format(hub=hub)}\n'
    assert not (tmp_path / 'mc').exists()


@pytest.mark.parametrize(
    'change,message',
    [
        (
            lambda card: card.update(figures=['../../../etc/passwd']),
            "figures: '../../../etc/passwd' is not an image file in {folder}; a card shows only its own",
        ),
        (
            lambda card: card.update(figures=['absent.png']),
            "figures: 'absent.png' is not an image file in {folder}; a card shows only its own",
        ),
        (lambda card: card.update(evil=1), 'evil: unknown key'),
        (lambda card: card.update(metrics='high'), "metrics: must be an object, got 'high'"),
    ],
    ids=['outside', 'absent', 'unknown', 'wrong_type'],
)
def test_a_card_json_that_is_not_a_card_is_refused_naming_the_key(capsys, tmp_path, change, message):
    from training.cli import main

    hub = tmp_path / 'hub'
    shutil.copytree(hub_dir() / 'mrl_seg_nano_stardist', hub / 'mrl_seg_nano_stardist')
    path = hub / 'mrl_seg_nano_stardist' / 'card.json'
    card = json.loads(path.read_text())
    change(card)
    path.write_text(json.dumps(card))
    readme = (hub / 'mrl_seg_nano_stardist' / 'README.md').read_bytes()
    assert main(['cards', '--hub-dir', str(hub), '--model-cards', str(tmp_path / 'mc')]) == 2
    message = message.format(folder=path.parent)
    assert capsys.readouterr().err == f'zoo cards: error: {path}: {message}\n'  # before anything is written
    assert (hub / 'mrl_seg_nano_stardist' / 'README.md').read_bytes() == readme and not (tmp_path / 'mc').exists()
