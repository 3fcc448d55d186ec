"""Lizard (Graham et al. 2021) and its CoNIC challenge patches: colon H&E at 20x with six nuclear types.

Lizard, as released (its three zip files unpacked side by side)::

    ROOT/Lizard_Images1/<name>.png, ROOT/Lizard_Images2/<name>.png   RGB images, various sizes
    ROOT/Lizard_Labels/Labels/<name>.mat                              'inst_map' (H x W), 'id' and 'class' (N x 1)
    ROOT/Lizard_Labels/info.csv                                       columns Filename, Source, Split (1, 2 or 3)

The type of nucleus ``id[k]`` is ``class[k]``. :func:`load_lizard` reads the images of one of the three splits
of ``info.csv``.

CoNIC (the challenge's 256x256 patches of Lizard)::

    ROOT/images.npy       N x 256 x 256 x 3 uint8 RGB
    ROOT/labels.npy       N x 256 x 256 x 2 uint16: instance ids, then types
    ROOT/patch_info.csv   one column: the patch names, '<source image>-<index>'

:func:`load_conic` splits the patches by source image (see there: CoNIC's test patches are not public).

Both use Lizard's types, :data:`LIZARD_TYPE_NAMES` (ids 1..6 as the Lizard paper and CoNIC number them).

Checked, each a one-line :class:`DatasetLayoutError` naming the file. Lizard: a missing image folder, label
folder or ``info.csv``; ``info.csv`` without its columns, or with a Split other than 1, 2, 3, or a Filename
without its image or ``.mat``; a ``.mat`` that cannot be read, lacks ``inst_map``, ``id`` or ``class``, has
``id`` and ``class`` of different lengths, an instance id not in ``id``, a class outside 1..6, or an
``inst_map`` of another size than its image. CoNIC: a missing file; a file ``numpy.load`` cannot read; arrays
of the wrong shape (images not ``N x H x W x 3``, labels not ``N x H x W x 2``), ``patch_info.csv`` with another
number of rows; types outside 0..6.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.io

from .readers import (
    MAX_LABEL,
    DatasetLayoutError,
    NucleiSample,
    _as_label_map,
    _check_same_shape,
    _layout_error,
    _read,
    _read_image,
    _require_dir,
)

__all__ = ['LIZARD_TYPE_NAMES', 'load_conic', 'load_lizard']

LIZARD_TYPE_NAMES = ('background', 'neutrophil', 'epithelial', 'lymphocyte', 'plasma', 'eosinophil', 'connective')
_LIZARD_LAYOUT = (
    'ROOT/Lizard_Images1/*.png and ROOT/Lizard_Images2/*.png, ROOT/Lizard_Labels/Labels/*.mat '
    "(keys 'inst_map', 'id', 'class') and ROOT/Lizard_Labels/info.csv (Filename, Source, Split)"
)
_CONIC_LAYOUT = 'ROOT/images.npy (N x 256 x 256 x 3), ROOT/labels.npy (N x 256 x 256 x 2) and ROOT/patch_info.csv'


def _read_csv(path: Path, columns: tuple[str, ...], layout: str, root: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise _layout_error(f'missing file {path}', layout, root)
    rows = _read(path, 'the CSV file', lambda p: list(csv.DictReader(p.read_text(encoding='utf-8-sig').splitlines())))
    if not rows or not set(columns) <= set(rows[0]):
        found = sorted(rows[0]) if rows else []
        raise DatasetLayoutError(f'{path}: expected the columns {list(columns)}, found {found}')
    return rows


def load_lizard(root: str | Path, split: int) -> list[NucleiSample]:
    """The images of one of Lizard's three splits (``info.csv``'s Split 1, 2 or 3), typed as
    :data:`LIZARD_TYPE_NAMES`."""
    if split not in (1, 2, 3):
        raise ValueError(f'Lizard has splits 1, 2 and 3, got {split!r}')
    root = Path(root)
    labels_dir = root / 'Lizard_Labels' / 'Labels'
    for folder in (root, labels_dir):
        _require_dir(folder, _LIZARD_LAYOUT, root)
    image_dirs = [root / name for name in ('Lizard_Images1', 'Lizard_Images2') if (root / name).is_dir()]
    if not image_dirs:
        raise _layout_error(
            f'missing directories {root / "Lizard_Images1"} and {root / "Lizard_Images2"}', _LIZARD_LAYOUT, root
        )
    info_path = root / 'Lizard_Labels' / 'info.csv'
    samples = []
    for row in _read_csv(info_path, ('Filename', 'Split'), _LIZARD_LAYOUT, root):
        name, fold = (row['Filename'] or '').strip(), (row['Split'] or '').strip()  # a short row leaves None
        if fold not in ('1', '2', '3'):
            raise DatasetLayoutError(f'{info_path}: {name} has Split {fold!r}; Lizard splits are 1, 2, 3')
        if int(fold) != split:
            continue
        image_path = next((folder / f'{name}.png' for folder in image_dirs if (folder / f'{name}.png').is_file()), None)
        if image_path is None:
            missing = f'{info_path} lists {name} but no Lizard_Images*/{name}.png exists'
            raise _layout_error(missing, _LIZARD_LAYOUT, root)
        label_path = labels_dir / f'{name}.mat'
        if not label_path.is_file():
            raise _layout_error(f'missing label file {label_path} for image {image_path}', _LIZARD_LAYOUT, root)
        image = _read_image(image_path)
        inst_map, type_map = _lizard_labels(label_path)
        _check_same_shape(inst_map, label_path, image, image_path)
        samples.append(NucleiSample(name, image, inst_map, type_map))
    return samples


def _lizard_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    contents = _read(path, 'the MATLAB file', scipy.io.loadmat)
    for key in ('inst_map', 'id', 'class'):
        if key not in contents:
            found = sorted(name for name in contents if not name.startswith('__'))
            raise DatasetLayoutError(f"{path} has no key '{key}' (found keys: {found})")
    inst_map = _as_label_map(contents['inst_map'], path, "'inst_map'")
    ids, classes = (np.ravel(contents[key]) for key in ('id', 'class'))
    for key, values in (('id', ids), ('class', classes)):
        if not (np.issubdtype(values.dtype, np.number) and np.isfinite(values).all()):
            raise DatasetLayoutError(f"{path}: '{key}' must hold whole numbers, got {values.dtype} values")
        if not np.array_equal(values, np.round(values)):
            raise DatasetLayoutError(
                f"{path}: '{key}' must hold whole numbers, found {values[values != np.round(values)][0]:g}"
            )
    ids, classes = ids.astype(np.int64), classes.astype(np.int64)
    if ids.size and (ids.min() < 1 or ids.max() > MAX_LABEL):
        raise DatasetLayoutError(f"{path}: 'id' must be 1..{MAX_LABEL:,}, found {ids.min()}..{ids.max()}")
    if ids.shape != classes.shape:
        raise DatasetLayoutError(f"{path}: 'id' has {ids.size} entries but 'class' has {classes.size}")
    if classes.size and (classes.min() < 1 or classes.max() >= len(LIZARD_TYPE_NAMES)):
        raise DatasetLayoutError(f"{path}: 'class' must be 1..6, found {classes.min()}..{classes.max()}")
    present = np.unique(inst_map[inst_map > 0])
    unlisted = np.setdiff1d(present, ids)
    if unlisted.size:
        raise DatasetLayoutError(f"{path}: instance ids {unlisted[:5].tolist()} of 'inst_map' are not in 'id'")
    # Types looked up per instance present (a table indexed by id would be as long as the largest id).
    type_of = dict(zip(ids.tolist(), classes.tolist()))
    labels, where = np.unique(inst_map, return_inverse=True)
    types = np.array([type_of.get(label, 0) for label in labels.tolist()], np.int32)
    return inst_map, types[where].reshape(inst_map.shape)


def load_conic(root: str | Path, split: Literal['train', 'val', 'test', 'all'] = 'all') -> list[NucleiSample]:
    """CoNIC patches named as in ``patch_info.csv``, typed as :data:`LIZARD_TYPE_NAMES`.

    CoNIC's own test patches are not public, so ``split`` is ours, by source image (a patch's name up to its
    first ``-``, as the challenge's baseline splits): of the sorted source images, every fifth (the 5th, 10th,
    ...) is ``'test'``, every tenth from the 2nd (2nd, 12th, ...) is ``'val'``, the others ``'train'``; patches
    of one image never end up in two splits.
    """
    if split not in ('train', 'val', 'test', 'all'):
        raise ValueError(f"split must be 'train', 'val', 'test' or 'all', got {split!r}")
    root = Path(root)
    _require_dir(root, _CONIC_LAYOUT, root)
    paths = {name: root / f'{name}.npy' for name in ('images', 'labels')}
    arrays = {}
    for name, path in paths.items():
        if not path.is_file():
            raise _layout_error(f'missing file {path}', _CONIC_LAYOUT, root)
        arrays[name] = _read(path, 'the numpy array', lambda p: np.load(p, mmap_mode='r', allow_pickle=False))
    images, labels = arrays['images'], arrays['labels']
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise DatasetLayoutError(
            f'{paths["images"]}: expected N x H x W x 3 uint8 images, got {images.shape} {images.dtype}'
        )
    if labels.shape != (*images.shape[:3], 2) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetLayoutError(
            f'{paths["labels"]}: expected {images.shape[0]} x {images.shape[1]} x {images.shape[2]} x 2 integer '
            f'labels (instance ids, types) for {paths["images"]}, got {labels.shape} {labels.dtype}'
        )
    info_path = root / 'patch_info.csv'
    if not info_path.is_file():
        raise _layout_error(f'missing file {info_path}', _CONIC_LAYOUT, root)
    rows = _read(info_path, 'the CSV file', lambda p: list(csv.reader(p.read_text(encoding='utf-8-sig').splitlines())))
    names = [row[0].strip() for row in rows[1:] if row]  # a header, then one patch name per row
    if len(names) != images.shape[0]:
        raise DatasetLayoutError(
            f'{info_path}: {len(names)} patch names for {images.shape[0]} patches in {paths["images"]}'
        )
    sources = sorted({name.split('-')[0] for name in names})
    part = {source: 'test' if k % 5 == 4 else 'val' if k % 10 == 1 else 'train' for k, source in enumerate(sources)}
    samples = []
    for index, name in enumerate(names):
        if split != 'all' and part[name.split('-')[0]] != split:
            continue
        inst_map = _as_label_map(labels[index, ..., 0], paths['labels'], 'instance ids')
        type_map = _as_label_map(labels[index, ..., 1], paths['labels'], 'types')
        if type_map.max(initial=0) >= len(LIZARD_TYPE_NAMES):
            raise DatasetLayoutError(
                f'{paths["labels"]}: patch {index} has type {type_map.max()}; CoNIC types are 0..6'
            )
        samples.append(NucleiSample(name, np.array(images[index]), inst_map, type_map))
    return samples
