"""The errors and warnings of the slide pipeline."""

from __future__ import annotations


class SlideError(ValueError):
    """A slide that cannot be read or processed; the message is one line saying what to do."""


class SlideWarning(UserWarning):
    """Something the user should know about a run (e.g. resolution unknown), which does not stop it."""
