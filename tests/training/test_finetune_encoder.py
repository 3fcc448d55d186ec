"""`zoo finetune --model hovernet --encoder NAME`: HoVer-Net's branches on a timm encoder, trained end to end."""

import json

import pytest

import zoo
from training.cli import main

SMALL = [
    '--dataset',
    'stardist',
    '--epochs',
    '1',
    'task.args.patch_size=64',
    'task.args.step=64',
    'task.args.tile=64',
    'task.args.overlap=16',
    'batch.stages=[[0, 8]]',
    'batch.base=8',
    'log.progress=false',
    'log.tensorboard=false',
    'data.eval_batch=2',
]


def test_finetune_with_a_timm_encoder(tmp_path):
    assert (
        main(['finetune', '--model', 'hovernet', '--encoder', 'test_convnext', '--run-dir', str(tmp_path), *SMALL]) == 0
    )
    run = json.loads((tmp_path / 'best' / 'run.json').read_text())
    assert run['model_name'] == 'hovernet' and run['model_args'] == {'encoder': 'test_convnext'}
    with pytest.warns(UserWarning, match='loaded unverified'):  # a run's best weights have no published sha256
        model = zoo.create_model(
            run['model_name'], checkpoint_path=tmp_path / 'best' / 'model.safetensors', **run['model_args']
        )
    assert model.encoder_name == 'test_convnext'


def test_finetune_refuses_an_encoder_for_a_model_that_names_its_own(tmp_path, capsys):
    assert main(['finetune', '--encoder', 'resnet18', '--run-dir', str(tmp_path / 'run'), *SMALL]) == 2
    assert capsys.readouterr().err == (
        'zoo finetune: error: model.args of mrl_seg_tiny (encoder): mrl_seg_tiny is mrl_tiny with its decoder; for '
        "another encoder use 'hovernet' (encoder='resnet18', decoder_dims=[256, 128, 64, 32, 16] for the same "
        'decoder)\n'
    )
    assert not (tmp_path / 'run').exists()
