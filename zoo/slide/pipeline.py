"""Running the network over tiles: batches stream through the network while threads read the next ones."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .._arguments import check_count
from .errors import SlideError
from .nuclei import tile_nuclei
from .store import NucleusStore
from .tiles import TileGrid


def forward_tiles(model: torch.nn.Module, tiles: np.ndarray, device: torch.device) -> dict[str, np.ndarray | None]:
    """Run a segmentation net on ``B x h x w x 3`` uint8 tiles (the model in eval mode, no grad).

    Returns ``np``: ``B x h x w`` nuclear probability, ``hv``: ``B x 2 x h x w``, ``tp``: ``B x T x h x w``
    type probabilities or ``None``, all float32.
    """
    batch = torch.from_numpy(tiles.transpose(0, 3, 1, 2).copy()).to(device).float().div_(255)
    with torch.inference_mode():
        outputs = model(batch)
        maps = {'np': outputs['np'].float().softmax(1)[:, 1], 'hv': outputs['hv'].float()}
        maps['tp'] = outputs['tp'].float().softmax(1) if 'tp' in outputs else None
    return {name: None if value is None else value.cpu().numpy() for name, value in maps.items()}


@dataclass
class Timings:
    """Seconds spent per stage. ``read`` is summed over reader threads (it overlaps the network when
    ``workers > 0``); ``read_wait`` is how long the network waited for tiles."""

    read: float = 0.0
    read_wait: float = 0.0
    network: float = 0.0
    postprocess: float = 0.0
    merge: float = 0.0
    write: float = 0.0
    total: float = 0.0

    def add(self, name: str, seconds: float) -> None:
        setattr(self, name, getattr(self, name) + seconds)


def timed(timings: Timings, name: str, function: Callable, *args):
    start = time.perf_counter()
    try:
        return function(*args)
    finally:
        timings.add(name, time.perf_counter() - start)


def run_tiles(
    model: torch.nn.Module,
    read_tile: Callable[[int, int, int, int], np.ndarray],
    grid: TileGrid,
    tiles: Sequence[int],
    store: NucleusStore,
    *,
    batch_size: int,
    workers: int = 0,
    device: torch.device | None = None,
    progress: bool | str = False,
    timings: Timings | None = None,
) -> int:
    """Segment ``tiles`` of ``grid`` batch by batch into ``store``, skipping the batches it already holds.

    ``read_tile(left, top, width, height)`` returns a tile's RGB; with ``workers`` threads the next batches
    are read while the network runs. ``progress`` shows a bar (a string sets its label). Returns the number of
    tiles processed now.
    """
    check_count('batch_size', batch_size, error=SlideError)
    timings = timings if timings is not None else Timings()
    device = device or next(model.parameters()).device
    batches = [tiles[first : first + batch_size] for first in range(0, len(tiles), batch_size)]
    done = store.done_batches()
    todo = [b for b in range(len(batches)) if b not in done]
    tile_h, tile_w = grid.tile_size

    def read_batch(batch: int) -> np.ndarray:
        def read_one(index):
            top, left = grid.origin(index)
            return read_tile(left, top, tile_w, tile_h)

        return np.stack([timed(timings, 'read', read_one, index) for index in batches[batch]])

    bar = tqdm(
        total=len(tiles),
        initial=len(tiles) - sum(len(batches[b]) for b in todo),
        unit='tile',
        desc=progress if isinstance(progress, str) else None,
        disable=not progress,
        dynamic_ncols=True,
    )
    was_training = model.training
    model.eval()
    pool = ThreadPoolExecutor(workers) if workers > 0 else None
    try:
        pending, found = {}, 0
        for position, batch in enumerate(todo):
            for ahead in todo[position : position + 1 + workers] if pool else ():  # `workers` batches ahead
                if ahead not in pending:
                    pending[ahead] = pool.submit(read_batch, ahead)
            images = timed(timings, 'read_wait', pending.pop(batch).result) if pool else read_batch(batch)
            maps = timed(timings, 'network', forward_tiles, model, images, device)
            nuclei = []
            for i, index in enumerate(batches[batch]):
                tile_maps = {name: None if value is None else value[i] for name, value in maps.items()}
                nuclei += timed(timings, 'postprocess', tile_nuclei, grid, index, tile_maps)
            timed(timings, 'postprocess', store.add_batch, batch, nuclei)
            found += len(nuclei)
            bar.set_postfix_str(f'{found} nuclei', refresh=False)
            bar.update(len(batches[batch]))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        model.train(was_training)
        bar.close()
    return sum(len(batches[b]) for b in todo)
