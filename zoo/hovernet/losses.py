"""HoVer-Net loss (Graham et al., MedIA 2019), pure PyTorch, with the definitions of HoVer-Net's
``models/hovernet/utils.py`` (``tests/zoo/hovernet/test_oracles.py`` checks every term against the
reference code).

``total = w_np_ce * CE(np) + w_np_dice * Dice(np) + w_hv_mse * MSE(hv) + w_hv_msge * MSGE(hv)
[+ w_tp_ce * CE(tp) + w_tp_dice * Dice(tp)]``, every weight 1 by default as in HoVer-Net.

* CE is the mean pixel cross-entropy of the softmax probabilities, clamped to ``[1e-7, 1 - 1e-7]`` as
  HoVer-Net's ``xentropy_loss`` does (so a pixel's loss is at most ``-log(1e-7) = 16.118``, and it has no
  gradient while its probability is clamped).
* Dice is the soft Dice of the softmax probabilities against the one-hot target, each class computed over
  the whole batch (``1 - (2 Σ p t + s) / (Σ p + Σ t + s)``, ``s = 1e-3``) and summed over classes,
  background included.
* MSE is the mean squared HV error over all pixels.
* MSGE is the squared error between the HV gradients of prediction and target, averaged over nuclear
  pixels only, with HoVer-Net's 5x5 kernel ``d / (dx^2 + dy^2)``. Both official implementations (PyTorch
  ``master`` and the TensorFlow branch) differentiate the horizontal map along y and the vertical map
  along x, and that is the default; ``paper_msge=True`` takes the derivatives of the paper's formula
  instead (horizontal along x, vertical along y, the axes the post-processing uses).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ['LOSS_TERMS', 'cross_entropy_loss', 'hovernet_loss', 'hv_gradients', 'msge_loss', 'soft_dice_loss']

LOSS_TERMS = ('np_ce', 'np_dice', 'hv_mse', 'hv_msge', 'tp_ce', 'tp_dice')
_DICE_SMOOTH = 1e-3
_PROB_CLAMP = 1e-7
_MSGE_KERNEL_SIZE = 5


def _one_hot(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(target, num_classes=num_classes).permute(0, 3, 1, 2).to(dtype)


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """HoVer-Net's ``xentropy_loss`` of ``(B, C, H, W)`` logits against ``(B, H, W)`` class ids.

    Softmax probabilities, renormalised and clamped to ``[1e-7, 1 - 1e-7]``; the mean over pixels of
    ``-Σ_c t_c log p_c``.
    """
    probs = logits.softmax(dim=1)
    probs = (probs / probs.sum(dim=1, keepdim=True)).clamp(_PROB_CLAMP, 1.0 - _PROB_CLAMP)
    return -(_one_hot(target, logits.shape[1], probs.dtype) * probs.log()).sum(dim=1).mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss of ``(B, C, H, W)`` logits against ``(B, H, W)`` class ids, summed over classes."""
    probs = logits.softmax(dim=1)
    one_hot = _one_hot(target, logits.shape[1], probs.dtype)
    dims = (0, 2, 3)
    overlap = (probs * one_hot).sum(dims)
    dice = (2.0 * overlap + _DICE_SMOOTH) / (probs.sum(dims) + one_hot.sum(dims) + _DICE_SMOOTH)
    return (1.0 - dice).sum()


def hv_gradients(hv: torch.Tensor, paper_axes: bool = False) -> torch.Tensor:
    """Gradients of a ``(B, 2, H, W)`` HV map with HoVer-Net's 5x5 kernels, same size (zero padding).

    By default, as HoVer-Net's code: channel 0 (horizontal map) along y, channel 1 (vertical map) along
    x. With ``paper_axes``: channel 0 along x and channel 1 along y.
    """
    radius = _MSGE_KERNEL_SIZE // 2
    offsets = torch.arange(-radius, radius + 1, dtype=hv.dtype, device=hv.device)
    dy, dx = torch.meshgrid(offsets, offsets, indexing='ij')
    squared_distance = dx * dx + dy * dy + 1e-15  # HoVer-Net's epsilon; it makes the centre weight 0
    along_x, along_y = dx / squared_distance, dy / squared_distance
    kernels = torch.stack([along_x, along_y] if paper_axes else [along_y, along_x]).unsqueeze(1)
    return F.conv2d(hv, kernels, padding=radius, groups=2)


def msge_loss(
    pred_hv: torch.Tensor, target_hv: torch.Tensor, focus: torch.Tensor, paper_axes: bool = False
) -> torch.Tensor:
    """Mean squared HV-gradient error over the pixels where ``focus`` (B, H, W) is non-zero.

    Both channels are averaged together: the denominator is twice the focus area (plus 1e-8), as in
    HoVer-Net. ``paper_axes`` is :func:`hv_gradients`'.
    """
    focus = focus.unsqueeze(1).to(pred_hv.dtype).expand_as(pred_hv)
    squared_error = (hv_gradients(pred_hv, paper_axes) - hv_gradients(target_hv, paper_axes)) ** 2
    return (focus * squared_error).sum() / (focus.sum() + 1e-8)


def _check_shapes(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> None:
    batch, _, height, width = outputs['np'].shape
    expected = {'np': (batch, height, width), 'hv': (batch, 2, height, width)}
    if 'tp' in outputs:
        expected['tp'] = (batch, height, width)
    for key, shape in expected.items():
        if key not in targets:
            raise KeyError(f"targets has no '{key}' but outputs need it")
        if tuple(targets[key].shape) != shape:
            raise ValueError(f"targets['{key}'] has shape {tuple(targets[key].shape)}, expected {shape}")
    if tuple(outputs['hv'].shape) != expected['hv']:
        raise ValueError(f"outputs['hv'] has shape {tuple(outputs['hv'].shape)}, expected {expected['hv']}")


def hovernet_loss(
    outputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    weights: Mapping[str, float] | None = None,
    paper_msge: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HoVer-Net's multi-branch loss.

    Args:
        outputs: ``np`` (B, 2, H, W) logits, ``hv`` (B, 2, H, W), optional ``tp`` (B, T, H, W) logits.
        targets: ``np`` (B, H, W) long, ``hv`` (B, 2, H, W), and ``tp`` (B, H, W) long when
            ``outputs`` has ``tp``.
        weights: per-term weights keyed by :data:`LOSS_TERMS`; missing terms weigh 1.
        paper_msge: differentiate the HV maps along the paper's axes in MSGE (see the module docstring).

    Returns:
        The weighted total and the unweighted terms (still attached to the graph; call
        ``.item()`` for logging).
    """
    _check_shapes(outputs, targets)
    weights = dict(weights or {})
    unknown = set(weights) - set(LOSS_TERMS)
    if unknown:
        raise KeyError(f'unknown loss terms {sorted(unknown)}; expected some of {LOSS_TERMS}')

    np_target = targets['np'].long()
    hv_target = targets['hv'].to(outputs['hv'].dtype)
    parts = {
        'np_ce': cross_entropy_loss(outputs['np'], np_target),
        'np_dice': soft_dice_loss(outputs['np'], np_target),
        'hv_mse': F.mse_loss(outputs['hv'], hv_target),
        'hv_msge': msge_loss(outputs['hv'], hv_target, np_target, paper_msge),
    }
    if 'tp' in outputs:
        tp_target = targets['tp'].long()
        parts['tp_ce'] = cross_entropy_loss(outputs['tp'], tp_target)
        parts['tp_dice'] = soft_dice_loss(outputs['tp'], tp_target)
    total = sum(weights.get(name, 1.0) * value for name, value in parts.items())
    return total, parts
