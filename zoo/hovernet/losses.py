"""HoVer-Net loss (Graham et al., MedIA 2019), pure PyTorch.

``total = w_np_ce * CE(np) + w_np_dice * Dice(np) + w_hv_mse * MSE(hv) + w_hv_msge * MSGE(hv)
[+ w_tp_ce * CE(tp) + w_tp_dice * Dice(tp)]``, every weight 1 by default as in HoVer-Net.

* CE is the mean pixel cross-entropy of the logits.
* Dice is the soft Dice of the softmax probabilities against the one-hot target, each class
  computed over the whole batch (``1 - (2 Σ p t + s) / (Σ p + Σ t + s)``, ``s = 1e-3``) and
  summed over classes, background included, as HoVer-Net's ``dice_loss``.
* MSE is the mean squared HV error over all pixels.
* MSGE is the squared error between the HV gradients of prediction and target, averaged over
  nuclear pixels only. Gradients use HoVer-Net's 5x5 Sobel-like kernel ``x / (x^2 + y^2)``:
  the horizontal map is differentiated along x and the vertical map along y. (HoVer-Net's
  PyTorch port builds the kernel with ``torch.meshgrid``'s ``ij`` indexing, which transposes it;
  this follows the original TensorFlow definition.)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ['LOSS_TERMS', 'hovernet_loss', 'hv_gradients', 'msge_loss', 'soft_dice_loss']

LOSS_TERMS = ('np_ce', 'np_dice', 'hv_mse', 'hv_msge', 'tp_ce', 'tp_dice')
_DICE_SMOOTH = 1e-3


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss of ``(B, C, H, W)`` logits against ``(B, H, W)`` class ids, summed over classes."""
    probs = logits.softmax(dim=1)
    one_hot = F.one_hot(target, num_classes=logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    overlap = (probs * one_hot).sum(dims)
    dice = (2.0 * overlap + _DICE_SMOOTH) / (probs.sum(dims) + one_hot.sum(dims) + _DICE_SMOOTH)
    return (1.0 - dice).sum()


def hv_gradients(hv: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """d/dx of channel 0 and d/dy of channel 1 of a ``(B, 2, H, W)`` map, same size (zero pad)."""
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=hv.dtype, device=hv.device)
    y, x = torch.meshgrid(offsets, offsets, indexing='ij')
    squared_distance = x * x + y * y
    squared_distance[radius, radius] = 1.0  # centre weight is 0 / 1 = 0
    kernels = torch.stack([x / squared_distance, y / squared_distance]).unsqueeze(1)
    return F.conv2d(hv, kernels, padding=radius, groups=2)


def msge_loss(pred_hv: torch.Tensor, target_hv: torch.Tensor, focus: torch.Tensor) -> torch.Tensor:
    """Mean squared HV-gradient error over the pixels where ``focus`` (B, H, W) is non-zero."""
    focus = focus.unsqueeze(1).to(pred_hv.dtype).expand_as(pred_hv)
    squared_error = (hv_gradients(pred_hv) - hv_gradients(target_hv)) ** 2
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HoVer-Net's multi-branch loss.

    Args:
        outputs: ``np`` (B, 2, H, W) logits, ``hv`` (B, 2, H, W), optional ``tp`` (B, T, H, W) logits.
        targets: ``np`` (B, H, W) long, ``hv`` (B, 2, H, W), and ``tp`` (B, H, W) long when
            ``outputs`` has ``tp``.
        weights: per-term weights keyed by :data:`LOSS_TERMS`; missing terms weigh 1.

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
    parts = {
        'np_ce': F.cross_entropy(outputs['np'], np_target),
        'np_dice': soft_dice_loss(outputs['np'], np_target),
        'hv_mse': F.mse_loss(outputs['hv'], targets['hv'].to(outputs['hv'].dtype)),
        'hv_msge': msge_loss(outputs['hv'], targets['hv'].to(outputs['hv'].dtype), np_target),
    }
    if 'tp' in outputs:
        tp_target = targets['tp'].long()
        parts['tp_ce'] = F.cross_entropy(outputs['tp'], tp_target)
        parts['tp_dice'] = soft_dice_loss(outputs['tp'], tp_target)
    total = sum(weights.get(name, 1.0) * value for name, value in parts.items())
    return total, parts
