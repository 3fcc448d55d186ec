"""Datasets for the recipes: Fashion-MNIST, CIFAR-10, image folders and nuclei segmentation data."""

from .fashion_mnist import FashionMNIST, find_fashion_mnist, load_fashion_mnist
from .nuclei import NucleiPatchDataset, split_stardist_sample, tile_sample
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
    'NucleiPatchDataset',
    'NucleiSample',
    'find_fashion_mnist',
    'load_consep',
    'load_cpm17',
    'load_fashion_mnist',
    'load_folder',
    'load_kumar',
    'load_monuseg',
    'load_stardist_sample',
    'split_stardist_sample',
    'tile_sample',
]
