"""Readers for nuclear instance-segmentation datasets, in the layouts they are distributed in.

Readers return lists of :class:`NucleiSample` (RGB uint8 image, int32 instance map with 0 as
background, optional int32 type map):

* :func:`load_kumar` - ``ROOT/{train,test_same,test_diff}/Images/*.tif`` + ``Labels/*.mat``
  (``inst_map``), Kumar as redistributed by the HoVer-Net authors;
* :func:`load_monuseg` - ``ROOT/Tissue Images/*.tif`` + ``ROOT/Annotations/*.xml`` (Aperio
  ImageScope polygons), the original Kumar / MoNuSeg 2018 release;
* :func:`load_consep` - ``ROOT/{Train,Test}/Images/*.png`` + ``Labels/*.mat`` (``inst_map``,
  ``type_map``);
* :func:`load_cpm17` - ``ROOT/{train,test}/Images/*.png`` + ``Labels/*.mat`` (``inst_map``);
* :func:`load_folder` - a generic ``ROOT/[train|val/]{images,labels[,types]}/<stem>.*`` layout;
* :func:`load_stardist_sample` - the annotated DSB2018 fluorescence image in the ``stardist`` wheel.

File extensions match in any letter case (``.TIF``, ``.Png``); hidden files (names starting with
``.``) are ignored. TIFFs are read with tifffile and imagecodecs, so LZW (what ``cv2.imwrite`` writes),
Deflate, JPEG, ZSTD and the other common compressions work. Every layout problem (missing folder,
image without label, label without image, a file that cannot be read, a label without its key,
shapes that disagree) raises :class:`DatasetLayoutError` naming the offending path.
"""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.io
import tifffile
from PIL import Image
from skimage.draw import polygon as draw_polygon

from zoo.hovernet.metrics import remap_label
from zoo.io import ImageReadError, read_image

__all__ = [
    'CONSEP_MERGED_TYPE_NAMES',
    'CONSEP_TYPE_NAMES',
    'DatasetLayoutError',
    'NucleiSample',
    'load_consep',
    'load_cpm17',
    'load_folder',
    'load_kumar',
    'load_monuseg',
    'load_stardist_sample',
]

CONSEP_TYPE_NAMES = (
    'background',
    'other',
    'inflammatory',
    'healthy epithelial',
    'dysplastic/malignant epithelial',
    'fibroblast',
    'muscle',
    'endothelial',
)
CONSEP_MERGED_TYPE_NAMES = ('background', 'other', 'inflammatory', 'epithelial', 'spindle-shaped')
# HoVer-Net's merge: epithelial {3, 4} -> 3, spindle-shaped {5, 6, 7} -> 4.
_CONSEP_MERGE = np.array([0, 1, 2, 3, 3, 4, 4, 4], dtype=np.int32)

_KUMAR_LAYOUT = "ROOT/{train,test_same,test_diff}/Images/*.tif with matching ROOT/<split>/Labels/*.mat (key 'inst_map')"
_MONUSEG_LAYOUT = 'ROOT/Tissue Images/*.tif with matching ROOT/Annotations/*.xml (Aperio ImageScope)'
_CONSEP_LAYOUT = "ROOT/{Train,Test}/Images/*.png with matching ROOT/<split>/Labels/*.mat (keys 'inst_map', 'type_map')"
_CPM17_LAYOUT = "ROOT/{train,test}/Images/*.png with matching ROOT/<split>/Labels/*.mat (key 'inst_map')"
_FOLDER_LAYOUT = (
    'ROOT/images/<stem>.{png,tif,tiff,jpg,jpeg} with matching ROOT/labels/<stem>.{png,tif,tiff,npy} '
    'and optional ROOT/types/<stem>.{png,tif,tiff,npy}, '
    'either directly under ROOT or under ROOT/train and ROOT/val'
)
_FOLDER_IMAGE_SUFFIXES = ('.png', '.tif', '.tiff', '.jpg', '.jpeg')
_FOLDER_LABEL_SUFFIXES = ('.png', '.tif', '.tiff', '.npy')
_TIF, _PNG = ('.tif',), ('.png',)


