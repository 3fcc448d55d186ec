"""Input domains: what kind of image a model was trained on, and a check for inputs plainly outside it.

A model built with published weights states its domain as ``model.input_domain`` (``None``: unknown).
:func:`domain_warning` applies a few simple, documented rules to an ``H x W x 3`` uint8 RGB image (as
:func:`zoo.io.read_image` returns it) and says why the image is plainly not of that kind, so ``zoo predict``
and the slide tool can warn before giving a confident answer about, say, a holiday photo. The rules only
catch obvious mismatches; passing them does not mean an image is in the domain.

Measures (computed on at most about a million pixels, evenly subsampled):

* *colourfulness*: Hasler & Süsstrunk (2003), ``sqrt(σ_rg² + σ_yb²) + 0.3·sqrt(μ_rg² + μ_yb²)`` with
  ``rg = R - G`` and ``yb = (R + G)/2 - B``; 0 for grey, about 15 "slightly colourful", 33 "moderately",
  over 45 "quite" (their scale). H&E tiles measure 35-42, photos 38-77.
* *brightness*: median grey level (ITU-R 601-2 luma, 0-255) of the whole image and of its one-pixel border.
* *pinkness*: ``min(mean(R - G), mean(B - G))``: positive when green is the weakest channel, as in the pink
  eosin and purple haematoxylin of H&E (about +40); photos and brown DAB stains are negative.

Rules, with what the reference images of ``tests/zoo/test_domain.py`` measure:

* ``'fashion-mnist'``: refuses colourful images (colourfulness > 15; Fashion-MNIST is grey, 0) and a
  border that is not black (median > 48; Fashion-MNIST's test images: at most 17.5, 0 for 99 %).
* ``'fluorescence'``: refuses a light background (median > 100; the StarDist sample: 21, H&E tiles: 116-132).
* ``'he'``: refuses a dark background (median < 60; fluorescence: 21), grey images (colourfulness < 10)
  and colourful images whose weakest channel is not green (pinkness < 0).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ['INPUT_DOMAINS', 'domain_warning', 'image_measures']

# input_domain -> what the model was trained on, as said to users
INPUT_DOMAINS: dict[str, str] = {
    'fashion-mnist': 'Fashion-MNIST: 28x28 grey product photos, a light object on a black background',
    'fluorescence': 'fluorescence microscopy: bright nuclei on a dark background',
    'he': 'H&E-stained brightfield histology: light background, pink and purple tissue',
}

_SAMPLED_PIXELS = 1_000_000


def image_measures(image: np.ndarray) -> dict[str, float]:
    """Colourfulness, median grey level of the image and of its border, and pinkness (see the module doc)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}')
    step = max(1, math.ceil(math.sqrt(image.shape[0] * image.shape[1] / _SAMPLED_PIXELS)))
    pixels = image[::step, ::step].astype(np.float64)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    rg, yb = r - g, (r + g) / 2 - b
    grey = 0.299 * r + 0.587 * g + 0.114 * b
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    return dict(
        colourfulness=float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())),
        median=float(np.median(grey)),
        border_median=float(np.median(border)),
        pinkness=float(min(rg.mean(), (b - g).mean())),
    )


def domain_warning(image: np.ndarray, domain: str | None) -> str | None:
    """Why ``image`` (``H x W x 3`` uint8 RGB) is plainly outside ``domain``, in one line; ``None`` when no
    rule fires or the domain is unknown (``None``)."""
    if domain is None:
        return None
    if domain not in INPUT_DOMAINS:
        raise ValueError(f'unknown input domain {domain!r}; known: {sorted(INPUT_DOMAINS)} or None')
    m = image_measures(image)
    reason = None
    if domain == 'fashion-mnist':
        if m['colourfulness'] > 15:
            reason = f'it is a colour image (colourfulness {m["colourfulness"]:.0f}; grey is 0)'
        elif m['border_median'] > 48:
            reason = f'its border is not black (median grey level {m["border_median"]:.0f} of 255)'
    elif domain == 'fluorescence':
        if m['median'] > 100:
            reason = f'its background is light (median grey level {m["median"]:.0f} of 255), as in brightfield'
    elif m['median'] < 60:
        reason = f'its background is dark (median grey level {m["median"]:.0f} of 255), as in fluorescence'
    elif m['colourfulness'] < 10:
        reason = f'it is (nearly) grey (colourfulness {m["colourfulness"]:.0f}); H&E is pink and purple'
    elif m['pinkness'] < 0:
        reason = "its colours are not H&E's pink and purple (green is not the weakest channel)"
    if reason is None:
        return None
    return f"does not look like the model's input ({INPUT_DOMAINS[domain]}): {reason}; predictions may be meaningless"
