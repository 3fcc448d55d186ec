"""``zoo publish`` and ``zoo list`` against a hub: what would be refused is refused before any work, nothing the
user did not ask to replace is replaced, and errors and warnings are one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _hub_fixtures import ARCH, ARGS, trained_model
from safetensors.torch import save_file

from training.cli import main
from training.publish import publish_run
from zoo.publish import PublishError

REPO = Path(__file__).resolve().parents[2]


def _weights_file(tmp_path) -> Path:
    path = tmp_path / 'weights.safetensors'
    save_file({k: v.contiguous() for k, v in trained_model().state_dict().items()}, str(path))
    return path


def _publish_args(weights: Path, out: Path, *extra: str) -> list[str]:
    return ['publish', str(weights), str(out), '--model', ARCH, '--model-args', json.dumps(ARGS), *extra]


def _one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(prefix), err
    return err.strip()


def test_an_existing_file_is_never_replaced_by_a_folder(tmp_path, capsys):
    out = tmp_path / 'notes.txt'
    out.write_text('my notes')
    for extra in ((), ('--overwrite',)):
        assert main(_publish_args(_weights_file(tmp_path), out, *extra)) == 2
        assert 'notes.txt is a file; a published model is a folder' in _one_line(capsys, 'zoo publish: error: ')
        assert out.read_text() == 'my notes'


def test_a_registered_tag_is_replaced_only_with_overwrite(tmp_path, capsys):
    hub, weights = tmp_path / 'hub', _weights_file(tmp_path)
    assert main(_publish_args(weights, hub / 'first', '--register', f'{ARCH}.tiny')) == 0
    capsys.readouterr()
    manifest = (hub / 'manifest.json').read_text()
    assert main(_publish_args(weights, hub / 'second', '--register', f'{ARCH}.tiny')) == 2
    assert f'{ARCH}.tiny is already registered in {hub / "manifest.json"}; pass --overwrite' in _one_line(
        capsys, 'zoo publish: error: '
    )
    assert (hub / 'manifest.json').read_text() == manifest and not (hub / 'second').exists()
    assert main(_publish_args(weights, hub / 'second', '--register', f'{ARCH}.tiny', '--overwrite')) == 0
    assert json.loads((hub / 'manifest.json').read_text())[f'{ARCH}.tiny']['sources'] == ['local:second']


@pytest.mark.parametrize(
    'name, message',
    [
        (ARCH, 'use "architecture.tag"'),
        (f'{ARCH}.Tiny-1', 'use "architecture.tag"'),
        ('cf_vgg19.tiny', f'cannot register {ARCH} weights as'),
    ],
)
def test_an_invalid_register_name_fails_before_anything_is_written(tmp_path, capsys, name, message):
    out = tmp_path / 'hub' / 'tiny'
    assert main(_publish_args(_weights_file(tmp_path), out, '--register', name)) == 2
    assert message in _one_line(capsys, 'zoo publish: error: ')
    assert not (tmp_path / 'hub').exists()


def _run_without_weights(tmp_path) -> Path:
    """A run directory whose best/ has a run.json but no weights: any work on it fails, but not a refusal."""
    run = tmp_path / 'run'
    (run / 'best').mkdir(parents=True)
    info = dict(model_name=ARCH, model_args=ARGS, recipe=dict(name='none', task={}), metrics={})
    (run / 'best' / 'run.json').write_text(json.dumps(info))
    return run


def test_publish_run_refuses_before_it_re_evaluates(tmp_path):
    run = _run_without_weights(tmp_path)
    card = dict(model_id=None, title='t', summary='', intended_use='', limitations='')
    existing = tmp_path / 'existing.txt'
    existing.write_text('kept')
    with pytest.raises(PublishError, match='existing.txt is a file'):
        publish_run(run, existing, **card)
    with pytest.raises(PublishError, match='cannot register cf_resnet18 weights as'):
        publish_run(run, tmp_path / 'hub' / 'x', register_as='cf_vgg19.x', **card)
    hub = tmp_path / 'hub'
    hub.mkdir()
    (hub / 'manifest.json').write_text(
        json.dumps({f'{ARCH}.x': dict(sources=['local:x'], sha256='0' * 64)}), encoding='utf-8'
    )
    with pytest.raises(PublishError, match=f'{ARCH}.x is already registered'):
        publish_run(run, hub / 'x', register_as=f'{ARCH}.x', **card)
    assert existing.read_text() == 'kept' and sorted(os.listdir(hub)) == ['manifest.json']


def test_publish_run_refuses_nan_weights_before_it_re_evaluates(tmp_path, capsys):
    import torch

    run = _run_without_weights(tmp_path)  # its recipe cannot be evaluated: only a refusal before that passes
    state = {k: v.contiguous() for k, v in trained_model().state_dict().items()}
    state['fc.weight'][0, 0] = torch.nan
    save_file(state, str(run / 'best' / 'model.safetensors'))
    assert main(['publish', str(run), str(tmp_path / 'out')]) == 2
    assert _one_line(capsys, 'zoo publish: error: ') == (
        f'zoo publish: error: {ARCH}: {run / "best" / "model.safetensors"}: fc.weight holds 1 NaN or infinite values '
        f'of {state["fc.weight"].numel():,}; the weights are damaged (or their training diverged)'
    )
    assert not (tmp_path / 'out').exists()


def test_unverified_weights_warn_in_one_line(tmp_path, capsys):
    assert main(_publish_args(_weights_file(tmp_path), tmp_path / 'out')) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith('zoo publish: warning: cf_resnet18: '), err
    assert err[0].endswith('it is loaded unverified. `zoo publish` records one.')


def test_a_malformed_manifest_makes_zoo_list_fail_in_one_line_not_import_zoo(tmp_path):
    hub = tmp_path / 'hub'
    hub.mkdir()
    (hub / 'manifest.json').write_text('{"cf_resnet18.x": ')
    result = subprocess.run(
        [sys.executable, '-m', 'training.cli', 'list'],
        env=dict(os.environ, ZOO_HUB_DIR=str(hub)),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.startswith(f'zoo list: error: {hub / "manifest.json"} is not valid JSON: ')
    assert result.stderr.count('\n') == 1, result.stderr
