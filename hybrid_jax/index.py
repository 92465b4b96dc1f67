"""The search index on disk: packed embeddings in a memory-mapped float32 file, a SQLite manifest.

A directory with

* ``index.json``: the format, the model (directory and fingerprint), the row width, the audio root;
* ``manifest.sqlite``: ``items`` (row, relative path, size, mtime_ns, metadata, seconds), ``freed``
  (rows of removed items, reused by later additions), ``unreadable`` (files skipped, with their
  reason, not retried while unchanged) and ``state`` (``rows``: the high-water mark);
* ``vectors.f32``: row ``r`` of the embeddings at byte ``r * width * 4``.

Never corrupt: an addition first writes its vectors into rows no committed item uses (freed rows
or rows past the high-water mark) and fsyncs them, then commits the manifest rows in one SQLite
transaction; a removal is one transaction. An interrupted run leaves at most vectors that no
manifest row points to, which the next run overwrites. One writer at a time (a lock file).

Top-k: the scores of the memory-mapped rows in blocks of ~32 MB (a BLAS matrix product in float32,
through the model's fusion rule), each block's best ``k`` by ``argpartition``, merged, then sorted
(ties: the lower row first). Reading 1M x 256 float32 rows is the cost: ~1 GB from the page cache.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

FORMAT = 1
HEADER = "index.json"
MANIFEST = "manifest.sqlite"
VECTORS = "vectors.f32"
LOCK = "lock"
BLOCK_BYTES = 32 << 20  # vectors scored per block: bounded memory, BLAS-sized products

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
  row INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
  metadata TEXT NOT NULL, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS freed (row INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS unreadable (
  path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, metadata TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO state VALUES ('rows', 0), ('version', 0);
"""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One indexed recording (``path`` relative to the index's audio root)."""

    row: int
    path: str
    size: int
    mtime_ns: int
    metadata: str
    seconds: float


@dataclasses.dataclass(frozen=True)
class Record:
    """An addition: the recording's file facts, its metadata and its packed vector."""

    path: str
    size: int
    mtime_ns: int
    metadata: str
    seconds: float
    vector: np.ndarray  # float32 [width]


class UnusableIndex(Exception):
    """An index that cannot be used as asked (wrong model, wrong folder, busy, not an index)."""


class Index:
    """Opens (``create=False``) or creates an index directory; ``write`` takes the writer lock."""

    def __init__(self, directory: str | os.PathLike, *, write: bool = False, header: dict | None = None):
        self.directory = pathlib.Path(directory)
        self._lock = None
        if header is not None and not (self.directory / HEADER).is_file():
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(self.directory / HEADER, json.dumps({"format": FORMAT, **header}, indent=2, sort_keys=True) + "\n")
        if not (self.directory / HEADER).is_file():
            raise UnusableIndex(f"{self.directory}: not an index (no {HEADER}); build one with "
                              "`python -m hybrid_jax.search index`")
        self.header = json.loads((self.directory / HEADER).read_text())
        if self.header.get("format") != FORMAT:
            raise UnusableIndex(f"{self.directory}: index format {self.header.get('format')!r}, this version reads {FORMAT}")
        self.width = int(self.header["width"])
        if write:
            self._lock = open(self.directory / LOCK, "w")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise UnusableIndex(f"{self.directory}: another indexing run is writing this index") from None
        self._db = sqlite3.connect(self.directory / MANIFEST, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers (the page) never block the writer
        # SQLite's own lower()/LIKE fold ASCII only: "CAFÉ" must find "café".
        self._db.create_function("casefold", 1, str.casefold, deterministic=True)
        self._db.executescript(_SCHEMA)
        (self.directory / VECTORS).touch()
        self._mapped: tuple[int, np.ndarray | None] = (-1, None)

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- reading -------------------------------------------------------------------------------

    def _state(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()[0])

    @property
    def version(self) -> int:
        """Increases with every committed change (lets a reader notice an update)."""
        return self._state("version")

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def entries(self) -> dict[str, Entry]:
        """Every item, by path."""
        return {row[1]: Entry(*row) for row in self._db.execute("SELECT * FROM items")}

    def unreadable(self) -> dict[str, tuple[int, int, str, str]]:
        """Files skipped by earlier runs: path -> (size, mtime_ns, metadata, reason)."""
        return {r[0]: tuple(r[1:]) for r in self._db.execute("SELECT * FROM unreadable")}

    def describe(self, rows: Iterable[int]) -> list[Entry | None]:
        """The entries of ``rows`` in that order (None for a row no item uses)."""
        rows = [int(r) for r in rows]
        found = {}
        for start in range(0, len(rows), 500):  # SQLite's bound-parameter limit
            chunk = rows[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update((r[0], Entry(*r)) for r in self._db.execute(f"SELECT * FROM items WHERE row IN ({marks})", chunk))
        return [found.get(r) for r in rows]

    def vectors(self) -> np.ndarray:
        """The memory-mapped rows [rows, width] (rows of removed items included; see ``search``)."""
        rows = self._state("rows")
        if self._mapped[0] != rows:
            mapped = None if rows == 0 else np.memmap(self.directory / VECTORS, np.float32, "r", shape=(rows, self.width))
            self._mapped = (rows, mapped)
        return self._mapped[1] if self._mapped[1] is not None else np.zeros((0, self.width), np.float32)

    def matching(self, words: Sequence[str]) -> np.ndarray:
        """Rows whose metadata or path contains every word (Unicode case-insensitive), sorted."""
        words = [w.casefold() for w in words if w]
        where = " AND ".join(["instr(casefold(metadata || ' ' || path), ?) > 0"] * len(words)) or "1"
        return np.array(sorted(r[0] for r in self._db.execute(f"SELECT row FROM items WHERE {where}", words)), np.int64)

    def search(self, queries: np.ndarray, k: int, score: Callable[[np.ndarray, np.ndarray], np.ndarray],
               rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` items per query -> (scores float32 [Q, k'], rows int64 [Q, k']), best first.

        ``score(queries, vectors [n, width]) -> [Q, n]`` is the model's rule (``hybrid_jax.packed``);
        ``rows`` restricts the search (e.g. ``matching``); removed items never appear."""
        vectors = self.vectors()
        freed = np.array([r[0] for r in self._db.execute("SELECT row FROM freed")], np.int64)
        queries = np.asarray(queries, np.float32)
        best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
        block = max(1, BLOCK_BYTES // (4 * self.width))
        if rows is not None:
            rows = np.setdiff1d(np.asarray(rows, np.int64), freed)
            chunks = ((rows[i : i + block], None) for i in range(0, len(rows), block))
        else:
            chunks = ((None, slice(i, min(i + block, len(vectors)))) for i in range(0, len(vectors), block))
        for chosen, span in chunks:
            part = np.asarray(vectors[chosen] if chosen is not None else vectors[span])
            ids = chosen if chosen is not None else np.arange(span.start, span.stop)
            scores = score(queries, part)
            if chosen is None and len(freed):
                scores[:, np.isin(ids, freed)] = -np.inf
            for q, (kept_scores, kept_ids) in enumerate(best):
                block_scores, block_ids = _best(scores[q], ids, k)
                best[q] = _best(np.concatenate([kept_scores, block_scores]), np.concatenate([kept_ids, block_ids]), k)
        # Removed rows score -inf for every query: they fill the list only when fewer than k remain.
        count = min((int(np.isfinite(s).sum()) for s, _ in best), default=0)
        return (np.stack([s[:count] for s, _ in best]) if best else np.zeros((0, 0), np.float32),
                np.stack([r[:count] for _, r in best]) if best else np.zeros((0, 0), np.int64))

    # --- writing (with ``write=True``) ---------------------------------------------------------

    def add(self, records: Sequence[Record]) -> None:
        """Adds (or replaces, by path) ``records``: vectors written and fsynced, then one commit."""
        if self._lock is None:
            raise UnusableIndex("open the index with write=True to change it")
        if not records:
            return
        free = [r[0] for r in self._db.execute("SELECT row FROM freed ORDER BY row LIMIT ?", (len(records),))]
        high = self._state("rows")
        slots = free + list(range(high, high + len(records) - len(free)))
        vectors = np.stack([np.asarray(r.vector, np.float32) for r in records])
        if vectors.shape[1] != self.width:
            raise UnusableIndex(f"vectors of width {vectors.shape[1]}, the index holds {self.width}")
        with open(self.directory / VECTORS, "r+b") as f:
            for slot, vector in zip(free, vectors):  # reused rows one by one
                f.seek(slot * self.width * 4)
                f.write(vector.tobytes())
            f.seek(high * self.width * 4)  # new rows in one write
            f.write(vectors[len(free) :].tobytes())
            f.flush()
            os.fsync(f.fileno())
        with self._transaction():
            for slot, record in zip(slots, records):
                old = self._db.execute("SELECT row FROM items WHERE path = ?", (record.path,)).fetchone()
                if old is not None:
                    self._db.execute("DELETE FROM items WHERE row = ?", old)
                    self._db.execute("INSERT INTO freed VALUES (?)", old)
                self._db.execute("DELETE FROM freed WHERE row = ?", (slot,))
                self._db.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                                 (slot, record.path, record.size, record.mtime_ns, record.metadata, record.seconds))
                self._db.execute("DELETE FROM unreadable WHERE path = ?", (record.path,))
            self._db.execute("UPDATE state SET value = ? WHERE key = 'rows'", (max(high, max(slots) + 1),))

    def mark_unreadable(self, path: str, size: int, mtime_ns: int, metadata: str, reason: str) -> None:
        """Records a file that could not be embedded (and removes its item, now stale, if any)."""
        if self._lock is None:
            raise UnusableIndex("open the index with write=True to change it")
        with self._transaction():
            self._remove(path)
            self._db.execute("INSERT OR REPLACE INTO unreadable VALUES (?, ?, ?, ?, ?)", (path, size, mtime_ns, metadata, reason))

    def remove(self, paths: Iterable[str]) -> int:
        """Removes the items (and unreadable records) of ``paths`` (one commit) -> items removed."""
        if self._lock is None:
            raise UnusableIndex("open the index with write=True to change it")
        with self._transaction():
            return sum(self._remove(path) for path in paths)

    def _remove(self, path: str) -> bool:
        self._db.execute("DELETE FROM unreadable WHERE path = ?", (path,))
        old = self._db.execute("SELECT row FROM items WHERE path = ?", (path,)).fetchone()
        if old is not None:
            self._db.execute("DELETE FROM items WHERE row = ?", old)
            self._db.execute("INSERT INTO freed VALUES (?)", old)
        return old is not None

    @contextlib.contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("UPDATE state SET value = value + 1 WHERE key = 'version'")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of one query's scores, sorted: higher score first, on ties the lower row.

    ``np.partition`` finds the k-th score in linear time; every score at least that high is kept
    (ties at the boundary included, so the lowest rows among them can win) and only those are sorted.
    """
    if len(scores) > k:
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= threshold
        scores, ids = scores[keep], ids[keep]
    order = np.lexsort((ids, -scores))[:k]
    return scores[order], ids[order]


def atomic_write(path: pathlib.Path, text: str) -> None:
    """Writes ``text`` to a temporary file, fsyncs it, and renames it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def update_header(directory: str | os.PathLike, **values: Any) -> None:
    """Rewrites fields of ``index.json`` (write-then-rename)."""
    path = pathlib.Path(directory) / HEADER
    header = json.loads(path.read_text())
    header.update(values)
    atomic_write(path, json.dumps(header, indent=2, sort_keys=True) + "\n")
