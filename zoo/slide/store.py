"""The nuclei store: nuclei per tile in SQLite, one transaction per batch of tiles (resumable slides)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import SlideError
from .nuclei import Nucleus

_DAMAGED = 'the file is damaged: delete it to segment the slide from the start, or choose another output folder'
# What to do about SQLite's errors (by the prefix of their name), said in the one line a SlideError is.
_ADVICE = {
    'SQLITE_CANTOPEN': 'check that its folder is writable, or choose another output folder',
    'SQLITE_READONLY': 'check its permissions, or choose another output folder',
    'SQLITE_PERM': 'check its permissions, or choose another output folder',
    'SQLITE_FULL': 'free some space, or choose another output folder',
    'SQLITE_IOERR': 'check the disk (is it full?), or choose another output folder',
    'SQLITE_NOTADB': _DAMAGED,
    'SQLITE_CORRUPT': _DAMAGED,
    'SQLITE_BUSY': 'another run is writing it: wait for that run, or choose another output folder',
}


def _slide_errors(method):
    """SQLite's errors of ``method`` as one-line ``SlideError``s naming the store's file and what to do."""

    @functools.wraps(method)
    def translated(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            name = getattr(e, 'sqlite_errorname', '')
            advice = next(
                (a for prefix, a in _ADVICE.items() if name.startswith(prefix)), 'choose another output folder'
            )
            raise SlideError(f'{self.path}: {e}; {advice}') from e

    return translated


class NucleusStore:
    """Nuclei per tile in SQLite: on disk for resumable slides, in memory for images.

    Each batch of tiles is one transaction, so a killed run leaves whole batches only. SQLite's errors (a folder
    that cannot be written, a full disk, a damaged file) are one-line ``SlideError``s naming the file.
    """

    @_slide_errors
    def __init__(self, path: str | Path = ':memory:'):
        self.path = str(path)
        self.db = sqlite3.connect(self.path)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY);
            CREATE TABLE IF NOT EXISTS nuclei (
                id INTEGER PRIMARY KEY, tile INTEGER, rmin INTEGER, cmin INTEGER, rmax INTEGER, cmax INTEGER,
                depth INTEGER, cx REAL, cy REAL, type INTEGER, type_prob REAL, mask BLOB, contour BLOB,
                duplicate INTEGER DEFAULT 0);
            CREATE INDEX IF NOT EXISTS nuclei_tile ON nuclei (tile);
            """
        )

    @_slide_errors
    def check_meta(self, meta: dict[str, str], where: str) -> None:
        """Record the run's parameters, or check that those recorded match (a resumed run must be the same)."""
        stored = dict(self.db.execute('SELECT key, value FROM meta'))
        if not stored:
            with self.db:
                self.db.executemany('INSERT INTO meta VALUES (?, ?)', meta.items())
            return
        for key, value in meta.items():
            if stored.get(key) != value:
                raise SlideError(
                    f'{where} holds the tiles of a different run ({key} was {stored.get(key)}, now {value}); '
                    'delete it or choose another output folder'
                )

    @_slide_errors
    def done_batches(self) -> set[int]:
        return {row[0] for row in self.db.execute('SELECT id FROM batches')}

    @_slide_errors
    def add_batch(self, batch: int, nuclei: Sequence[Nucleus]) -> None:
        rows = [
            (
                n.tile,
                *n.bbox,
                n.depth,
                *n.centroid.tolist(),
                n.type,
                n.type_prob,
                np.packbits(n.mask).tobytes(),
                n.contour.astype(np.int32).tobytes(),
            )
            for n in nuclei
        ]
        with self.db:
            self.db.executemany(
                'INSERT INTO nuclei (tile, rmin, cmin, rmax, cmax, depth, cx, cy, type, type_prob, mask, contour) '
                'VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                rows,
            )
            self.db.execute('INSERT INTO batches VALUES (?)', (batch,))

    @_slide_errors
    def nuclei(self, tile: int, include_duplicates: bool = False) -> list[Nucleus]:
        query = 'SELECT id, tile, rmin, cmin, rmax, cmax, depth, cx, cy, type, type_prob, mask, contour FROM nuclei '
        query += 'WHERE tile = ?' + ('' if include_duplicates else ' AND duplicate = 0') + ' ORDER BY id'
        return [_nucleus_from_row(row) for row in self.db.execute(query, (tile,))]

    @_slide_errors
    def tiles_with_nuclei(self) -> list[int]:
        return [row[0] for row in self.db.execute('SELECT DISTINCT tile FROM nuclei ORDER BY tile')]

    @_slide_errors
    def mark_duplicates(self, ids: set[int]) -> None:
        with self.db:
            self.db.execute('UPDATE nuclei SET duplicate = 0')
            self.db.executemany('UPDATE nuclei SET duplicate = 1 WHERE id = ?', [(i,) for i in sorted(ids)])

    def close(self) -> None:
        self.db.close()


def _nucleus_from_row(row) -> Nucleus:
    nucleus_id, tile, rmin, cmin, rmax, cmax, depth, cx, cy, inst_type, type_prob, mask, contour = row
    shape = (rmax - rmin, cmax - cmin)
    bits = np.unpackbits(np.frombuffer(mask, np.uint8), count=shape[0] * shape[1])
    return Nucleus(
        tile=tile,
        bbox=(rmin, cmin, rmax, cmax),
        mask=bits.reshape(shape).astype(bool),
        centroid=np.array([cx, cy]),
        contour=np.frombuffer(contour, np.int32).reshape(-1, 2).astype(np.int64),
        depth=depth,
        type=inst_type,
        type_prob=type_prob,
        id=nucleus_id,
    )
