"""HoVer-Net training augmentation as albumentations 2.0 pipelines.

HoVer-Net (``dataloader/train_loader.py``, imgaug) augments in two stages, mirrored here:

* :func:`geometric_transform` - applied to the image and the label maps together, through
  :func:`warp_image_and_labels`. Nearest-neighbour warping keeps labels integer with no new
  ids; HoVer-Net warps the image with nearest neighbour too (imgaug ``order=0``), so image and
  labels stay pixel-aligned. HV targets must be computed afterwards, from the warped instances.
* :func:`photometric_transform` - image only: one of Gaussian blur / median blur / Gaussian noise,
  then hue, saturation, brightness and contrast shifts in random order. The blurs draw their kernel
  sizes as HoVer-Net's ``gaussian_blur`` / ``median_blur`` do: each from {1, 3, 5} (1 leaves the image,
  or for the Gaussian that axis, unblurred), the Gaussian's width and height independently, its sigma
  OpenCV's default for the size, with replicated borders.

Where this differs from HoVer-Net's pipeline:

* Gaussian noise is per channel always (imgaug: per channel in half of the images).
* Contrast is applied, blending with the mean grey level. HoVer-Net's ``add_to_contrast`` computes the
  blend but returns the clipped input, so its contrast step changes nothing.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

__all__ = ['geometric_transform', 'photometric_transform', 'warp_image_and_labels']

# float32 represents every integer up to 2**24 exactly.
_MAX_FLOAT32_LABEL = 2**24
# HoVer-Net's blur kernel sizes: randint(0, 3) * 2 + 1.
_BLUR_SIZES = (1, 3, 5)


class _HoVerNetGaussianBlur(A.ImageOnlyTransform):
    """Gaussian blur with width and height each drawn from {1, 3, 5} and OpenCV's sigma for that size."""

    def get_params(self) -> dict:
        return {'ksize': (self.py_random.choice(_BLUR_SIZES), self.py_random.choice(_BLUR_SIZES))}

    def apply(self, img: np.ndarray, ksize: tuple[int, int], **params) -> np.ndarray:
        return cv2.GaussianBlur(img, ksize, sigmaX=0, sigmaY=0, borderType=cv2.BORDER_REPLICATE)


class _HoVerNetMedianBlur(A.ImageOnlyTransform):
    """Median blur with the aperture drawn from {1, 3, 5}."""

    def get_params(self) -> dict:
        return {'ksize': self.py_random.choice(_BLUR_SIZES)}

    def apply(self, img: np.ndarray, ksize: int, **params) -> np.ndarray:
        return cv2.medianBlur(img, ksize)


def geometric_transform() -> A.Compose:
    """Random affine (scale 0.8-1.2 per axis, translate ±1 %, x-shear ±5°, rotate ±179°) and
    horizontal/vertical flips with p = 0.5. Uncovered pixels are 0 in image and labels."""
    return A.Compose(
        [
            A.Affine(
                scale={'x': (0.8, 1.2), 'y': (0.8, 1.2)},
                translate_percent={'x': (-0.01, 0.01), 'y': (-0.01, 0.01)},
                shear={'x': (-5, 5), 'y': (0, 0)},  # imgaug's scalar shear is x-only
                rotate=(-179, 179),
                interpolation=cv2.INTER_NEAREST,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=1.0,
            ),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
        ]
    )


def photometric_transform() -> A.Compose:
    """Image-only noise and colour jitter for uint8 RGB images.

    One of: Gaussian blur, median blur (kernel sizes drawn from {1, 3, 5}, see the module docstring),
    additive Gaussian noise with sigma ~ U(0, 0.05 * 255). Then, in random order: hue shift ±8 (OpenCV's
    0-179 hue scale), saturation factor 1 ± 0.2, brightness offset ±26 grey levels, contrast factor
    0.75-1.25.
    """
    return A.Compose(
        [
            A.OneOf(
                [
                    _HoVerNetGaussianBlur(p=1.0),
                    _HoVerNetMedianBlur(p=1.0),
                    A.GaussNoise(std_range=(0.0, 0.05), p=1.0),
                ],
                p=1.0,
            ),
            A.RandomOrder(
                [
                    A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=0, val_shift_limit=0, p=1.0),
                    A.ColorJitter(brightness=0, contrast=0, saturation=0.2, hue=0, p=1.0),
                    A.RandomBrightnessContrast(
                        brightness_limit=26 / 255, contrast_limit=0, brightness_by_max=True, p=1.0
                    ),
                    A.ColorJitter(brightness=0, contrast=0.25, saturation=0, hue=0, p=1.0),
                ],
                n=4,
            ),
        ]
    )


def warp_image_and_labels(transform: A.Compose, image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply one draw of a geometric ``transform`` to an image and its integer label maps.

    ``labels`` is ``H x W`` or ``H x W x K`` (e.g. instance and type maps stacked) with ids
    below 2**24. Each map is warped on its own as a single-channel float32 array and cast back:
    OpenCV's nearest-neighbour ``warpAffine`` picks a different source pixel at ~0.1 % of
    positions for 16/32-bit integer and for 2-channel arrays than for the uint8 RGB image,
    which would misalign labels and image.
    """
    if labels.size and labels.max() >= _MAX_FLOAT32_LABEL:
        raise ValueError(f'label ids must be below 2**24 to be warped exactly, found {labels.max()}')
    channels = labels.reshape(*labels.shape[:2], -1).astype(np.float32)
    warped = transform(image=image, masks=[channels[..., index] for index in range(channels.shape[2])])
    warped_labels = np.stack(warped['masks'], axis=-1).astype(labels.dtype)
    return warped['image'], warped_labels.reshape(*warped_labels.shape[:2], *labels.shape[2:])
