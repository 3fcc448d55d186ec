"""Datasets for the recipes: Fashion-MNIST, CIFAR-10, image folders and nuclei segmentation data (readers.py:
Kumar, MoNuSeg, CoNSeP, CPM-17, image folders; geojson.py: QuPath annotations; pannuke.py; lizard.py: Lizard
and CoNIC; monusac.py)."""

from .fashion_mnist import FashionMNIST, find_fashion_mnist, load_fashion_mnist
from .geojson import REGION_CLASSES, load_geojson
from .lizard import LIZARD_TYPE_NAMES, load_conic, load_lizard
from .monusac import MONUSAC_TYPE_NAMES, load_monusac
from .nuclei import NucleiPatchDataset, split_stardist_sample, tile_sample
from .pannuke import PANNUKE_TYPE_NAMES, load_pannuke
from .readers import (
    CONSEP_MERGED_TYPE_NAMES,
    CONSEP_TYPE_NAMES,
    DatasetLayoutError,
    NucleiSample,
    load_consep,
    load_cpm17,
    load_folder,
    load_kumar,
    load_monuseg,
    load_stardist_sample,
)

__all__ = [
    'CONSEP_MERGED_TYPE_NAMES',
    'CONSEP_TYPE_NAMES',
    'DatasetLayoutError',
    'FashionMNIST',
    'LIZARD_TYPE_NAMES',
    'MONUSAC_TYPE_NAMES',
    'NucleiPatchDataset',
    'NucleiSample',
    'PANNUKE_TYPE_NAMES',
    'REGION_CLASSES',
    'find_fashion_mnist',
    'load_conic',
    'load_consep',
    'load_cpm17',
    'load_fashion_mnist',
    'load_folder',
    'load_geojson',
    'load_kumar',
    'load_lizard',
    'load_monusac',
    'load_monuseg',
    'load_pannuke',
    'load_stardist_sample',
    'split_stardist_sample',
    'tile_sample',
]
