"""The PanNuke reader on SYNTHETIC folds written in the release's format (float64 ``images.npy`` N x 256 x 256 x 3,
float64 ``masks.npy`` N x 256 x 256 x 6, a string ``types.npy``; the malformed-file cases use 32 x 32 images to stay
small, which the reader accepts as it accepts any size). None of it is PanNuke data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _segment_oracle import evaluate_refusal

from training.data import PANNUKE_TYPE_NAMES, DatasetLayoutError, load_pannuke
from training.segmentation import NucleiSegmentationTask


def fold_paths(root: Path, fold: int) -> tuple[Path, Path, Path]:
    images = root / f'Fold {fold}' / 'images' / f'fold{fold}'
    return images / 'images.npy', images / 'types.npy', root / f'Fold {fold}' / 'masks' / f'fold{fold}' / 'masks.npy'


def write_fold(root: Path, fold: int, images: np.ndarray, masks: np.ndarray, tissues: list[str]) -> None:
    for path, array in zip(fold_paths(root, fold), (images, np.array(tissues), masks), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)


def synthetic_fold(count: int = 2, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Squares of nuclei in the type channels with PanNuke-like ids (not contiguous), the sixth channel the
    background; images random whole numbers as float64."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3)).astype(np.float64)
    masks = np.zeros((count, size, size, 6))
    for index in range(count):
        for k, channel in enumerate(rng.integers(0, 5, 6)):
            top, left = 8 + 40 * k % (size - 16), 8 + 24 * k % (size - 16)
            masks[index, top : top + 6, left : left + 6, channel] = 100 + 7 * k
        masks[index, ..., 5] = masks[index, ..., :5].sum(axis=-1) == 0
    return images, masks, ['Breast', 'Head&Neck'][:count]


def test_folds_read_as_typed_samples(tmp_path):
    images, masks, tissues = synthetic_fold()
    for fold in (1, 2, 3):
        write_fold(tmp_path, fold, images, masks, tissues)
    samples = load_pannuke(tmp_path, 3)
    assert [s.name for s in samples] == ['fold3_0000_Breast', 'fold3_0001_Head&Neck']
    for sample, image, mask in zip(samples, images, masks, strict=True):
        np.testing.assert_array_equal(sample.image, image.astype(np.uint8))
        # Each nucleus keeps its pixels and gets the type of its channel (1..5); ids are unique across channels.
        for channel in range(5):
            for nucleus_id in np.unique(mask[..., channel])[1:]:
                pixels = mask[..., channel] == nucleus_id
                assert np.unique(sample.inst_map[pixels]).size == 1 and sample.inst_map[pixels][0] > 0
                assert (sample.type_map[pixels] == channel + 1).all()
        assert sample.inst_map.max() == sum(np.unique(mask[..., c]).size - 1 for c in range(5))
        assert ((sample.inst_map > 0) == (mask[..., :5].sum(-1) > 0)).all()
    task = NucleiSegmentationTask('pannuke', str(tmp_path), num_types=6, folds=[2, 3, 1])
    assert task.type_names() == list(PANNUKE_TYPE_NAMES) and task.test_description().startswith('PanNuke fold 1')
    assert [s.name for s in task.split_samples('val')] == ['fold3_0000_Breast', 'fold3_0001_Head&Neck']
    with pytest.raises(ValueError, match='pannuke has 6 types'):
        NucleiSegmentationTask('pannuke', str(tmp_path), num_types=5)


def _malformed(root: Path, kind: str) -> str:
    images, masks, tissues = synthetic_fold(count=1, size=32)
    write_fold(root, 3, images, masks, tissues)
    image_path, types_path, masks_path = fold_paths(root, 3)
    if kind == 'missing fold':
        for path in (image_path, types_path, masks_path):
            path.unlink()
        (root / 'Fold 3' / 'masks' / 'fold3').rmdir(), (root / 'Fold 3' / 'masks').rmdir()
        (root / 'Fold 3' / 'images' / 'fold3').rmdir(), (root / 'Fold 3' / 'images').rmdir()
        (root / 'Fold 3').rmdir()
        return f'missing directory {root / "Fold 3"}; expected layout: ROOT/Fold {{k}}/images/fold{{k}}/'
    if kind == 'missing file':
        masks_path.unlink()
        return f'missing file {masks_path}; expected layout'
    if kind == 'not npy':
        image_path.write_bytes(b'PNG, not numpy')
        return f'{image_path}: cannot read the numpy array'
    if kind == 'truncated':
        masks_path.write_bytes(masks_path.read_bytes()[:2000])
        return f'{masks_path}: cannot read the numpy array'
    if kind == 'pickled objects':
        np.save(types_path, np.array([{'tissue': 'Breast'}], dtype=object), allow_pickle=True)
        return f'{types_path}: cannot read the numpy array'
    if kind == 'images not RGB':
        np.save(image_path, images[..., 0])
        return f'{image_path}: expected N x H x W x 3 RGB images, got shape (1, 32, 32)'
    if kind == 'masks not 6 channels':
        np.save(masks_path, masks[..., :5])
        return f'{masks_path}: expected 1 x 32 x 32 x 6 masks for the images of {image_path}, got shape (1, 32, 32, 5)'
    if kind == 'types of another length':
        np.save(types_path, np.array(['Breast', 'Colon']))
        return f'{types_path}: expected 1 tissue names, got shape (2,)'
    if kind == 'image values beyond 255':
        np.save(image_path, images * 2)
        return f'{image_path}: image values must be 0..255, found'
    if kind == 'image values not whole':
        images[0, 0, 0, 0] = 10.5
        np.save(image_path, images)
        return f'{image_path}: image values must be whole numbers'
    if kind == 'negative mask values':
        np.save(masks_path, -masks)
        return f'{masks_path}: mask values must be 0..2,147,483,647, found'
    if kind == 'mask ids beyond int32':
        np.save(masks_path, masks * 1e12)
        return f'{masks_path}: mask values must be 0..2,147,483,647, found'
    np.save(masks_path, masks / 3)  # mask values not whole
    return f'{masks_path}: mask values must be whole numbers'


KINDS = [
    'missing fold',
    'missing file',
    'not npy',
    'truncated',
    'pickled objects',
    'images not RGB',
    'masks not 6 channels',
    'types of another length',
    'image values beyond 255',
    'image values not whole',
    'negative mask values',
    'mask ids beyond int32',
    'mask values not whole',
]


@pytest.mark.parametrize('kind', KINDS)
def test_malformed_files_are_one_line_and_exit_2(tmp_path, capsys, run, kind):
    message = _malformed(tmp_path, kind)
    assert evaluate_refusal(capsys, run, 'pannuke', tmp_path).startswith(message)
    with pytest.raises(DatasetLayoutError):
        load_pannuke(tmp_path, 3)
