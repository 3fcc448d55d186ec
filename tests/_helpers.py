"""Shared by several test modules."""

from training.callbacks import Callback


class Killed(Exception):
    """Raised by ``KillAt``; stands in for the process being killed."""


class KillAt(Callback):
    """Stops a run in the middle of an epoch, after its last checkpoint, like SIGKILL would."""

    def __init__(self, epoch: int, step: int):
        self.epoch, self.step = epoch, step

    def on_step_end(self, trainer, epoch, step):
        if (epoch, step) == (self.epoch, self.step):
            raise Killed
