"""The Lizard and CoNIC readers on SYNTHETIC files written in the releases' formats: Lizard's PNG images, ``.mat``
labels (``inst_map`` int32, ``id``, ``class``, ``bbox``, ``centroid``) and ``info.csv`` (Filename, Source, Split);
CoNIC's ``images.npy`` (uint8 N x 256 x 256 x 3), ``labels.npy`` (uint16 N x 256 x 256 x 2) and ``patch_info.csv``.
None of it is Lizard or CoNIC data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from _segment_oracle import evaluate_refusal
from PIL import Image

from training.data import LIZARD_TYPE_NAMES, DatasetLayoutError, load_conic, load_lizard
from training.segmentation import NucleiSegmentationTask


def labelled(seed: int, height: int = 40, width: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image, an instance map with ids 1..4 and the types of those ids."""
    rng = np.random.default_rng(seed)
    inst_map = np.zeros((height, width), np.int32)
    for nucleus in range(1, 5):
        top, left = 4 + 8 * nucleus, 6 + 9 * nucleus
        inst_map[top : top + 5, left : left + 5] = nucleus
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8), inst_map, rng.integers(1, 7, 4)


def write_lizard(root: Path, rows: list[tuple[str, str, int]]) -> dict[str, tuple]:
    """Images in Lizard_Images1 or 2 (alternating), labels with ids listed in reverse order, and info.csv."""
    truth = {}
    (root / 'Lizard_Labels' / 'Labels').mkdir(parents=True, exist_ok=True)
    for index, (name, _, _) in enumerate(rows):
        image, inst_map, classes = labelled(index)
        folder = root / f'Lizard_Images{1 + index % 2}'
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f'{name}.png')
        ids = np.array([[4], [3], [2], [1]])
        scipy.io.savemat(
            root / 'Lizard_Labels' / 'Labels' / f'{name}.mat',
            {
                'inst_map': inst_map,
                'id': ids,
                'class': classes[ids[:, 0] - 1][:, None],
                'bbox': np.zeros((4, 4)),
                'centroid': np.zeros((4, 2)),
            },
        )
        truth[name] = (image, inst_map, np.r_[0, classes][inst_map])
    lines = ['Filename,Source,Split'] + [f'{name},{source},{split}' for name, source, split in rows]
    (root / 'Lizard_Labels' / 'info.csv').write_text('\n'.join(lines) + '\n')
    return truth


ROWS = [('consep_1', 'consep', 1), ('glas_3', 'glas', 3), ('crag_2', 'crag', 2), ('pannuke_4', 'pannuke', 3)]


def test_lizard_splits_and_types(tmp_path):
    truth = write_lizard(tmp_path, ROWS)
    test = load_lizard(tmp_path, 3)
    assert [s.name for s in test] == ['glas_3', 'pannuke_4']
    for sample in test:
        image, inst_map, type_map = truth[sample.name]
        np.testing.assert_array_equal(sample.image, image)
        np.testing.assert_array_equal(sample.inst_map, inst_map)
        np.testing.assert_array_equal(sample.type_map, type_map)
    task = NucleiSegmentationTask('lizard', str(tmp_path), num_types=7)
    assert task.type_names() == list(LIZARD_TYPE_NAMES)
    assert [[s.name for s in task.split_samples(p)] for p in ('train', 'val', 'test')] == [
        ['consep_1'],
        ['crag_2'],
        ['glas_3', 'pannuke_4'],
    ]


def _malformed_lizard(root: Path, kind: str) -> str:
    write_lizard(root, ROWS)
    info, labels = root / 'Lizard_Labels' / 'info.csv', root / 'Lizard_Labels' / 'Labels'
    mat = labels / 'glas_3.mat'
    if kind == 'missing image folders':
        for folder in ('Lizard_Images1', 'Lizard_Images2'):
            for path in (root / folder).iterdir():
                path.unlink()
            (root / folder).rmdir()
        return f'missing directories {root / "Lizard_Images1"} and {root / "Lizard_Images2"}; expected layout'
    if kind == 'missing label folder':
        for path in labels.iterdir():
            path.unlink()
        labels.rmdir()
        return f'missing directory {labels}; expected layout'
    if kind == 'missing info.csv':
        info.unlink()
        return f'missing file {info}; expected layout'
    if kind == 'info.csv without its columns':
        info.write_text('name,fold\nglas_3,3\n')
        return f"{info}: expected the columns ['Filename', 'Split'], found ['fold', 'name']"
    if kind == 'unknown split':
        info.write_text('Filename,Source,Split\nglas_3,glas,4\n')
        return f"{info}: glas_3 has Split '4'; Lizard splits are 1, 2, 3"
    if kind == 'filename without image':
        (root / 'Lizard_Images2' / 'glas_3.png').unlink()
        return f'{info} lists glas_3 but no Lizard_Images*/glas_3.png exists'
    if kind == 'filename without labels':
        mat.unlink()
        return f'missing label file {mat} for image {root / "Lizard_Images2" / "glas_3.png"}'
    content = scipy.io.loadmat(mat)
    if kind == 'unreadable .mat':
        mat.write_bytes(b'MATLAB 5.0, but not really')
        return f'{mat}: cannot read the MATLAB file'
    if kind == '.mat without class':
        del content['class']
        scipy.io.savemat(mat, {k: v for k, v in content.items() if not k.startswith('__')})
        return f"{mat} has no key 'class'"
    if kind == 'id and class of different lengths':
        content['class'] = content['class'][:3]
    elif kind == 'instance without id':
        content['id'], content['class'] = content['id'][:3], content['class'][:3]
    elif kind == 'class beyond 6':
        content['class'][0, 0] = 7
    elif kind == 'class not whole':
        content['class'] = content['class'].astype(float)
        content['class'][0, 0] = 2.5
    elif kind == 'negative id':
        content['id'][0, 0] = -1
    elif kind == 'inst_map id beyond int32':
        content['inst_map'] = content['inst_map'].astype(float) * 1e12
    else:  # inst_map of another size than the image
        content['inst_map'] = content['inst_map'][:-1]
    scipy.io.savemat(mat, {k: v for k, v in content.items() if not k.startswith('__')})
    return {
        'id and class of different lengths': f"{mat}: 'id' has 4 entries but 'class' has 3",
        'instance without id': f"{mat}: instance ids [1] of 'inst_map' are not in 'id'",
        'class beyond 6': f"{mat}: 'class' must be 1..6, found",
        'class not whole': f"{mat}: 'class' must hold whole numbers, found 2.5",
        'negative id': f"{mat}: 'id' must be 1..2,147,483,647, found -1..",
        'inst_map id beyond int32': f"{mat}: 'inst_map' must be at most 2,147,483,647 (int32 ids), found 4e+12",
        'inst_map of another size': f'label {mat} has shape (39, 48) but image',
    }[kind]


