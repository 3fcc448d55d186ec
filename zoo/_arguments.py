"""Checks of numeric arguments (and devices) against their meaning, run before any work: a value that cannot work (a
negative class count, no input channels, a NaN ratio, a zero tile, a GPU that is not there) is one error naming
the argument and what it must be,
not a failure deep in torch, a hang or a silently wrong result. ``error`` is the exception type the caller's users
expect (``ValueError`` by default; a subclass such as ``zoo.slide.SlideError`` for the slide pipeline)."""

import math
import numbers
from collections.abc import Sequence

import torch

__all__ = ['check_count', 'check_counts', 'check_device', 'check_finite', 'check_head', 'check_positive', 'check_rate']


def _is_count(value, minimum: int, maximum: int | None = None) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return False
    return minimum <= value and (maximum is None or value <= maximum)


def _is_finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_count(
    name: str, value, minimum: int = 1, maximum: int | None = None, error: type[ValueError] = ValueError
) -> None:
    """``value`` is a whole number from ``minimum`` to ``maximum`` (no upper bound if ``None``)."""
    if not _is_count(value, minimum, maximum):
        bounds = f'>= {minimum}' if maximum is None else f'from {minimum} to {maximum}'
        raise error(f'{name} must be a whole number {bounds}, got {value!r}')


def check_counts(name: str, values: Sequence, minimum: int = 1) -> None:
    """Every entry of ``values`` (e.g. one per stage) is a whole number of at least ``minimum``."""
    if not all(_is_count(value, minimum) for value in values):
        raise ValueError(f'{name} must be whole numbers >= {minimum}, got {tuple(values)!r}')


def check_finite(name: str, value) -> None:
    """``value`` is a finite number."""
    if not _is_finite(value):
        raise ValueError(f'{name} must be a finite number, got {value!r}')


def check_positive(name: str, value, error: type[ValueError] = ValueError) -> None:
    """``value`` is a finite number above 0."""
    if not (_is_finite(value) and value > 0):
        raise error(f'{name} must be a finite number > 0, got {value!r}')


def check_rate(name: str, value) -> None:
    """``value`` is a probability of dropping something: a number in [0, 1) (NaN is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f'{name} must be a number in [0, 1), got {value!r}')


def check_head(num_classes, in_chans) -> None:
    """A classifier of ``num_classes`` outputs (0: none) on images of ``in_chans`` channels."""
    check_count('num_classes', num_classes, 0)
    check_count('in_chans', in_chans)


def check_device(value, error: type[ValueError] = ValueError) -> None:
    """``value`` (``None``: wherever the model is) names a device that torch has here."""
    if value is None:
        return
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise error(f"device {value!r} is not a device torch knows; e.g. 'cpu', 'cuda', 'cuda:1'") from None
    if device.type == 'cpu':
        return
    module = getattr(torch, device.type, None)
    count = module.device_count() if module is not None and module.is_available() else 0
    if count == 0 or (device.index is not None and device.index >= count):
        raise error(f'device {value!r}: this machine has {count} {device.type} device(s); run on cpu (the default)')