class DatasetLayoutError(ValueError):
    """A dataset folder or file does not have the expected layout or content."""


@dataclass
class NucleiSample:
    """One annotated image.

    Attributes:
        name: file stem (or tile name), unique within a dataset.
        image: ``H x W x 3`` uint8 RGB.
        inst_map: ``H x W`` int32 instance ids, 0 = background.
        type_map: ``H x W`` int32 class ids (0 = background), or ``None`` when not annotated.
    """

    name: str
    image: np.ndarray
    inst_map: np.ndarray
    type_map: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f'{self.name}: image must be HxWx3 uint8, got {self.image.shape} {self.image.dtype}')
        for label_name in ('inst_map', 'type_map'):
            label = getattr(self, label_name)
            if label is None:
                continue
            if label.dtype != np.int32 or label.shape != self.image.shape[:2]:
                raise ValueError(
                    f'{self.name}: {label_name} must be int32 of shape {self.image.shape[:2]}, '
                    f'got {label.shape} {label.dtype}'
                )


# ---------------------------------------------------------------------------------------------
# File readers


def _layout_error(problem: str, layout: str, root: Path) -> DatasetLayoutError:
    return DatasetLayoutError(f'{problem}; expected layout: {layout} (ROOT = {root})')


def _require_dir(path: Path, layout: str, root: Path) -> None:
    if not path.is_dir():
        raise _layout_error(f'missing directory {path}', layout, root)


def _read(path: Path, what: str, reader: Callable[[Path], Any]) -> Any:
    """``reader(path)``, turning any failure to parse the file into a DatasetLayoutError naming it."""
    try:
        return reader(path)
    except DatasetLayoutError:
        raise
    except Exception as error:  # corrupt files fail in format-specific ways (IndexError, struct.error, ...)
        raise DatasetLayoutError(f'{path}: cannot read {what} ({type(error).__name__}: {error})') from error


