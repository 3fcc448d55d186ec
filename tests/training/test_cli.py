"""The ``zoo`` command line, run in-process through ``zoo.cli.main``."""

import json

import numpy as np
import pytest
import torch
from _helpers import png_header_only
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


# ---------------------------------------------------------------------------------------------------------
# User errors: one line on stderr, exit status 2, nothing written. Interrupts: 130.

CLASSIFIER = 'cf_resnet18_fmnist.full_rank'
SEGMENTER = 'mrl_seg_nano.stardist'


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'zoo {command}: error: '), err
    return err.strip()


def _bad_image(tmp_path, kind):
    """A file of each kind the issue lists, and the end of the message it must give."""
    import tifffile

    path = tmp_path / f'{kind}.png'
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    if kind in ('truncated-png', 'truncated-jpeg'):
        Image.fromarray(image).save(path, format='PNG' if kind == 'truncated-png' else 'JPEG')
        path.write_bytes(path.read_bytes()[:300])
        return path, 'the file is damaged or incomplete'
    if kind == 'text':
        path.write_text('not an image\n')
        return path, 'not an image file (neither Pillow nor tifffile can read it)'
    if kind == 'zero-byte':
        path.write_bytes(b'')
        return path, 'the file is empty (0 bytes)'
    if kind == 'directory':
        path.mkdir()
        return path, 'is a directory, not an image file'
    if kind == 'missing':
        return path, 'no such file'
    if kind == 'multi-page-tiff':
        path = tmp_path / 'stack.tif'
        tifffile.imwrite(path, np.zeros((2, 64, 64), np.uint8), photometric='minisblack')
        return path, 'a TIFF with 2 pages (a stack, pyramid or slide); save the page to use as its own file'
    if kind == 'nan-tiff':
        path = tmp_path / 'nan.tif'
        values = np.ones((64, 64), np.float32)
        values[0, 0] = np.nan
        tifffile.imwrite(path, values)
        return path, '1 of 4,096 values are NaN or infinite; replace them (e.g. with 0) and save it again'
    assert kind == 'bomb'
    png_header_only(path, 20_000, 20_000)
    return path, 'set ZOO_MAX_IMAGE_PIXELS to a larger number to read it'


BAD_IMAGES = [
    'truncated-png',
    'truncated-jpeg',
    'text',
    'zero-byte',
    'directory',
    'missing',
    'multi-page-tiff',
    'nan-tiff',
    'bomb',
]


@pytest.mark.parametrize('model', [CLASSIFIER, SEGMENTER])
@pytest.mark.parametrize('kind', BAD_IMAGES)
def test_predict_refuses_bad_images_in_one_line(capsys, tmp_path, model, kind):
    path, message = _bad_image(tmp_path, kind)
    out_dir = tmp_path / 'out'
    assert main(['predict', model, str(path), '--out-dir', str(out_dir)]) == 2
    line = _one_error_line(capsys, 'predict')
    assert line.startswith(f'zoo predict: error: {path}: ') and line.endswith(message), line
    assert not out_dir.exists()  # nothing written


def test_debug_shows_the_traceback(tmp_path):
    from zoo.io import ImageReadError

    path, _ = _bad_image(tmp_path, 'text')
    for argv in (['predict', '--debug', CLASSIFIER, str(path)], ['--debug', 'predict', CLASSIFIER, str(path)]):
        with pytest.raises(ImageReadError, match='not an image file'):
            main(argv)


@pytest.mark.parametrize('topk', ['-3', '0', 'x'])
def test_topk_must_be_at_least_one(capsys, tmp_path, topk):
    Image.new('L', (28, 28)).save(tmp_path / 'x.png')
    with pytest.raises(SystemExit) as exit_:
        main(['predict', CLASSIFIER, str(tmp_path / 'x.png'), '--topk', topk])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"zoo predict: error: argument --topk: must be a whole number >= 1, got '{topk}' (see zoo predict --help)\n"
    )


