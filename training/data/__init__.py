"""Datasets, training targets and augmentation pipelines."""

from training.data.fashion_mnist import FashionMNIST, find_fashion_mnist, load_fashion_mnist

from training.data.nuclei import (
    CONSEP_MERGED_TYPE_NAMES,
    CONSEP_TYPE_NAMES,
    DatasetLayoutError,
    NucleiPatchDataset,
    NucleiSample,
    extract_patches,
    load_consep,
    load_cpm17,
    load_folder,
    load_kumar,
    load_monuseg,
    load_stardist_sample,
    patch_origins,
    read_window,
    split_stardist_sample,
    tile_sample,
)
from training.data.targets import center_window, hovernet_targets, hv_map, np_map, split_disconnected_instances
from training.data.transforms import geometric_transform, photometric_transform, warp_image_and_labels

__all__ = [
    "FashionMNIST",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "CONSEP_MERGED_TYPE_NAMES",
    "CONSEP_TYPE_NAMES",
    "DatasetLayoutError",
    "NucleiPatchDataset",
    "NucleiSample",
    "center_window",
    "extract_patches",
    "geometric_transform",
    "hovernet_targets",
    "hv_map",
    "load_consep",
    "load_cpm17",
    "load_folder",
    "load_kumar",
    "load_monuseg",
    "load_stardist_sample",
    "np_map",
    "patch_origins",
    "photometric_transform",
    "read_window",
    "split_disconnected_instances",
    "split_stardist_sample",
    "tile_sample",
    "warp_image_and_labels",
]
