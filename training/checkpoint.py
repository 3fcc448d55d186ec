"""Resumable training checkpoints with no pickles: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``checkpoints/epoch-NNNN/`` holding ``model.safetensors``, ``state.safetensors``
+ ``state.json`` (optimizer, trainer and callback state) and one ``rng-rank{R}.safetensors`` +
``rng-rank{R}.json`` per rank. Every rank writes its files into one staging folder, which rank 0 then
renames into place (``zoo.io.replace_dir``: files fsynced first), so the run directory must be on a
filesystem that all nodes share (the trainer checks). The text file ``checkpoints/latest`` is then
atomically replaced to point at the new folder, so a run killed at any moment leaves either the previous
checkpoint or the new one, never half of one. A folder damaged all the same (a crash of the machine, a full
disk, a file overwritten by hand) is detected when it is read: the trainer warns and resumes from the
previous one, which ``checkpoint.keep`` (default 2) keeps.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from zoo.io import atomic_write_bytes, replace_dir, save_safetensors

__all__ = ['flatten', 'unflatten', 'rng_state', 'set_rng_state', 'Checkpoint', 'CheckpointDir', 'UnreadableCheckpoint']

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


class UnreadableCheckpoint(Exception):
    """A checkpoint file is missing or damaged; the message names the file and the problem."""


def _read(path: Path, parse: Callable[[Path], Any]) -> Any:
    try:
        return parse(path)
    except Exception as e:  # whatever a missing, truncated or overwritten file makes the parser raise
        raise UnreadableCheckpoint(f'{path.name}: {" ".join(str(e).split())}') from e


def _load(folder: Path, name: str) -> Any:
    tensors = _read(folder / f'{name}.safetensors', lambda p: load_file(str(p)))
    structure = _read(folder / f'{name}.json', lambda p: json.loads(p.read_text()))
    return _read(folder / f'{name}.json', lambda _: unflatten(structure, tensors))


@dataclass
class Checkpoint:
    """One epoch folder as read back: trainer ``state``, ``model`` weights and this rank's ``rng`` state (None
    for a rank beyond the checkpoint's world size)."""

    folder: Path
    state: Any
    model: dict[str, torch.Tensor]
    rng: dict | None


class CheckpointDir:
    """``run_dir/checkpoints``: writing epoch folders atomically and reading them back."""

    def __init__(self, run_dir: Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f'checkpoint.keep must be at least 1, got {keep}')
        self.root = Path(run_dir) / 'checkpoints'
        self.keep = keep

    def candidates(self) -> list[Path]:
        """The epoch folders to resume from, in order of preference: the one ``latest`` names, then the others,
        newest first (the next one to try when a folder turns out to be damaged)."""
        folders = sorted((p for p in self.root.glob('epoch-*') if p.is_dir()), reverse=True)
        pointer = self.root / 'latest'
        named = pointer.read_bytes().decode(errors='replace').strip() if pointer.is_file() else None
        return sorted(folders, key=lambda folder: folder.name != named)

    @staticmethod
    def read(folder: Path, rank: int) -> Checkpoint:
        """Everything rank ``rank`` restores from ``folder``. Raises :class:`UnreadableCheckpoint` if a file is
        missing or does not parse (as a truncated or overwritten one does)."""
        state = _load(folder, 'state')
        model = _read(folder / 'model.safetensors', lambda p: load_file(str(p)))
        world_size = _read(folder / 'state.json', lambda _: int(state['world_size']))
        rng = _load(folder, f'rng-rank{rank}') if rank < world_size else None
        return Checkpoint(folder, state, model, rng)

    def staging(self, epoch: int) -> Path:
        """The temporary folder all ranks write epoch ``epoch`` into (created by rank 0)."""
        return self.root / f'.epoch-{epoch:04d}.partial'

    def begin(self, epoch: int) -> Path:
        folder = self.staging(epoch)
        shutil.rmtree(folder, ignore_errors=True)  # left over from a run killed while writing
        folder.mkdir(parents=True)
        return folder

    def remove_leftovers(self) -> None:
        """Delete what runs killed while writing left behind: staging folders and folders being replaced."""
        for folder in self.root.glob('.epoch-*'):
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def write_rank(folder: Path, rank: int) -> None:
        _save(folder, f'rng-rank{rank}', rng_state())

    @staticmethod
    def write_main(folder: Path, model_state: Mapping[str, torch.Tensor], state: Any) -> None:
        save_safetensors(model_state, folder / 'model.safetensors', metadata={'format': 'pt'})
        _save(folder, 'state', state)

    def commit(self, epoch: int) -> Path:
        """Move the staged folder into place (durably, replacing one a run killed before ``latest`` moved may
        have left), point ``latest`` at it and prune old epochs (rank 0)."""
        final = self.root / f'epoch-{epoch:04d}'
        replace_dir(self.staging(epoch), final)
        atomic_write_bytes(self.root / 'latest', final.name.encode())
        epochs = sorted(p for p in self.root.glob('epoch-*') if p.is_dir())
        for old in epochs[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final