def test_16_bit_and_float_tiffs_are_scaled_not_clipped(capsys, tmp_path):
    """The issue: a 16-bit grey TIFF was clipped to white ('Bag 99.37 %'), a float one became black."""
    import tifffile

    from training.data import load_fashion_mnist

    images, labels = load_fashion_mnist('test')
    image, label = images[0], int(labels[0])
    Image.fromarray(image).save(tmp_path / 'u8.png')
    tifffile.imwrite(tmp_path / 'u16.tif', image.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / 'f32.tif', image.astype(np.float32) / 255)
    paths = [str(tmp_path / n) for n in ('u8.png', 'u16.tif', 'f32.tif')]
    assert main(['predict', CLASSIFIER, *paths, '--topk', '1']) == 0
    lines = capsys.readouterr().out.splitlines()
    names = zoo.create_model(CLASSIFIER).pretrained_cfg['label_names']
    top = {lines[i]: lines[i + 1].split(maxsplit=1) for i in range(0, 6, 2)}
    assert {p: t[1] for p, t in top.items()} == dict.fromkeys(paths, names[label])  # 'Ankle boot' each time
    assert top[paths[2]] == top[paths[0]]  # floats in [0, 1] are exactly the 8-bit image
    assert abs(float(top[paths[1]][0].rstrip('%')) - float(top[paths[0]][0].rstrip('%'))) < 1


def test_an_input_outside_the_models_domain_is_warned_about(capsys, tmp_path, monkeypatch):
    import skimage.data

    create = zoo.create_model

    def with_domain(name, **kwargs):
        model = create(name, **kwargs)
        model.input_domain = {CLASSIFIER: 'fashion-mnist', SEGMENTER: 'fluorescence'}[name]
        return model

    monkeypatch.setattr(zoo, 'create_model', with_domain)
    photo = tmp_path / 'astronaut.png'
    Image.fromarray(skimage.data.astronaut()).save(photo)
    assert main(['predict', CLASSIFIER, str(photo)]) == 0
    err = capsys.readouterr()
    assert err.err == (
        f"zoo predict: warning: {photo}: does not look like the model's input (Fashion-MNIST: 28x28 grey product "
        'photos, a light object on a black background): it is a colour image (colourfulness 73; grey is 0); '
        'predictions may be meaningless\n'
    )
    assert err.out.splitlines()[0] == str(photo) and len(err.out.splitlines()) == 6  # it still predicts

    brightfield = tmp_path / 'brightfield.png'
    Image.fromarray(np.full((64, 64, 3), (230, 200, 220), np.uint8)).save(brightfield)
    assert main(['predict', SEGMENTER, str(brightfield), '--out-dir', str(tmp_path / 'out')]) == 0
    captured = capsys.readouterr()
    assert 'its background is light (median grey level 211 of 255), as in brightfield' in captured.err
    assert captured.err.count('\n') == 1 and 'nuclei' in captured.out


def _read_only(path, monkeypatch):
    """``path`` made read-only; as root, where permissions do not stop writes, the kernel's refusal is simulated."""
    import errno
    import os
    from pathlib import Path

    path.mkdir()
    path.chmod(0o555)
    if os.geteuid() == 0:
        mkdir = Path.mkdir

        def refuse(self, *args, **kwargs):
            if self.is_relative_to(path) and self != path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, 'mkdir', refuse)


def test_predict_into_a_read_only_directory(capsys, tmp_path, monkeypatch):
    from training.data import split_stardist_sample

    _, held_out = split_stardist_sample()
    image = tmp_path / 'tile.png'
    Image.fromarray(held_out[0].image).save(image)
    _read_only(tmp_path / 'locked', monkeypatch)
    out_dir = tmp_path / 'locked' / 'out'
    assert main(['predict', SEGMENTER, str(image), '--out-dir', str(out_dir)]) == 2
    assert _one_error_line(capsys, 'predict') == (
        f'zoo predict: error: {out_dir}: Permission denied; check the permissions or write elsewhere'
    )
    assert list((tmp_path / 'locked').iterdir()) == []


def test_predict_shows_a_tile_bar_for_a_large_image_even_in_a_log(capsys, tmp_path, monkeypatch):
    import training.cli.models

    image = tmp_path / 'tile.png'
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    assert main(['predict', SEGMENTER, str(image), '--out-dir', str(tmp_path / 'out')]) == 0
    assert capsys.readouterr().err == ''  # small, and stderr is no terminal
    monkeypatch.setattr(training.cli.models, 'PROGRESS_PIXELS', 64 * 64 - 1)
    assert main(['predict', SEGMENTER, str(image), '--out-dir', str(tmp_path / 'out')]) == 0
    assert '1/1 [' in capsys.readouterr().err  # one 128 px tile


