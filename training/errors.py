"""Errors of the training application that the ``zoo`` command line shows as one line with exit status 2."""

from __future__ import annotations

__all__ = ['RecipeError', 'RunError']


class RecipeError(ValueError):
    """A recipe file or override that cannot be used; the one-line message names the key path."""


class RunError(Exception):
    """A run directory cannot be used as asked: another run holds it, it is not shared by all ranks, its
    checkpoints were made with another recipe or number of ranks, or none of them can be read. The message
    names the directory and what to do."""
