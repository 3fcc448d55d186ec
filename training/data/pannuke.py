"""PanNuke (Gamper et al. 2019, 2020): 7,901 H&E patches of 256x256 at 40x from 19 tissues, five nuclear types,
released as three folds of numpy arrays.

Layout (the release's three zip files unpacked side by side)::

    ROOT/Fold {k}/images/fold{k}/images.npy   N x 256 x 256 x 3 RGB (float64 holding 0..255 in the release)
    ROOT/Fold {k}/images/fold{k}/types.npy    N tissue names ('Breast', 'Colon', ...)
    ROOT/Fold {k}/masks/fold{k}/masks.npy     N x 256 x 256 x 6: instance ids of neoplastic, inflammatory,
                                              connective/soft tissue, dead and epithelial nuclei, then background

Each mask channel holds the instances of one type; the instance map numbers each channel's nuclei after the
previous channel's, the type map is the channel (1..5, :data:`PANNUKE_TYPE_NAMES`), the background channel is
not used. Samples are named ``fold<k>_<index>_<tissue>`` (index from 0, as in the arrays).

Checked, each a one-line :class:`DatasetLayoutError` naming the file: a missing fold folder or file; a file
``numpy.load`` cannot read (not ``.npy``, truncated, pickled objects); arrays of the wrong shape (images not
``N x H x W x 3``, masks not ``N x H x W x 6``, types not ``N``, or counts and sizes that disagree); image
values outside 0..255 or not whole; mask values negative or not whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.hovernet.metrics import remap_label

from .readers import MAX_LABEL, DatasetLayoutError, NucleiSample, _layout_error, _read, _require_dir

__all__ = ['PANNUKE_TYPE_NAMES', 'load_pannuke']

PANNUKE_TYPE_NAMES = ('background', 'neoplastic', 'inflammatory', 'connective/soft tissue', 'dead', 'epithelial')
_LAYOUT = (
    'ROOT/Fold {k}/images/fold{k}/{images,types}.npy and ROOT/Fold {k}/masks/fold{k}/masks.npy for k = 1, 2, 3 '
    '(the three PanNuke zip files unpacked side by side)'
)


def _load_array(path: Path, root: Path) -> np.ndarray:
    if not path.is_file():
        raise _layout_error(f'missing file {path}', _LAYOUT, root)
    # Memory-mapped: a fold's float64 arrays are several GB; each image is converted on its own.
    return _read(path, 'the numpy array', lambda p: np.load(p, mmap_mode='r', allow_pickle=False))


def _whole(array: np.ndarray, path: Path, what: str, high: float | None = None) -> np.ndarray:
    values = np.asarray(array)
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise DatasetLayoutError(f'{path}: {what} must be numbers, got {values.dtype}')
    if values.size and (values.min() < 0 or (high is not None and values.max() > high)):
        bounds = f'0..{high:,.0f}' if high is not None else '>= 0'
        raise DatasetLayoutError(f'{path}: {what} must be {bounds}, found {values.min():g}..{values.max():g}')
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        raise DatasetLayoutError(f'{path}: {what} must be whole numbers')
    return values


def load_pannuke(root: str | Path, fold: int) -> list[NucleiSample]:
    """The samples of one PanNuke fold (1, 2 or 3), typed as :data:`PANNUKE_TYPE_NAMES`."""
    if fold not in (1, 2, 3):
        raise ValueError(f'PanNuke has folds 1, 2 and 3, got {fold!r}')
    root = Path(root)
    _require_dir(root, _LAYOUT, root)
    fold_dir = root / f'Fold {fold}'
    _require_dir(fold_dir, _LAYOUT, root)
    paths = [
        fold_dir / 'images' / f'fold{fold}' / 'images.npy',
        fold_dir / 'images' / f'fold{fold}' / 'types.npy',
        fold_dir / 'masks' / f'fold{fold}' / 'masks.npy',
    ]
    images, tissues, masks = (_load_array(path, root) for path in paths)
    if images.ndim != 4 or images.shape[3] != 3:
        raise DatasetLayoutError(f'{paths[0]}: expected N x H x W x 3 RGB images, got shape {images.shape}')
    if masks.shape != (*images.shape[:3], 6):
        raise DatasetLayoutError(
            f'{paths[2]}: expected {images.shape[0]} x {images.shape[1]} x {images.shape[2]} x 6 masks for the images '
            f'of {paths[0]}, got shape {masks.shape}'
        )
    if tissues.shape != (images.shape[0],):
        raise DatasetLayoutError(f'{paths[1]}: expected {images.shape[0]} tissue names, got shape {tissues.shape}')
    samples = []
    for index in range(images.shape[0]):
        image = _whole(images[index], paths[0], 'image values', high=255).astype(np.uint8)
        channels = _whole(masks[index], paths[2], 'mask values', high=MAX_LABEL)
        inst_map = np.zeros(image.shape[:2], np.int32)
        type_map = np.zeros(image.shape[:2], np.int32)
        for channel in range(5):  # the sixth channel is background
            ids = remap_label(channels[..., channel])
            inst_map = np.where(ids > 0, ids + inst_map.max(), inst_map)
            type_map[ids > 0] = channel + 1
        tissue = str(tissues[index]).replace(' ', '_')
        samples.append(NucleiSample(f'fold{fold}_{index:04d}_{tissue}', image, inst_map, type_map))
    return samples