def test_predict_onto_a_full_disk(capsys, tmp_path, monkeypatch):
    import errno
    import os

    image = tmp_path / 'tile.png'
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, 'fsync', full)  # where a full disk reports itself at the latest
    out_dir = tmp_path / 'out'
    assert main(['predict', SEGMENTER, str(image), '--out-dir', str(out_dir)]) == 2
    assert _one_error_line(capsys, 'predict') == (
        f'zoo predict: error: {out_dir / "tile_overlay.png"}: No space left on device; free some space or write '
        'elsewhere'
    )
    assert list(out_dir.iterdir()) == []  # no overlay, no temporary file


def test_ctrl_c_exits_130_and_says_the_run_resumes(capsys, monkeypatch):
    import training.trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.trainer, 'main', interrupted)
    assert main(['train', '--recipe', 'fmnist_resnet18']) == 130
    assert capsys.readouterr().err == (
        'zoo train: interrupted; run the same command again to resume from the last complete epoch\n'
    )
    assert main(['finetune', '--model', 'mrl_seg_nano']) == 130
    assert 'zoo finetune: interrupted; run the same command again to resume' in capsys.readouterr().err
    monkeypatch.setattr(zoo, 'create_model', interrupted)
    assert main(['predict', CLASSIFIER, 'x.png']) == 130
    assert capsys.readouterr().err == 'zoo predict: interrupted\n'
    with pytest.raises(KeyboardInterrupt):
        main(['predict', '--debug', CLASSIFIER, 'x.png'])


@pytest.mark.parametrize(
    'overrides,message',
    [
        (['epochs=0'], 'epochs: must be greater than or equal to 1, got 0'),
        (['epochs=-3'], 'epochs: must be greater than or equal to 1, got -3'),
        (['optim.lr=-0.1'], 'optim.lr: must be greater than 0, got -0.1'),
        (['batch.stages=[[0, 0]]'], 'batch.stages[0][1]: must be greater than or equal to 1, got 0'),
        (['optim.name=sgdd'], "optim.name: 'sgdd' is not one of 'sgd', 'adamw'; did you mean 'sgd'?"),
        (['schedule.decay=cosinee'], "schedule.decay: 'cosinee' is not one of 'step', 'cosine', 'constant'; did"),
        (['distributed.allreduce=tourus'], "distributed.allreduce: 'tourus' is not one of 'torus', 'ring'; did you"),
        (['task.name=detection'], "task.name: unknown task 'detection'; available: ['classification', 'distillation'"),
        (['batch.stages=[[0,'], "override 'batch.stages=[[0,': the value '[[0,' is not valid YAML"),
        (['model.args.foo=1'], 'model.args.foo: cf_resnet18_fmnist takes no such argument'),
        (['cuttlefish.presett=short'], "cuttlefish.presett: unknown key; CuttlefishSwitch takes: ['epsilon', "),
        # numbers against their meaning: 0, negative, NaN, inf, absurdly large
        (['seed=-1'], 'seed: must be greater than or equal to 0, got -1'),
        (['epochs=10000000'], 'epochs: must be less than or equal to 100000, got 10000000'),
        (['data.workers=100000'], 'data.workers: must be less than or equal to 64, got 100000'),
        (['distributed.timeout_s=1e300'], 'distributed.timeout_s: must be less than or equal to 10000000, got 1e+300'),
        (['optim.lr=.inf'], 'optim.lr: must be a finite number, got inf'),
        (['task.args.label_smoothing=.nan'], 'task.args.label_smoothing: expected float, got nan'),
        (['task.args.holdout=-5'], "task.args of 'classification': holdout must be from 0 to 59999 and input_size"),
        (['task.args.val_subset=0'], "task.args of 'classification': val_subset must be at least 1 (or null: all)"),
        (['cuttlefish.profile_repeats=0'], 'cuttlefish: cuttlefish.min_speedup must be a finite number > 0 and'),
        (['cuttlefish.epsilon=-1'], 'cuttlefish: cuttlefish.epsilon and relaxed thresholds must be finite and >= 0'),
    ],
)
def test_train_refuses_bad_recipes_before_any_work(capsys, tmp_path, overrides, message):
    run_dir = tmp_path / 'run'
    assert main(['train', '--recipe', 'fmnist_resnet18', '--run-dir', str(run_dir), *overrides]) == 2
    assert _one_error_line(capsys, 'train').startswith(f'zoo train: error: {message}')
    assert not run_dir.exists()