LIZARD_KINDS = [
    'missing image folders',
    'missing label folder',
    'missing info.csv',
    'info.csv without its columns',
    'unknown split',
    'filename without image',
    'filename without labels',
    'unreadable .mat',
    '.mat without class',
    'id and class of different lengths',
    'instance without id',
    'class beyond 6',
    'class not whole',
    'negative id',
    'inst_map id beyond int32',
    'inst_map of another size',
]


@pytest.mark.parametrize('kind', LIZARD_KINDS)
def test_malformed_lizard_files_are_one_line_and_exit_2(tmp_path, capsys, run, kind):
    message = _malformed_lizard(tmp_path, kind)
    assert evaluate_refusal(capsys, run, 'lizard', tmp_path).startswith(message)
    with pytest.raises(DatasetLayoutError):
        load_lizard(tmp_path, 3)


def write_conic(root: Path, sources: int = 5, per_source: int = 2) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    count = sources * per_source
    images = rng.integers(0, 256, (count, 256, 256, 3), dtype=np.uint8)
    labels = np.zeros((count, 256, 256, 2), np.uint16)
    for index in range(count):
        for nucleus in range(1, 4):
            top = 20 * nucleus + index
            labels[index, top : top + 6, 30 : 36 + nucleus] = (nucleus, rng.integers(1, 7))
    names = [f'source{s}_1-{k:04d}' for s in range(sources) for k in range(per_source)]
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / 'images.npy', images)
    np.save(root / 'labels.npy', labels)
    (root / 'patch_info.csv').write_text('\n'.join(['patch_info', *names]) + '\n')
    return images, labels, names


def test_conic_patches_split_by_source_image(tmp_path):
    images, labels, names = write_conic(tmp_path)
    every = load_conic(tmp_path)
    assert [s.name for s in every] == names
    for sample, image, label in zip(every, images, labels, strict=True):
        np.testing.assert_array_equal(sample.image, image)
        np.testing.assert_array_equal(sample.inst_map, label[..., 0])
        np.testing.assert_array_equal(sample.type_map, label[..., 1])
    # Sorted sources 0..4: the 5th is test, the 2nd validation, the others train; a source's patches stay together.
    assert [s.name for s in load_conic(tmp_path, 'test')] == ['source4_1-0000', 'source4_1-0001']
    assert [s.name for s in load_conic(tmp_path, 'val')] == ['source1_1-0000', 'source1_1-0001']
    assert len(load_conic(tmp_path, 'train')) == 6
    assert NucleiSegmentationTask('conic', str(tmp_path), num_types=7).type_names() == list(LIZARD_TYPE_NAMES)


def _malformed_conic(root: Path, kind: str) -> str:
    images, labels, names = write_conic(root)
    if kind.startswith('missing '):
        (root / kind.split()[1]).unlink()
        return f'missing file {root / kind.split()[1]}; expected layout'
    if kind == 'unreadable .npy':
        (root / 'labels.npy').write_bytes(b'\x93NUMPY garbage')
        return f'{root / "labels.npy"}: cannot read the numpy array'
    if kind == 'images not uint8 RGB':
        np.save(root / 'images.npy', images.astype(np.float32))
        return f'{root / "images.npy"}: expected N x H x W x 3 uint8 images, got (10, 256, 256, 3) float32'
    if kind == 'labels without the type channel':
        np.save(root / 'labels.npy', labels[..., :1])
        return f'{root / "labels.npy"}: expected 10 x 256 x 256 x 2 integer labels (instance ids, types)'
    if kind == 'patch_info of another length':
        (root / 'patch_info.csv').write_text('\n'.join(['patch_info', *names[:-1]]) + '\n')
        return f'{root / "patch_info.csv"}: 9 patch names for 10 patches in {root / "images.npy"}'
    labels[8, 0, 0] = (0, 9)  # a type beyond 6, in a test patch
    np.save(root / 'labels.npy', labels)
    return f'{root / "labels.npy"}: patch 8 has type 9; CoNIC types are 0..6'


CONIC_KINDS = [
    'missing images.npy',
    'missing labels.npy',
    'missing patch_info.csv',
    'unreadable .npy',
    'images not uint8 RGB',
    'labels without the type channel',
    'patch_info of another length',
    'type beyond 6',
]


@pytest.mark.parametrize('kind', CONIC_KINDS)
def test_malformed_conic_files_are_one_line_and_exit_2(tmp_path, capsys, run, kind):
    message = _malformed_conic(tmp_path, kind)
    assert evaluate_refusal(capsys, run, 'conic', tmp_path).startswith(message)
    with pytest.raises(DatasetLayoutError):
        load_conic(tmp_path, 'test')
