"""Evaluation metrics."""

from training.metrics.nuclei import (
    STAT_NAMES,
    aji,
    aji_plus,
    dice,
    dice2,
    instance_stats,
    mean_instance_stats,
    panoptic_quality,
    remap_label,
)

__all__ = [
    "STAT_NAMES",
    "aji",
    "aji_plus",
    "dice",
    "dice2",
    "instance_stats",
    "mean_instance_stats",
    "panoptic_quality",
    "remap_label",
]