def test_train_refuses_a_list_shaped_recipe_file(capsys, tmp_path):
    (tmp_path / 'list.yaml').write_text('- epochs: 3\n- model: {name: cf_resnet18}\n')
    assert main(['train', '--recipe', str(tmp_path / 'list.yaml'), '--run-dir', str(tmp_path / 'run')]) == 2
    assert _one_error_line(capsys, 'train') == (
        f'zoo train: error: recipe {tmp_path / "list.yaml"} must be a mapping of keys (epochs: 10, '
        'model: {name: ...}, ...), got a list'
    )
    assert not (tmp_path / 'run').exists()


def test_finetune_refuses_a_classifier_bad_epochs_and_an_unknown_dataset(capsys, tmp_path):
    (tmp_path / 'data').mkdir()
    args = ['finetune', '--dataset', 'folder', '--data-dir', str(tmp_path / 'data'), '--run-dir', str(tmp_path / 'r')]
    assert main([*args, '--model', 'cf_resnet18']) == 2
    assert _one_error_line(capsys, 'finetune') == (
        'zoo finetune: error: model.name: cf_resnet18 is a model for image-classification, but task '
        "'nuclei-segmentation' trains models for nuclei-segmentation: hovernet, hovernet_fast, hovernet_original, "
        'mrl_seg_nano, mrl_seg_small, mrl_seg_tiny'
    )
    for epochs in ('0', '-3'):
        assert main([*args, '--model', 'mrl_seg_nano', '--epochs', epochs]) == 2
        assert _one_error_line(capsys, 'finetune') == (
            f'zoo finetune: error: epochs: must be greater than or equal to 1, got {epochs}'
        )
    assert main(['finetune', '--dataset', 'monuseg', '--run-dir', str(tmp_path / 'r')]) == 2
    assert _one_error_line(capsys, 'finetune') == (
        "zoo finetune: error: task.args of 'nuclei-segmentation': unknown nuclei dataset 'monuseg'; available: "
        "('stardist', 'kumar', 'consep', 'cpm17', 'pannuke', 'lizard', 'conic', 'monusac', 'folder', 'geojson')"
    )
    assert main(['finetune', '--run-dir', str(tmp_path / 'r'), 'task.args.overlap=200']) == 2
    assert _one_error_line(capsys, 'finetune') == (
        "zoo finetune: error: task.args of 'nuclei-segmentation': overlap must be a whole number from 0 to 128, got 200"
    )
    assert not (tmp_path / 'r').exists()


def test_finetune_epochs_keep_the_milestones_share_of_the_run(monkeypatch):
    import training.trainer

    calls = []
    monkeypatch.setattr(training.trainer, 'main', lambda recipe, overrides, run_dir: calls.append(overrides))
    assert main(['finetune', '--model', 'mrl_seg_nano', '--epochs', '10']) == 0  # histology_finetune: 25 of 50
    assert main(['finetune', '--model', 'mrl_seg_nano', '--epochs', '1']) == 0
    assert calls[0][-2:] == ['epochs=10', 'schedule.milestones=[5]']
    assert calls[1][-2:] == ['epochs=1', 'schedule.milestones=[]']


def test_a_bad_command_line_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(['predict'])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        'zoo predict: error: the following arguments are required: name, images (see zoo predict --help)\n'
    )


TINY_TRAIN = ['epochs=1', 'task.args.train_subset=128', 'task.args.val_subset=64', 'batch.stages=[[0, 64]]']
TINY_TRAIN += ['model.args.widths=[4,8,16,32]', 'log.progress=false', 'log.tensorboard=false']


def test_train_into_a_read_only_directory(capsys, tmp_path, monkeypatch):
    _read_only(tmp_path / 'locked', monkeypatch)
    run_dir = tmp_path / 'locked' / 'run'
    assert main(['train', '--recipe', 'fmnist_resnet18', '--run-dir', str(run_dir), *TINY_TRAIN]) == 2
    assert _one_error_line(capsys, 'train') == (
        f'zoo train: error: {run_dir}: Permission denied; check the permissions or write elsewhere'
    )
    assert list((tmp_path / 'locked').iterdir()) == []


