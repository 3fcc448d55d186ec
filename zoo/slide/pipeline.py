"""Running the network over tiles: batches stream through the network while threads read the next ones and
post-process the previous ones.

The network gets the cores. Its backend runs with its own intra-op threads (``InferenceModel.threads``); the
reader threads and the one post-processing thread run at a lower scheduling priority (on Linux, where priority is
per thread), with OpenCV's own thread pool off, so they take the cores only when the network leaves them idle.
At most :data:`POSTPROCESS_BACKLOG` batches wait for post-processing; then the network waits for them.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .._arguments import check_count
from ..inference import InferenceModel
from .errors import SlideError
from .nuclei import Nucleus, tile_nuclei
from .store import NucleusStore
from .tiles import TileGrid

POSTPROCESS_BACKLOG = 1  # batches post-processed while the network runs the next one
BACKGROUND_NICENESS = 10  # how much lower than the network the readers and the post-processing run
_TIMINGS_LOCK = threading.Lock()


def forward_tiles(
    model: torch.nn.Module | InferenceModel, tiles: np.ndarray, device: torch.device
) -> dict[str, np.ndarray | None]:
    """Run a segmentation net on ``B x h x w x 3`` uint8 tiles (the model in eval mode, no grad); ``model`` is
    the net itself (eager PyTorch) or any backend's :func:`zoo.inference.compile` of it.

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
    """Seconds spent per stage. ``read`` and ``postprocess`` are summed over their threads (they overlap the
    network); ``read_wait`` and ``postprocess_wait`` are how long the network waited for them."""

    read: float = 0.0
    read_wait: float = 0.0
    network: float = 0.0
    postprocess: float = 0.0
    postprocess_wait: float = 0.0
    merge: float = 0.0
    write: float = 0.0
    total: float = 0.0

    def add(self, name: str, seconds: float) -> None:
        with _TIMINGS_LOCK:  # reader threads, the post-processing thread and the network add concurrently
            setattr(self, name, getattr(self, name) + seconds)


def timed(timings: Timings, name: str, function: Callable, *args):
    start = time.perf_counter()
    try:
        return function(*args)
    finally:
        timings.add(name, time.perf_counter() - start)


def _lower_priority() -> None:
    """Run the calling thread below the network's threads: on Linux a thread's niceness is its own."""
    if sys.platform.startswith('linux'):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + BACKGROUND_NICENESS))


def run_tiles(
    model: torch.nn.Module | InferenceModel,
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

    ``model`` is the net (run eagerly, in eval mode) or a :func:`zoo.inference.compile` of it.
    ``read_tile(left, top, width, height)`` returns a tile's RGB; with ``workers`` threads the next batches are
    read while the network runs. Each batch is post-processed in a thread while the network runs the next, and
    committed to ``store`` in order. ``progress`` shows a bar (a string sets its label). Returns the number of
    tiles processed now.
    """
    check_count('batch_size', batch_size, error=SlideError)
    timings = timings if timings is not None else Timings()
    network = (
        model if isinstance(model, InferenceModel) else InferenceModel(model, 'torch', 'fp32', torch.get_num_threads())
    )
    device = device or network.device
    batches = [tiles[first : first + batch_size] for first in range(0, len(tiles), batch_size)]
    done = store.done_batches()
    todo = [b for b in range(len(batches)) if b not in done]
    tile_h, tile_w = grid.tile_size

    def read_batch(batch: int) -> np.ndarray:
        def read_one(index):
            top, left = grid.origin(index)
            return read_tile(left, top, tile_w, tile_h)

        return np.stack([timed(timings, 'read', read_one, index) for index in batches[batch]])

    def postprocess_batch(batch: int, maps: dict[str, np.ndarray | None]) -> list[Nucleus]:
        nuclei = []
        for i, index in enumerate(batches[batch]):
            tile_maps = {name: None if value is None else value[i] for name, value in maps.items()}
            nuclei += timed(timings, 'postprocess', tile_nuclei, grid, index, tile_maps)
        return nuclei

    bar = tqdm(
        total=len(tiles),
        initial=len(tiles) - sum(len(batches[b]) for b in todo),
        unit='tile',
        desc=progress if isinstance(progress, str) else None,
        disable=not progress,
        dynamic_ncols=True,
    )
    found = 0

    def commit_oldest() -> None:
        nonlocal found
        batch, future = postprocessing.popleft()
        nuclei = timed(timings, 'postprocess_wait', future.result)
        timed(timings, 'postprocess', store.add_batch, batch, nuclei)
        found += len(nuclei)
        bar.set_postfix_str(f'{found} nuclei', refresh=False)
        bar.update(len(batches[batch]))

    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # OpenCV's pool would compete with the network's threads for the cores
    readers = ThreadPoolExecutor(workers, initializer=_lower_priority) if workers > 0 else None
    postprocessor = ThreadPoolExecutor(1, initializer=_lower_priority)
    postprocessing = collections.deque()
    try:
        reading = {}
        for position, batch in enumerate(todo):
            for ahead in todo[position : position + 1 + workers] if readers else ():  # `workers` batches ahead
                if ahead not in reading:
                    reading[ahead] = readers.submit(read_batch, ahead)
            images = timed(timings, 'read_wait', reading.pop(batch).result) if readers else read_batch(batch)
            maps = timed(timings, 'network', forward_tiles, network, images, device)
            postprocessing.append((batch, postprocessor.submit(postprocess_batch, batch, maps)))
            if len(postprocessing) > POSTPROCESS_BACKLOG:
                commit_oldest()
        while postprocessing:
            commit_oldest()
    except BaseException:
        # Interrupted or failed: still commit the batches the network finished, so a rerun does not repeat them.
        with contextlib.suppress(Exception):
            while postprocessing:
                commit_oldest()
        raise
    finally:
        for pool in (readers, postprocessor):
            if pool:
                pool.shutdown(cancel_futures=True)
        cv2.setNumThreads(opencv_threads)
        bar.close()
    return sum(len(batches[b]) for b in todo)
