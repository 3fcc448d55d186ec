"""MoNuSAC 2020 (Verma et al. 2021): H&E images of 4 organs at 40x with four nuclear types, annotated as Aperio
ImageScope XML.

Layout (the training release unpacked into ``train/``, the testing release into ``test/``)::

    ROOT/{train,test}/<patient>/<image>.svs   (or .tif / .tiff / .png; the .svs is read where both exist)
    ROOT/{train,test}/<patient>/<image>.xml   one Annotation per type, its Attribute Name the type, its
                                              Regions the nuclei (Vertices of X, Y)

Types as the MoNuSAC paper lists them, ids 1..4: :data:`MONUSAC_TYPE_NAMES`. The testing release also marks
``Ambiguous`` areas, which the challenge leaves out of its scores: here their pixels are blacked out in the image
and unlabelled, so they count neither way. Polygons are rasterised as the organisers' mask code does
(``skimage.draw.polygon`` on the vertices, later regions over earlier ones).

Checked, each a one-line :class:`DatasetLayoutError` naming the file: a missing ``train``/``test`` folder or an
empty one; an image without its ``.xml`` or an ``.xml`` without its image; an XML that cannot be parsed, whose
root is not ``<Annotations>``, whose Annotation has no Attribute Name or a name other than the four types and
Ambiguous, or whose Vertex lacks numeric X/Y; an image that cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from zoo.slide import SlideError, open_slide

from .readers import (
    DatasetLayoutError,
    NucleiSample,
    _check_every_label_has_an_image,
    _check_split,
    _files_by_stem,
    _imagescope_pixels,
    _imagescope_regions,
    _layout_error,
    _require_dir,
)

__all__ = ['MONUSAC_TYPE_NAMES', 'load_monusac']

MONUSAC_TYPE_NAMES = ('background', 'epithelial', 'lymphocyte', 'neutrophil', 'macrophage')
_AMBIGUOUS = 'ambiguous'
_LAYOUT = (
    'ROOT/{train,test}/<patient>/<image>.{svs,tif,tiff,png} with matching <image>.xml (the training release '
    'unpacked into train/, the testing release into test/)'
)
_IMAGE_SUFFIXES = ('.svs', '.tif', '.tiff', '.png')


def load_monusac(root: str | Path, split: Literal['train', 'test'] = 'train') -> list[NucleiSample]:
    """The images of MoNuSAC's training or testing release, typed as :data:`MONUSAC_TYPE_NAMES`."""
    _check_split(split, ('train', 'test'))
    root = Path(root)
    _require_dir(root, _LAYOUT, root)
    split_dir = root / split
    _require_dir(split_dir, _LAYOUT, root)
    samples = []
    for patient in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith('.')):
        # The release's .svs wins over a converted copy of the same name (the organisers' notebook writes
        # OpenSlide's RGBA to .tif with cv2, which stores it as BGRA).
        images = _files_by_stem(patient, _IMAGE_SUFFIXES[1:], _LAYOUT, root) | _files_by_stem(
            patient, _IMAGE_SUFFIXES[:1], _LAYOUT, root
        )
        annotations = _files_by_stem(patient, ('.xml',), _LAYOUT, root)
        _check_every_label_has_an_image(annotations, images, patient, _LAYOUT, root)
        for stem, image_path in images.items():
            if stem not in annotations:
                raise _layout_error(f'missing annotation {patient / stem}.xml for image {image_path}', _LAYOUT, root)
            samples.append(_sample(stem, image_path, annotations[stem]))
    if not samples:
        raise _layout_error(f'no annotated images in {split_dir}/<patient>/', _LAYOUT, root)
    return samples


def _sample(name: str, image_path: Path, xml_path: Path) -> NucleiSample:
    try:
        with open_slide(image_path) as slide:  # MoNuSAC's .svs files are single-level and small
            width, height = slide.level_dimensions[0]
            image = np.array(slide.read(0, 0, 0, width, height))
    except SlideError as error:
        raise DatasetLayoutError(str(error)) from error
    inst_map, type_map = np.zeros((height, width), np.int32), np.zeros((height, width), np.int32)
    ambiguous = np.zeros((height, width), bool)
    names = [name.lower() for name in MONUSAC_TYPE_NAMES[1:]]
    for inst_id, (class_name, xy) in enumerate(_imagescope_regions(xml_path), start=1):
        label = (class_name or '').strip().lower()
        if label not in (*names, _AMBIGUOUS):
            raise DatasetLayoutError(
                f'{xml_path}: an Annotation is named {class_name!r}; MoNuSAC names Epithelial, Lymphocyte, '
                f'Neutrophil, Macrophage and Ambiguous (Annotation/Attributes/Attribute Name)'
            )
        pixels = _imagescope_pixels(xy, (height, width))
        if label == _AMBIGUOUS:
            ambiguous[pixels] = True
        else:
            inst_map[pixels], type_map[pixels] = inst_id, names.index(label) + 1
    for array in (image, inst_map, type_map):
        array[ambiguous] = 0
    return NucleiSample(name, image, inst_map, type_map)
