"""Where the network runs on a slide: the pyramid level and resampling that match a model's microns per pixel."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import SlideError, SlideWarning
from .reading import Slide

RESOLUTION_TOLERANCE = 0.1  # a level within 10 % of the target microns per pixel is used as it is
# The work a resolution can create is bounded: enlarging adds no detail, only pixels (4x finer is 16x the work),
# and a working pixel made of more than 8x8 pixels of the level read costs that many reads and a blur as wide.
MAX_ENLARGEMENT = 4.0
MAX_REDUCTION = 8.0


@dataclass(frozen=True)
class Resolution:
    """Where the network runs: a pyramid level, resampled by ``scale`` level pixels per working pixel.

    ``downsample`` is level-0 pixels per working pixel; ``mpp`` microns per working pixel (``None`` when
    unknown); ``size`` the ``(width, height)`` of the working image.
    """

    level: int
    scale: float
    downsample: float
    mpp: float | None
    size: tuple[int, int]


def choose_resolution(slide: Slide, target_mpp: float | None) -> Resolution:
    """The resolution to run a model trained at ``target_mpp`` microns per pixel on ``slide``.

    The coarsest level no coarser than the target (within 10 %) is read; when its resolution is off by more
    than 10 %, it is resampled to the target (down, or up from level 0 for a target finer than the slide).
    When the model's or the slide's resolution is unknown, level 0 is used as it is, with a
    :class:`SlideWarning` naming the option that fixes it. A :class:`SlideError` refuses a target more than
    ``MAX_ENLARGEMENT`` times finer than level 0, or ``MAX_REDUCTION`` times coarser than the coarsest level.
    """
    if target_mpp is None or slide.mpp is None:
        level0_mpp = f'{slide.mpp:.3g} µm/px' if slide.mpp else 'unknown µm/px'
        if target_mpp is None:
            reason = "the model's training resolution is unknown; pass the microns per pixel it expects with --mpp"
        else:
            reason = "the slide's resolution is unknown; pass it with --slide-mpp"
        warnings.warn(f'{reason}; running at level 0 ({level0_mpp}) without resampling', SlideWarning, stacklevel=2)
        return Resolution(0, 1.0, 1.0, slide.mpp, slide.level_dimensions[0])
    wanted = target_mpp / slide.mpp  # level-0 pixels per working pixel
    levels = [k for k, d in enumerate(slide.level_downsamples) if d <= wanted * (1 + RESOLUTION_TOLERANCE)]
    level = levels[-1] if levels else 0
    scale = wanted / slide.level_downsamples[level]
    if abs(scale - 1) <= RESOLUTION_TOLERANCE:
        scale = 1.0
    given = f'{target_mpp:.3g} µm/px on a slide of {slide.mpp:.3g} µm/px'
    if scale < 1 / MAX_ENLARGEMENT:
        raise SlideError(
            f'{given} enlarges it {1 / scale:.3g}x, which adds no detail, only work; at most {MAX_ENLARGEMENT:g}x: '
            f'check the microns per pixel given (--mpp, --slide-mpp)'
        )
    if scale > MAX_REDUCTION:
        raise SlideError(
            f'{given} shrinks its coarsest level {scale:.3g}x; at most {MAX_REDUCTION:g}x: check the microns per '
            f'pixel given (--mpp, --slide-mpp)'
        )
    downsample = slide.level_downsamples[level] * scale
    width, height = slide.level_dimensions[level]
    size = (int(width / scale), int(height / scale))
    if min(size) < 1:
        raise SlideError(f'{given}: the slide would be {size[0]}x{size[1]} px; check the microns per pixel given')
    return Resolution(level, scale, downsample, slide.mpp * downsample, size)


def read_working(slide: Slide, resolution: Resolution, left: int, top: int, width: int, height: int) -> np.ndarray:
    """``height x width x 3`` RGB of the working image (the level resampled by ``resolution.scale``).

    Resampling maps working pixel centres exactly onto the level (bilinear, after a Gaussian low-pass when
    shrinking, so that fine texture does not alias).
    """
    if resolution.scale == 1.0:
        return slide.read(resolution.level, left, top, width, height)
    scale = resolution.scale
    level_width, level_height = slide.level_dimensions[resolution.level]
    sigma = 0.5 * math.sqrt(scale**2 - 1) if scale > 1 else 0.0
    margin = 2 + math.ceil(4 * sigma)  # the blur's reach: tile borders see real neighbours, not reflections
    x0, y0 = max(math.floor(left * scale) - margin, 0), max(math.floor(top * scale) - margin, 0)
    x1 = min(math.ceil((left + width) * scale) + margin, level_width)
    y1 = min(math.ceil((top + height) * scale) + margin, level_height)
    region = slide.read(resolution.level, x0, y0, x1 - x0, y1 - y0)
    if sigma:
        region = cv2.GaussianBlur(region, (0, 0), sigmaX=sigma)
    to_level = np.array([[scale, 0, (left + 0.5) * scale - 0.5 - x0], [0, scale, (top + 0.5) * scale - 0.5 - y0]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(region, to_level, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)