def test_train_onto_a_full_disk_leaves_nothing_half_written(capsys, tmp_path, monkeypatch):
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, 'fsync', full)  # where a full disk reports itself at the latest
    run_dir = tmp_path / 'run'
    assert main(['train', '--recipe', 'fmnist_resnet18', '--run-dir', str(run_dir), *TINY_TRAIN]) == 2
    assert (
        _one_error_line(capsys, 'train')
        == f'zoo train: error: {run_dir / "recipe.yaml"}: No space left on device; free some space or write elsewhere'
    )
    # no partial recipe.yaml, no temporary file; only the run-directory lock, which holds no results
    assert [p.name for p in run_dir.rglob('*') if p.is_file()] == ['.lock']


def test_a_disk_that_fills_while_saving_leaves_no_staging_folder(capsys, tmp_path, monkeypatch):
    import errno
    import os

    fsync = os.fsync

    def full_for_best(fd):  # the disk fills up as best/ is written, after recipe.yaml and the first epoch
        if '.best.partial' in os.readlink(f'/proc/self/fd/{fd}'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, 'fsync', full_for_best)
    run_dir = tmp_path / 'run'
    assert main(['train', '--recipe', 'fmnist_resnet18', '--run-dir', str(run_dir), *TINY_TRAIN]) == 2
    assert _one_error_line(capsys, 'train') == (
        f'zoo train: error: {run_dir / ".best.partial" / "model.safetensors"}: No space left on device; free some '
        'space or write elsewhere'
    )
    # the staging folder of best/ is gone; only complete files and the run-directory lock remain
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith('.')) == ['.lock']


@pytest.mark.parametrize(
    'command,special,argv',
    [
        ('predict', 'x.png', [CLASSIFIER, '{special}']),
        ('predict', 'model/config.json', ['local-dir:{tmp}/model', '{tmp}/x.png']),
        ('segment-slide', 'x.svs', [SEGMENTER, '{special}', '--out', '{tmp}/out']),
        ('segment-slides', 'slides.txt', [SEGMENTER, '{special}', '--out', '{tmp}/out']),
        ('publish', 'w.safetensors', ['{special}', '{tmp}/out', '--model', 'cf_resnet18']),
        ('train', 'r.yaml', ['--recipe', '{special}', '--run-dir', '{tmp}/run']),
    ],
    ids=['image', 'config', 'slide', 'slide_list', 'weights', 'recipe'],
)
def test_a_named_pipe_given_as_a_file_is_refused_without_reading_it(capsys, tmp_path, command, special, argv):
    import os
    import signal

    special = tmp_path / special
    special.parent.mkdir(exist_ok=True)
    os.mkfifo(special)  # opening it for reading would wait for a writer forever
    argv = [a.format(special=special, tmp=tmp_path) for a in argv]

    def hung(*_):
        raise TimeoutError(f'zoo {command} opened {special}')

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        assert main([command, *argv]) == 2
    finally:
        signal.alarm(0)
    assert _one_error_line(capsys, command) == (
        f'zoo {command}: error: {special}: is a named pipe (FIFO), not a regular file; give a file'
    )


@pytest.mark.parametrize(
    'argv,option',
    [
        (['segment-slide', SEGMENTER, 'slide.svs', '--out', '{file}'], '--out'),
        (['predict', SEGMENTER, 'x.png', '--out-dir', '{file}/overlays'], '--out-dir'),
        (['train', '--recipe', 'fmnist_resnet18', '--run-dir', '{file}/run'], '--run-dir'),
        (['finetune', '--run-dir', '{file}'], '--run-dir'),
    ],
    ids=['segment-slide', 'predict', 'train', 'finetune'],
)
def test_an_output_folder_that_is_a_file_is_refused_naming_the_option(capsys, tmp_path, argv, option):
    (tmp_path / 'results').write_text('a file the user keeps')
    with pytest.raises(SystemExit) as exit_:
        main([arg.format(file=tmp_path / 'results') for arg in argv])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f'zoo {argv[0]}: error: argument {option}: {tmp_path / "results"} is a file, not a folder; give a folder '
        f'(created if missing) (see zoo {argv[0]} --help)\n'
    )
    assert (tmp_path / 'results').read_text() == 'a file the user keeps'
