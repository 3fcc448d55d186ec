"""What a run leaves behind besides checkpoints: ``metrics.csv``, TensorBoard scalars, the epoch lines on
stdout and ``best/`` (the best weights and ``run.json``, everything ``zoo publish`` needs)."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from zoo.io import atomic_write_bytes, save_safetensors

__all__ = ['RunLog', 'code_version', 'describe_device']

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

    def save_best(self, state_dict: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> Path:
        """``best/model.safetensors`` and ``best/run.json``; returns the folder."""
        folder = self.run_dir / 'best'
        save_safetensors(state_dict, folder / 'model.safetensors', metadata={'format': 'pt'})
        atomic_write_bytes(folder / 'run.json', json.dumps(dict(info), indent=1, default=str).encode())
        return folder

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
