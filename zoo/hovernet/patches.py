"""HoVer-Net's training patches: mirror-padded sliding windows over an image and its label maps
(``extract_patches.py`` of the reference code), read through reflected indices so nothing is padded
in memory."""

from __future__ import annotations

import numpy as np

__all__ = ['extract_patches', 'patch_origins', 'read_window']


def _window_starts(length: int, window: int, step: int) -> list[int]:
    margin = (window - step) // 2
    padded = max(length + window - step, window)  # short inputs are padded up to one window
    last = padded - window
    starts = list(range(0, last + 1, step))
    if starts[-1] != last:  # one more window flush with the far edge, as HoVer-Net does
        starts.append(last)
    return [start - margin for start in starts]


def patch_origins(height: int, width: int, window: int, step: int) -> list[tuple[int, int]]:
    """Top-left corners, in image coordinates, of HoVer-Net's mirror-padded sliding windows.

    The image is conceptually mirror-padded by ``margin = (window - step) // 2`` before and the
    rest of ``window - step`` after (HoVer-Net's ``extract_patches.py``: 540 windows, step 164),
    and windows slide by ``step`` with a last one flush with the padded edge (inputs shorter
    than ``step`` are padded up to one window). Corners can be negative. The central
    ``step x step`` region of the window at ``(top, left)`` starts at image pixel
    ``(top + margin, left + margin)``, and these regions tile the whole image.
    """
    if not 0 < step <= window:
        raise ValueError(f'need 0 < step <= window, got step {step}, window {window}')
    return [(top, left) for top in _window_starts(height, window, step) for left in _window_starts(width, window, step)]


def _reflect(indices: np.ndarray, size: int) -> np.ndarray:
    """Fold indices into ``[0, size)`` as ``np.pad(mode='reflect')`` does (edge not repeated)."""
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    indices = np.abs(indices) % period
    return np.where(indices >= size, period - indices, indices)


def read_window(array: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """The ``size x size`` window at ``(top, left)`` of a mirror-padded ``array`` (HxW or HxWxC).

    Reads through reflected indices, so nothing is padded in memory and an image and its label
    maps read with the same corner stay aligned.
    """
    rows = _reflect(np.arange(top, top + size), array.shape[0])
    cols = _reflect(np.arange(left, left + size), array.shape[1])
    return array[rows[:, None], cols[None, :]]


def extract_patches(image: np.ndarray, window: int, step: int) -> np.ndarray:
    """All HoVer-Net windows of an HxW or HxWxC array, stacked to ``N x window x window [x C]``.

    Order and corners are those of :func:`patch_origins`; apply it to the image and to each
    label map (or to them stacked along channels) to get aligned patches.
    """
    return np.stack(
        [read_window(image, top, left, window) for top, left in patch_origins(*image.shape[:2], window, step)]
    )
