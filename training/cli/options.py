"""Types of command-line options, checked against their meaning when the command line is parsed: argparse then
names the option in its one-line error (``argument --tile: must be a whole number >= 1, got '0'``) and nothing has
started."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

__all__ = ['output_folder', 'positive_number', 'whole_number']


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An option type: a whole number from ``minimum`` to ``maximum`` (no upper bound if ``None``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bounds = f'>= {minimum}' if maximum is None else f'from {minimum} to {maximum}'
            raise argparse.ArgumentTypeError(f'must be a whole number {bounds}, got {text!r}')
        return value

    return parse


def positive_number(text: str) -> float:
    """An option type: a finite number above 0 (not NaN, not inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f'must be a finite number > 0, got {text!r}')
    return value


def output_folder(text: str) -> Path:
    """An option type: a folder to write into, created if missing; refused when a file is in the way (the path
    itself, or a folder above it, exists as something else)."""
    path = Path(text)
    in_the_way = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if in_the_way is not None:
        raise argparse.ArgumentTypeError(f'{in_the_way} is a file, not a folder; give a folder (created if missing)')
    return path
