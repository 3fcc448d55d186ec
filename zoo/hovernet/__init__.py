"""HoVer-Net's method (Graham et al., MedIA 2019) in one place: training targets, loss, augmentation,
patch extraction, watershed post-processing with per-nucleus records, and the instance and type metrics.
Targets, losses, post-processing and instance metrics give the reference code's values
(github:vqdang/hover_net; tests/zoo/hovernet/test_oracles.py); augmentation follows its pipeline with the
differences listed in ``augment``. The network family that produces NP/HV/TP maps is ``zoo.models.mrl_seg``."""

from .augment import geometric_transform, photometric_transform, warp_image_and_labels
from .losses import LOSS_TERMS, cross_entropy_loss, hovernet_loss, hv_gradients, msge_loss, soft_dice_loss
from .metrics import (
    STAT_NAMES,
    TypeMatches,
    aji,
    aji_plus,
    dice,
    dice2,
    instance_stats,
    match_types,
    mean_instance_stats,
    pair_centroids,
    panoptic_quality,
    remap_label,
    type_stats,
)
from .patches import extract_patches, patch_origins, read_window
from .postprocess import hovernet_postprocess, instance_info
from .targets import center_window, hovernet_targets, hv_map, np_map, split_disconnected_instances

__all__ = [
    'LOSS_TERMS',
    'STAT_NAMES',
    'TypeMatches',
    'aji',
    'aji_plus',
    'center_window',
    'cross_entropy_loss',
    'dice',
    'dice2',
    'extract_patches',
    'geometric_transform',
    'hovernet_loss',
    'hovernet_postprocess',
    'hovernet_targets',
    'hv_gradients',
    'hv_map',
    'instance_info',
    'instance_stats',
    'match_types',
    'mean_instance_stats',
    'msge_loss',
    'np_map',
    'pair_centroids',
    'panoptic_quality',
    'patch_origins',
    'photometric_transform',
    'read_window',
    'remap_label',
    'soft_dice_loss',
    'split_disconnected_instances',
    'type_stats',
    'warp_image_and_labels',
]
