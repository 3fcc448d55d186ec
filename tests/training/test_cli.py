"""The ``zoo`` command line, run in-process through ``zoo.cli.main``."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import zoo
from training.cli import main


def test_list_table(capsys):
    assert main(['list']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ['name', 'task', 'params', 'MACs', 'measured', 'weights']
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert set(rows) == set(zoo.list_models())
    assert rows['cf_resnet50'][2] == '25.56M' and rows['cf_resnet50'][3] == '4.09G'


def test_list_pattern(capsys):
    assert main(['list', 'cf_*resnet50*']) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == ['cf_resnet50', 'cf_wide_resnet50_2']


def test_info_json(capsys):
    assert main(['info', 'cf_resnet18']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['num_params'] == 11_173_962 and info['input_size'] == [3, 32, 32]
    assert info['paper_ids'] == ['arXiv:2305.02538', 'arXiv:1512.03385']


def test_unknown_model_suggests_close_matches(capsys):
    assert main(['info', 'cf_resnet81']) == 2
    err = capsys.readouterr().err
    assert "Unknown model 'cf_resnet81'" in err and 'Did you mean: cf_resnet18' in err


def test_predict_without_weights_is_a_clear_error(capsys, tmp_path):
    Image.new('RGB', (32, 32)).save(tmp_path / 'x.png')
    assert main(['predict', 'cf_resnet50', str(tmp_path / 'x.png')]) == 2
    assert 'No pretrained weights for cf_resnet50' in capsys.readouterr().err


def test_publish_then_predict(capsys, tmp_path):
    model = zoo.create_model('cf_resnet18', num_classes=3, widths=(8, 16, 32, 64)).eval()
    save_file(model.state_dict(), str(tmp_path / 'weights.safetensors'))
    args = [
        'publish',
        str(tmp_path / 'weights.safetensors'),
        str(tmp_path / 'out'),
        '--model',
        'cf_resnet18',
        '--model-args',
        '{"num_classes": 3, "widths": [8, 16, 32, 64]}',
        '--metric',
        'val:top1=41.5',
        '--dataset',
        'three-colour test images',
        '--title',
        'tiny',
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert (tmp_path / 'out' / 'model.safetensors').exists() and len(result['sha256']) == 64
    assert 'top1 | 41.5' in (tmp_path / 'out' / 'README.md').read_text()

    image = tmp_path / 'red.png'
    Image.fromarray(np.full((40, 40, 3), (255, 0, 0), np.uint8)).save(image)
    assert main(['predict', f'local-dir:{tmp_path / "out"}', str(image), '--topk', '2']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image) and len(lines) == 3
    x = torch.tensor((1.0, 0.0, 0.0))[:, None, None].expand(3, 32, 32)
    x = (x - torch.tensor(model.pretrained_cfg['mean'])[:, None, None]) / torch.tensor(model.pretrained_cfg['std'])[
        :, None, None
    ]
    with torch.no_grad():
        expected = model(x[None]).softmax(-1)[0].topk(2)
    assert lines[1].split()[1] == str(expected.indices[0].item())
    assert float(lines[1].split()[0].rstrip('%')) == pytest.approx(expected.values[0].item() * 100, abs=0.01)


def test_publish_rejects_weights_of_another_architecture(capsys, tmp_path):
    save_file({'fc.weight': torch.zeros(3, 3)}, str(tmp_path / 'w.safetensors'))
    assert main(['publish', str(tmp_path / 'w.safetensors'), str(tmp_path / 'out'), '--model', 'cf_resnet18']) == 2
    err = capsys.readouterr().err
    assert 'cf_resnet18: weights file' in err and 'fc.weight: file has (3, 3), model has (10, 512)' in err
    assert not (tmp_path / 'out').exists()