def _read_pil(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def _read_image(path: Path) -> np.ndarray:
    """The one image reader (``zoo.io.read_image``: 8-bit as stored, more bits scaled, what it cannot read
    faithfully refused), its refusals reported as layout errors naming the file."""
    try:
        return read_image(path)
    except ImageReadError as error:
        raise DatasetLayoutError(str(error)) from error


MAX_LABEL = int(np.iinfo(np.int32).max)
MAX_VERTEX = 10**7  # pixels from the origin: beyond any slide's size, so a larger coordinate is a broken file


def _as_label_map(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """A 2-D integer-valued array as int32, or a DatasetLayoutError naming the file."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DatasetLayoutError(f'{path}: {what} must be a single-channel HxW map, got shape {array.shape}')
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DatasetLayoutError(f'{path}: {what} must hold integer ids, got {array.dtype} values')
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise DatasetLayoutError(f'{path}: {what} must hold integer ids, got non-integer {array.dtype} values')
    if array.size and array.min() < 0:
        raise DatasetLayoutError(f'{path}: {what} must be >= 0, found {array.min()}')
    if array.size and array.max() > MAX_LABEL:  # int32 ids: a larger one would wrap around, silently
        raise DatasetLayoutError(f'{path}: {what} must be at most {MAX_LABEL:,} (int32 ids), found {array.max():g}')
    return array.astype(np.int32)


def _read_label_file(path: Path, what: str) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == '.npy':
        array = _read(path, what, np.load)
    elif suffix in ('.tif', '.tiff'):
        array = _read(path, what, tifffile.imread)
    else:
        array = np.asarray(_read(path, what, _read_pil))
    return _as_label_map(array, path, what)


def _read_mat(path: Path, keys: Sequence[str]) -> list[np.ndarray]:
    contents = _read(path, 'the MATLAB file', scipy.io.loadmat)
    arrays = []
    for key in keys:
        if key not in contents:
            found = sorted(name for name in contents if not name.startswith('__'))
            raise DatasetLayoutError(f"{path} has no key '{key}' (found keys: {found})")
        arrays.append(_as_label_map(contents[key], path, f"'{key}'"))
    return arrays


def _files_by_stem(folder: Path, suffixes: Sequence[str], layout: str, root: Path) -> dict[str, Path]:
    """Files in ``folder`` with one of ``suffixes`` (any letter case, hidden files skipped), by stem."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith('.') or path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if path.stem in found:
            names = [found[path.stem].name, path.name]
            raise _layout_error(f"several files for '{path.stem}' in {folder}: {names}", layout, root)
        found[path.stem] = path
    return found


def _check_every_label_has_an_image(
    labels: dict[str, Path], images: dict[str, Path], images_dir: Path, layout: str, root: Path
) -> None:
    for stem, label_path in labels.items():
        if stem not in images:
            raise _layout_error(f'{label_path} has no image {images_dir / stem}.* to go with it', layout, root)


def _check_same_shape(label: np.ndarray, label_path: Path, image: np.ndarray, image_path: Path) -> None:
    if label.shape != image.shape[:2]:
        raise DatasetLayoutError(
            f'label {label_path} has shape {label.shape} but image {image_path} has shape {image.shape[:2]}'
        )


def _load_mat_split(
    root: Path, split_dir: str, image_suffixes: Sequence[str], layout: str, with_types: bool = False
) -> list[NucleiSample]:
    """Samples for every ``root/split_dir/Images/<stem><image suffix>`` with its ``Labels/<stem>.mat``."""
    images_dir, labels_dir = root / split_dir / 'Images', root / split_dir / 'Labels'
    for folder in (root, images_dir, labels_dir):
        _require_dir(folder, layout, root)
    images = _files_by_stem(images_dir, image_suffixes, layout, root)
    if not images:
        raise _layout_error(f'no {"/".join(image_suffixes)} images in {images_dir}', layout, root)
    labels = _files_by_stem(labels_dir, ('.mat',), layout, root)
    _check_every_label_has_an_image(labels, images, images_dir, layout, root)
    keys = ['inst_map', 'type_map'] if with_types else ['inst_map']
    samples = []
    for stem, image_path in images.items():
        label_path = labels.get(stem)
        if label_path is None:
            raise _layout_error(f'missing label file {labels_dir / stem}.mat for image {image_path}', layout, root)
        image, arrays = _read_image(image_path), _read_mat(label_path, keys)
        for label in arrays:
            _check_same_shape(label, label_path, image, image_path)
        samples.append(NucleiSample(stem, image, *arrays))
    return samples


def _check_split(split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f'split must be one of {tuple(allowed)}, got {split!r}')


# ---------------------------------------------------------------------------------------------
# Dataset readers


def load_kumar(
    root: str | Path, split: Literal['train', 'test', 'test_same', 'test_diff'] = 'train'
) -> list[NucleiSample]:
    """Kumar (TCGA, 40x) as redistributed by HoVer-Net: 16 train and 8 + 6 test 1000x1000 tiles.

    ``split='test'`` is ``test_same`` (seen organs) followed by ``test_diff`` (unseen organs).
    """
    _check_split(split, ('train', 'test', 'test_same', 'test_diff'))
    split_dirs = ['test_same', 'test_diff'] if split == 'test' else [split]
    return [sample for name in split_dirs for sample in _load_mat_split(Path(root), name, _TIF, _KUMAR_LAYOUT)]


def _imagescope_regions(path: Path) -> list[tuple[str | None, np.ndarray]]:
    """``(class name, vertices)`` of every Region of an Aperio ImageScope XML, in file order.

    The class name is the ``Name`` of the region's ``Annotation/Attributes/Attribute`` (MoNuSAC names the
    nuclear type there; MoNuSeg has none); vertices are ``N x 2`` ``[x, y]``, pixel centres at integers.
    """
    document = _read(path, 'the XML annotation', ElementTree.parse).getroot()
    if document.tag != 'Annotations':
        expected = 'Annotations/Annotation/Regions/Region/Vertices/Vertex'
        raise DatasetLayoutError(f'{path}: expected {expected}, the root element is <{document.tag}>')
    regions = []
    for annotation in document.findall('./Annotation'):
        attribute = annotation.find('./Attributes/Attribute')
        name = None if attribute is None else attribute.get('Name')
        for region in annotation.findall('./Regions/Region'):
            try:
                xy = [(float(vertex.get('X')), float(vertex.get('Y'))) for vertex in region.iter('Vertex')]
            except (TypeError, ValueError) as error:
                raise DatasetLayoutError(
                    f'{path}: Region {region.get("Id")} has a Vertex without numeric X/Y'
                ) from error
            xy = np.array(xy).reshape(-1, 2)
            if not (np.isfinite(xy).all() and np.abs(xy).max(initial=0) <= MAX_VERTEX):
                raise DatasetLayoutError(
                    f'{path}: Region {region.get("Id")} has a Vertex at {xy[~(np.abs(xy) <= MAX_VERTEX)][0]:g}; '
                    f'coordinates are finite pixels, at most {MAX_VERTEX:,} from the origin'
                )
            regions.append((name, xy))
    return regions


def _imagescope_pixels(xy: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of one ImageScope region: ``skimage.draw.polygon`` (pixel centres inside the polygon, clipped to
    the image), as MoNuSeg's and MoNuSAC's organisers rasterise them; fewer than three vertices enclose none."""
    if len(xy) < 3:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    return draw_polygon(xy[:, 1], xy[:, 0], shape=shape)


def _rasterize_monuseg_xml(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Instance map from an Aperio ImageScope XML: each Region is one nucleus polygon.

    Regions are filled in file order (:func:`_imagescope_pixels`) and later polygons overwrite earlier ones
    where they overlap; ids are then renumbered 1..N, so a region entirely hidden by later ones (or with fewer
    than three vertices) leaves no id behind.
    """
    inst_map = np.zeros(shape, dtype=np.int32)
    for inst_id, (_, xy) in enumerate(_imagescope_regions(path), start=1):
        inst_map[_imagescope_pixels(xy, shape)] = inst_id
    return remap_label(inst_map)


def load_monuseg(root: str | Path) -> list[NucleiSample]:
    """Original Kumar / MoNuSeg 2018 release: ``Tissue Images/*.tif`` + ``Annotations/*.xml``.

    Polygons are rasterised as described in :func:`_rasterize_monuseg_xml`. The release has no
    train/test folders; HoVer-Net's Kumar split is the one :func:`load_kumar` reads.
    """
    root = Path(root)
    images_dir, annotations_dir = root / 'Tissue Images', root / 'Annotations'
    _require_dir(root, _MONUSEG_LAYOUT, root)
    _require_dir(images_dir, _MONUSEG_LAYOUT, root)
    _require_dir(annotations_dir, _MONUSEG_LAYOUT, root)
    images = _files_by_stem(images_dir, _TIF, _MONUSEG_LAYOUT, root)
    if not images:
        raise _layout_error(f'no .tif images in {images_dir}', _MONUSEG_LAYOUT, root)
    annotations = _files_by_stem(annotations_dir, ('.xml',), _MONUSEG_LAYOUT, root)
    _check_every_label_has_an_image(annotations, images, images_dir, _MONUSEG_LAYOUT, root)
    samples = []
    for stem, image_path in images.items():
        xml_path = annotations.get(stem)
        if xml_path is None:
            missing = f'missing annotation {annotations_dir / stem}.xml for image {image_path}'
            raise _layout_error(missing, _MONUSEG_LAYOUT, root)
        image = _read_image(image_path)
        inst_map = _rasterize_monuseg_xml(xml_path, image.shape[:2])
        samples.append(NucleiSample(name=stem, image=image, inst_map=inst_map))
    return samples


def load_consep(
    root: str | Path, split: Literal['train', 'test'] = 'train', merge_types: bool = True
) -> list[NucleiSample]:
    """CoNSeP (colorectal, 40x): 27 train and 14 test 1000x1000 tiles with 7 nuclear classes.

    With ``merge_types`` (the default, as HoVer-Net) the type map is reduced to
    :data:`CONSEP_MERGED_TYPE_NAMES` (5 classes incl. background); otherwise it keeps the
    original 0..7 ids of :data:`CONSEP_TYPE_NAMES`.
    """
    _check_split(split, ('train', 'test'))
    split_dir = split.capitalize()
    samples = _load_mat_split(Path(root), split_dir, _PNG, _CONSEP_LAYOUT, with_types=True)
    for sample in samples:
        if sample.type_map.max(initial=0) >= len(CONSEP_TYPE_NAMES):
            label_path = Path(root) / split_dir / 'Labels' / f'{sample.name}.mat'
            raise DatasetLayoutError(f"{label_path}: 'type_map' has id {sample.type_map.max()}, CoNSeP ids are 0..7")
        if merge_types:
            sample.type_map = _CONSEP_MERGE[sample.type_map]
    return samples


def load_cpm17(root: str | Path, split: Literal['train', 'test'] = 'train') -> list[NucleiSample]:
    """CPM-17 (20x and 40x, 500-600 px tiles) in HoVer-Net's ``Images`` / ``Labels`` layout."""
    _check_split(split, ('train', 'test'))
    return _load_mat_split(Path(root), split, _PNG, _CPM17_LAYOUT)


def _load_folder_split(root: Path, split_root: Path) -> list[NucleiSample]:
    images_dir, labels_dir, types_dir = split_root / 'images', split_root / 'labels', split_root / 'types'
    _require_dir(images_dir, _FOLDER_LAYOUT, root)
    _require_dir(labels_dir, _FOLDER_LAYOUT, root)
    images = _files_by_stem(images_dir, _FOLDER_IMAGE_SUFFIXES, _FOLDER_LAYOUT, root)
    if not images:
        raise _layout_error(f'no images in {images_dir}', _FOLDER_LAYOUT, root)
    labels = _files_by_stem(labels_dir, _FOLDER_LABEL_SUFFIXES, _FOLDER_LAYOUT, root)
    _check_every_label_has_an_image(labels, images, images_dir, _FOLDER_LAYOUT, root)
    types = None
    if types_dir.is_dir():
        types = _files_by_stem(types_dir, _FOLDER_LABEL_SUFFIXES, _FOLDER_LAYOUT, root)
        _check_every_label_has_an_image(types, images, images_dir, _FOLDER_LAYOUT, root)
    samples = []
    for stem, image_path in images.items():
        if stem not in labels:
            missing = f'missing label {labels_dir / stem}.{{png,tif,tiff,npy}} for image {image_path}'
            raise _layout_error(missing, _FOLDER_LAYOUT, root)
        image = _read_image(image_path)
        inst_map = _read_label_file(labels[stem], 'instance map')
        _check_same_shape(inst_map, labels[stem], image, image_path)
        type_map = None
        if types is not None:
            if stem not in types:
                missing = f'missing type map {types_dir / stem}.{{png,tif,tiff,npy}} for image {image_path}'
                raise _layout_error(missing, _FOLDER_LAYOUT, root)
            type_map = _read_label_file(types[stem], 'type map')
            _check_same_shape(type_map, types[stem], image, image_path)
        samples.append(NucleiSample(stem, image, inst_map, type_map))
    return samples


def load_folder(
    root: str | Path,
    split: Literal['all', 'train', 'val'] = 'all',
    val_fraction: float = 0.2,
    seed: int = 0,
) -> list[NucleiSample]:
    """Generic layout: images, instance maps and optional type maps matched by file stem.

    ::

        ROOT/images/<stem>.{png,tif,tiff,jpg,jpeg}   RGB, RGBA or grey, 8-bit
        ROOT/labels/<stem>.{png,tif,tiff,npy}        instance ids, 0 = background
        ROOT/types/<stem>.{png,tif,tiff,npy}         optional class ids, 0 = background

    If ``ROOT/train`` or ``ROOT/val`` exists, each holds that layout and ``split`` selects one
    (``'all'`` concatenates them). Otherwise ``'train'`` / ``'val'`` is a deterministic split:
    a permutation of the sorted stems drawn with ``seed``, of which the first
    ``round(val_fraction * n)`` (at least one, and at most ``n - 1``) are validation.
    """
    _check_split(split, ('all', 'train', 'val'))
    root = Path(root)
    _require_dir(root, _FOLDER_LAYOUT, root)
    return _train_or_val(root, split, val_fraction, seed, lambda folder: _load_folder_split(root, folder))


def _train_or_val(
    root: Path, split: str, val_fraction: float, seed: int, load: Callable[[Path], list[NucleiSample]]
) -> list[NucleiSample]:
    """``load(ROOT/train)`` or ``load(ROOT/val)`` when those folders exist (``'all'``: both), otherwise
    ``load(ROOT)`` split as :func:`load_folder` describes."""
    presplit = [name for name in ('train', 'val') if (root / name).is_dir()]
    if presplit:
        names = presplit if split == 'all' else [split]
        return [sample for name in names for sample in load(root / name)]
    samples = load(root)
    if split == 'all':
        return samples
    if not 0.0 < val_fraction < 1.0 or len(samples) < 2:
        raise DatasetLayoutError(
            f"{root}: a '{split}' split needs 0 < val_fraction < 1 and at least 2 images, "
            f'got val_fraction={val_fraction} and {len(samples)} image(s); add images, or give train/ and val/ folders'
        )
    num_val = min(max(round(val_fraction * len(samples)), 1), len(samples) - 1)
    val_indices = set(np.random.default_rng(seed).permutation(len(samples))[:num_val].tolist())
    return [sample for index, sample in enumerate(samples) if (index in val_indices) == (split == 'val')]


def load_stardist_sample() -> NucleiSample:
    """The annotated 2-D image shipped in the ``stardist`` wheel, as an RGB nuclei sample.

    This is **fluorescence** microscopy from the 2018 Data Science Bowl (BBBC038), not H&E:
    one 512x512 uint16 image with 125 hand-annotated nuclei. It is the only real instance ground
    truth installable offline, good for pipeline tests and quick fine-tuning, not for reporting
    histology numbers. The package is located with ``importlib.util.find_spec`` and never
    imported (it would pull in TensorFlow); ``pip install --no-deps stardist`` is enough.

    The image is scaled to uint8 by its 1st and 99.8th percentiles (CSBDeep's default
    ``normalize``), clipped, and repeated to three channels; instance ids (up to 183 in the
    file) are renumbered 1..125.
    """
    spec = importlib.util.find_spec('stardist')
    if spec is None or spec.origin is None:
        raise FileNotFoundError('the stardist package is not installed; run `pip install --no-deps stardist`')
    images_dir = Path(spec.origin).parent / 'data' / 'images'
    image_path, mask_path = images_dir / 'img2d.tif', images_dir / 'mask2d.tif'
    for path in (image_path, mask_path):
        if not path.is_file():
            raise DatasetLayoutError(f'missing {path}; expected stardist/data/images/{{img2d,mask2d}}.tif')
    image = read_image(image_path)  # uint16 fluorescence, scaled by its 1st/99.8th percentiles
    inst_map = remap_label(_read_label_file(mask_path, 'mask'))
    return NucleiSample('stardist_dsb2018', image, inst_map)
