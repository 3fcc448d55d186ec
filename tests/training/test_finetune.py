"""`zoo finetune` on a folder dataset and `zoo predict` with a segmentation net, end to end."""

import csv

import numpy as np
import tifffile
from PIL import Image

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
