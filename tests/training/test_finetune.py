"""`zoo finetune` on a folder dataset and `zoo predict` with a segmentation net, end to end."""

import csv
import json
import math
import re

import numpy as np
import tifffile
from _segment_oracle import synthetic_sample, write_qupath
from PIL import Image

import training.publish
from training.cli import main
from training.data import split_stardist_sample


def _write_folder(root, samples):
    for sample in samples:
        (root / 'images').mkdir(parents=True, exist_ok=True)
        (root / 'labels').mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.image).save(root / 'images' / f'{sample.name}.png')
        tifffile.imwrite(root / 'labels' / f'{sample.name}.tif', sample.inst_map.astype(np.uint16))


def test_finetune_on_a_folder_dataset(tmp_path, capsys):
    train, held_out = split_stardist_sample(tile_size=64)
    _write_folder(tmp_path / 'data' / 'train', train[:6])
    _write_folder(tmp_path / 'data' / 'val', held_out[:2])
    args = [
        'finetune',
        '--model',
        'mrl_seg_nano',
        '--dataset',
        'folder',
        '--data-dir',
        str(tmp_path / 'data'),
        '--epochs',
        '2',
        '--run-dir',
        str(tmp_path / 'run'),
        'task.args.patch_size=64',
        'task.args.step=64',
        'task.args.tile=64',
        'task.args.overlap=16',
        'batch.stages=[[0, 4]]',
        'batch.base=4',
        'log.progress=false',
        'log.tensorboard=false',
        'data.eval_batch=2',
    ]
    assert main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / 'run' / 'metrics.csv')))
    assert len(rows) == 2 and {'dice', 'aji', 'aji_plus', 'dq', 'sq', 'pq'} <= set(rows[0])
    assert all(0 <= float(r['dice']) <= 1 for r in rows)
    overlays = list((tmp_path / 'run' / 'best').glob('*_overlay.png'))
    assert len(overlays) == 2 and Image.open(overlays[0]).size == (128, 64)  # ground truth | prediction


def test_finetune_reports_a_wrong_layout(tmp_path, capsys):
    (tmp_path / 'data' / 'images').mkdir(parents=True)
    assert (
        main(
            [
                'finetune',
                '--dataset',
                'consep',
                '--data-dir',
                str(tmp_path / 'data'),
                '--epochs',
                '1',
                '--run-dir',
                str(tmp_path / 'run'),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(tmp_path / 'data') in err and 'Train/Images' in err


def test_predict_segments_nuclei_with_published_weights(tmp_path, capsys):
    _, held_out = split_stardist_sample()
    image = tmp_path / 'tile.png'
    Image.fromarray(held_out[0].image).save(image)
    assert main(['predict', 'mrl_seg_nano.stardist', str(image), '--out-dir', str(tmp_path / 'out')]) == 0
    out = capsys.readouterr().out
    assert 'nuclei' in out
    instances = tifffile.imread(tmp_path / 'out' / 'tile_instances.tif')
    assert instances.shape == held_out[0].inst_map.shape and instances.max() >= 3
    assert (tmp_path / 'out' / 'tile_overlay.png').exists()


def test_finetune_on_classified_qupath_annotations_publish_and_evaluate(tmp_path, capsys, monkeypatch):
    """The walkthrough's loop on a small real net (HoVer-Net's branches on timm's test_efficientnet, one epoch):
    --types turns QuPath classes into the model's types, the published folder names them (config.json
    label_names, what segment-slide writes into its GeoJSON), and zoo evaluate reads the annotations with those
    names without being told them again. A metric the test data cannot define (NaN: a type with no nucleus
    there, as one epoch on two tiles gives) is named on the card, not published."""
    names = ['Tumor', 'Immune cells', 'Stroma', 'Necrosis']
    write_qupath(
        tmp_path / 'data',
        [synthetic_sample('a', [(12, 12, 1), (40, 44, 3)]), synthetic_sample('b', [(20, 30, 2), (44, 12, 4)])],
        ['background', *names],
    )
    run = tmp_path / 'run'
    args = ['finetune', '--model', 'hovernet', '--encoder', 'test_efficientnet', '--dataset', 'geojson']
    args += ['--data-dir', str(tmp_path / 'data'), '--types', ','.join(names), '--epochs', '1', '--run-dir', str(run)]
    args += ['model.args.decoder_dims=[16, 16, 16, 8, 8]', 'task.args.val_fraction=0.5', 'task.args.patch_size=64']
    args += ['task.args.step=64', 'task.args.tile=64', 'task.args.overlap=16', 'batch.stages=[[0, 1]]']
    args += ['batch.base=1', 'log.progress=false', 'log.tensorboard=false', 'data.eval_batch=2']
    assert main(args) == 0
    info = json.loads((run / 'best' / 'run.json').read_text())
    assert info['model_args']['num_types'] == 5 and info['recipe']['task']['args']['types'] == names
    measure = training.publish.evaluate_weights
    monkeypatch.setattr(training.publish, 'evaluate_weights', lambda *a: {**measure(*a), 'f_c_2': math.nan})
    assert main(['publish', str(run), str(tmp_path / 'published')]) == 0
    card = (tmp_path / 'published' / 'README.md').read_text()
    assert '| f_c_2 |' not in card and 'nan' not in card.lower()
    assert re.search(r'Not defined on the test data \(no instance there\): [^.]*f_c_2', card)
    config = json.loads((tmp_path / 'published' / 'config.json').read_text())
    assert config['label_names'] == ['background', *names]
    capsys.readouterr()
    evaluate = ['evaluate', f'local-dir:{tmp_path / "published"}', '--dataset', 'geojson']
    assert main([*evaluate, '--data-dir', str(tmp_path / 'data'), '--split', 'val', '--out', str(tmp_path / 'ev')]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[-4:]] == ['f_c_1', 'f_c_2', 'f_c_3', 'f_c_4']
    assert table[-3].endswith('  Immune cells')
