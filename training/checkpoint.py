"""Resumable training checkpoints with no pickles: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``checkpoints/epoch-NNNN/`` holding ``model.safetensors``, ``state.safetensors``
+ ``state.json`` (optimizer, trainer and callback state) and one ``rng-rank{R}.safetensors`` +
``rng-rank{R}.json`` per rank. It is assembled under a temporary name and renamed into place, then
the text file ``checkpoints/latest`` is atomically replaced to point at it, so a run killed at any
moment leaves either the previous checkpoint or the new one, never half of one. Files are fsynced
before each rename, and if the machine itself crashes with ``latest`` pointing at an incomplete folder,
the newest complete one is used.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from zoo.io import atomic_write_bytes, fsync_dir, save_safetensors

__all__ = ['flatten', 'unflatten', 'rng_state', 'set_rng_state', 'CheckpointDir']

_log = logging.getLogger('training.checkpoint')

_TENSOR, _TUPLE, _NDARRAY = '__tensor__', '__tuple__', '__ndarray__'


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = 's') -> Any:
    """A JSON-able copy of nested dicts/lists/tuples whose tensors are moved into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to('cpu').contiguous().clone()
        return {_TENSOR: prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(obj.copy())
        return {_NDARRAY: prefix}
    if isinstance(obj, Mapping):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f'checkpoint dict keys must be str or int, found {list(obj)[:5]} at {prefix}')
        # JSON keys are strings; remember int keys (optimizer state is keyed by parameter index).
        return {'__dict__': [[k, flatten(v, tensors, f'{prefix}.{k}')] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [flatten(v, tensors, f'{prefix}.{i}') for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, tensors, f'{prefix}.{i}') for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f'cannot store {type(obj).__name__} at {prefix} in a checkpoint without pickling it')


def unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _NDARRAY in obj:
            return tensors[obj[_NDARRAY]].numpy()
        if _TUPLE in obj:
            return tuple(unflatten(v, tensors) for v in obj[_TUPLE])
        return {k: unflatten(v, tensors) for k, v in obj['__dict__']}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def rng_state() -> dict:
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _save(folder: Path, name: str, obj: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    structure = flatten(obj, tensors)
    save_safetensors(tensors, folder / f'{name}.safetensors')
    (folder / f'{name}.json').write_text(json.dumps(structure))


def _load(folder: Path, name: str) -> Any:
    tensors = load_file(str(folder / f'{name}.safetensors'))
    return unflatten(json.loads((folder / f'{name}.json').read_text()), tensors)


def _complete(folder: Path) -> bool:
    return all((folder / f).exists() for f in ('model.safetensors', 'state.safetensors', 'state.json'))


class CheckpointDir:
    """``run_dir/checkpoints``: writing epoch folders atomically and finding the latest one."""

    def __init__(self, run_dir: Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f'checkpoint.keep must be at least 1, got {keep}')
        self.root = Path(run_dir) / 'checkpoints'
        self.keep = keep

    def latest(self) -> Path | None:
        """The newest complete checkpoint (``latest``'s target, or the newest complete folder if that is
        missing, as after a crash of the machine rather than of the process)."""
        pointer = self.root / 'latest'
        if not pointer.exists():
            return None
        folder = self.root / pointer.read_text().strip()
        if _complete(folder):
            return folder
        complete = sorted(p for p in self.root.glob('epoch-*') if _complete(p))
        if not complete:
            raise FileNotFoundError(
                f'{pointer} points at {folder}, which is incomplete, and no other complete '
                f'checkpoint exists in {self.root}'
            )
        _log.warning('%s is incomplete; resuming from %s instead', folder, complete[-1])
        return complete[-1]

    def staging(self, epoch: int) -> Path:
        """The temporary folder all ranks write epoch ``epoch`` into (created by rank 0)."""
        return self.root / f'.epoch-{epoch:04d}.partial'

    def begin(self, epoch: int) -> Path:
        folder = self.staging(epoch)
        shutil.rmtree(folder, ignore_errors=True)  # left over from a run killed while writing
        folder.mkdir(parents=True)
        return folder

    @staticmethod
    def write_rank(folder: Path, rank: int) -> None:
        _save(folder, f'rng-rank{rank}', rng_state())

    @staticmethod
    def write_main(folder: Path, model_state: Mapping[str, torch.Tensor], state: Any) -> None:
        save_safetensors(model_state, folder / 'model.safetensors', metadata={'format': 'pt'})
        _save(folder, 'state', state)

    def commit(self, epoch: int) -> Path:
        """Rename the staged folder into place, move ``latest`` to it, prune old epochs (rank 0)."""
        final = self.root / f'epoch-{epoch:04d}'
        if final.exists():  # written by a run killed after the rename but before `latest` moved
            shutil.rmtree(final)
        staging = self.staging(epoch)
        for file in staging.iterdir():  # durable contents before the rename makes them visible
            with open(file, 'rb') as f:
                os.fsync(f.fileno())
        fsync_dir(staging)
        os.replace(staging, final)
        fsync_dir(self.root)
        atomic_write_bytes(self.root / 'latest', final.name.encode())
        epochs = sorted(p for p in self.root.glob('epoch-*') if p.is_dir())
        for old in epochs[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def read_state(folder: Path) -> Any:
        return _load(folder, 'state')

    @staticmethod
    def read_model(folder: Path) -> dict[str, torch.Tensor]:
        return load_file(str(folder / 'model.safetensors'))

    @staticmethod
    def read_rank(folder: Path, rank: int) -> dict | None:
        if not (folder / f'rng-rank{rank}.safetensors').exists():
            return None
        return _load(folder, f'rng-rank{rank}')
