"""What a run leaves behind besides checkpoints: ``metrics.csv``, TensorBoard scalars, the epoch lines on
stdout and ``best/`` (the best weights and ``run.json``, everything ``zoo publish`` needs); and the lock that
keeps a second run out of a run directory while one uses it."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from zoo.io import atomic_write_bytes, replace_dir, save_safetensors

__all__ = ['RunLog', 'RunDirLock', 'code_version', 'describe_device']


class RunDirLock:
    """``run_dir/.lock``, locked with ``flock`` while a run uses the directory. The kernel releases the lock
    when the process ends, however it ends, so a killed run never blocks the next one. The file names its
    holder (``pid@host``) and a token that lets the other ranks check that they see the same directory."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / '.lock'
        self._file = None

    def acquire(self, token: int) -> bool:
        """Lock the directory (creating it) and record this process and ``token``; False if another run holds
        it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, 'a+')
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        # Written in place: replacing the file would put the lock on an inode other runs no longer open.
        file.seek(0)
        file.truncate()
        file.write(f'{os.getpid()}@{socket.gethostname()} {token}\n')
        file.flush()
        self._file = file
        return True

    def held_by_another(self) -> bool:
        """Whether another run holds the lock now, creating nothing: the check a run makes before its work ahead
        of taking the lock (data, model). A shared lock is taken and dropped at once; a run trying to lock the
        directory in that instant is refused as if this one held it."""
        try:
            file = open(self.path, 'rb')
        except OSError:  # no lock file, so no holder (one that cannot be opened: acquire() reports it)
            return False
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        return False

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the lock
            self._file = None

    def _fields(self) -> list[str]:
        try:
            return self.path.read_text().split()
        except (OSError, UnicodeDecodeError):
            return []

    def holder(self) -> str:
        """``pid@host`` of the process that last locked the directory ('' if unknown)."""
        fields = self._fields()
        return fields[0] if fields else ''

    def token(self) -> int | None:
        """The token the holder recorded, as this process sees the file (None if it cannot read it)."""
        fields = self._fields()
        return int(fields[1]) if len(fields) == 2 and fields[1].isdigit() else None


_log = logging.getLogger('training')


class RunLog:
    """Writes a run directory's logs. Call only on the main rank."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.run_dir = Path(run_dir)
        self.tensorboard = tensorboard
        self._writer = None

    def epoch(self, history: list[dict]) -> None:
        """Rewrite ``metrics.csv`` with ``history`` and log its last row (TensorBoard, stdout)."""
        row = history[-1]
        keys = list(dict.fromkeys(k for r in history for k in r))
        lines = [','.join(keys)] + [','.join(_fmt(r.get(k)) for k in keys) for r in history]
        atomic_write_bytes(self.run_dir / 'metrics.csv', ('\n'.join(lines) + '\n').encode())
        if self.tensorboard:
            self._tensorboard(row)
        shown = ', '.join(f'{k} {_fmt(v)}' for k, v in row.items() if k != 'epoch')
        print(f'epoch {row["epoch"]}: {shown}', flush=True)

    def save_best(
        self,
        state_dict: Mapping[str, torch.Tensor],
        info: Mapping[str, Any],
        extras: Callable[[Path], list[Path]] | None = None,
    ) -> list[Path]:
        """Replace ``best/`` as a whole (so its weights and ``run.json`` always belong together) with
        ``model.safetensors``, ``run.json`` and what ``extras(folder)`` writes; returns the paths of the extras."""
        staging = self.run_dir / '.best.partial'  # the run directory is locked: no other writer uses this name
        shutil.rmtree(staging, ignore_errors=True)
        save_safetensors(state_dict, staging / 'model.safetensors', metadata={'format': 'pt'})
        atomic_write_bytes(staging / 'run.json', json.dumps(dict(info), indent=1, default=str).encode())
        written = extras(staging) if extras else []
        folder = self.run_dir / 'best'
        replace_dir(staging, folder)
        return [folder / path.relative_to(staging) for path in written]

    def remove_leftovers(self) -> None:
        """Delete what runs killed while writing ``best/`` left behind (its staging folder, an old copy)."""
        for folder in self.run_dir.glob('.best.*'):
            shutil.rmtree(folder, ignore_errors=True)

    def _tensorboard(self, row: dict) -> None:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.tensorboard = False
                _log.warning('tensorboard is not installed; logging to metrics.csv only')
                return
            self._writer = SummaryWriter(self.run_dir / 'tensorboard', purge_step=row['epoch'])
        for key, value in row.items():
            if key != 'epoch' and isinstance(value, (int, float)):
                self._writer.add_scalar(key, value, row['epoch'])
        self._writer.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    return '' if value is None else str(value)


def code_version() -> str | None:
    """``git describe --always --dirty`` of the checkout the trainer runs from (None outside git)."""
    try:
        result = subprocess.run(
            ['git', 'describe', '--always', '--dirty'],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def describe_device(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{os.cpu_count()}-core {platform.machine()} CPU, {torch.get_num_threads()} thread(s) per process'
