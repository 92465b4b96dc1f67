"""Recordings of any length through one batch shape: decoded in threads, embedded as fixed-size
batches of segments, combined per recording.

Why segments: the pooling transformer has positions for ``max_len`` tokens only, and the model
was trained on clips of one length, so a recording is cut into consecutive segments of
``segment_samples`` (the training clip length; the last segment is zero-padded and carries its
valid fraction, as training pads short clips). Each segment is embedded as an item with the
recording's metadata, and the recording's packed row is the mean of its segments' rows weighted by
their seconds of audio, each unit-vector part normalised again (``packed.mean_items``; mid fusion:
the two experts separately). A recording of one segment keeps the model's embedding bit for bit.
Weighting by seconds keeps a 2 s tail from counting as much as a full segment; averaging unit
vectors keeps every part of a long recording in its vector and, for late fusion, keeps the
metadata's share the same as for one clip (it is in every segment's embedding).

Every batch has the same shape (``batch_size`` rows of ``segment_samples``, unused rows zero), so
the jitted function compiles once, and a recording gives the same bits whatever else shares its
batch. Memory is bounded: each worker thread holds one block and one segment of its file, the
queue at most ``2 * batch_size`` segments, and the embedder one batch.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from hybrid_jax import packed
from hybrid_jax.data.audio_io import AudioError
from hybrid_jax.schema import SAMPLE_RATE


@dataclasses.dataclass
class Source:
    """One recording: ``segments()`` yields its int16 segments (called in a worker thread)."""

    key: Any
    segments: Callable[[], Iterator[np.ndarray]]
    metadata: str = ""  # "" = none


@dataclasses.dataclass
class Result:
    """One finished recording: its packed row, or the reason it could not be embedded."""

    key: Any
    vector: np.ndarray | None  # float32 [item_width]; None when ``error``
    seconds: float  # audio embedded (the whole recording)
    error: str | None = None


class SegmentModel(Protocol):
    """What the embedder needs from ``hybrid_jax.inference.Model``."""

    fusion: str
    batch_size: int
    segment_samples: int
    tokenizer: Any

    def embed_item_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass
class _Recording:
    tokens: dict[str, np.ndarray]  # [L] each
    present: bool
    rows: list = dataclasses.field(default_factory=list)  # packed rows of embedded segments
    seconds: list = dataclasses.field(default_factory=list)
    queued: int = 0  # segments waiting in the current batch
    decoded: bool = False  # every segment has been pushed
    failed: bool = False


class Embedder:
    """Collects the segments of many recordings into fixed-size batches and combines the results.

    ``add`` a recording, ``push`` its segments, then ``end`` (or ``fail``) it; each call returns the
    recordings it finished. ``flush`` runs the last, partly filled batch."""

    def __init__(self, model: SegmentModel):
        self.model = model
        size, samples = model.batch_size, model.segment_samples
        length = model.tokenizer.max_length
        self._batch = {
            "audio": np.zeros((size, samples), np.int16), "audio_valid": np.zeros(size, np.float32),
            "meta_ids": np.zeros((size, length), np.int32), "meta_mask": np.zeros((size, length), np.int32),
            "meta_types": np.zeros((size, length), np.int32), "meta_present": np.zeros(size, bool),
        }
        self._keys: list[Any] = []  # recording of each filled batch row
        self._recordings: dict[Any, _Recording] = {}

    def add(self, key, metadata: str) -> None:
        if key in self._recordings:
            raise ValueError(f"recording {key!r} added twice")
        present = bool(metadata.strip())
        tokens = self.model.tokenizer.tokenize([metadata])
        tokens = {k: v[0] * present for k, v in tokens.items()}  # no metadata: all-zero tokens
        self._recordings[key] = _Recording(tokens, present)

    def push(self, key, segment: np.ndarray) -> list[Result]:
        recording = self._recordings[key]
        if recording.failed:
            return []
        row, batch = len(self._keys), self._batch
        batch["audio"][row, : len(segment)] = segment
        batch["audio"][row, len(segment) :] = 0
        batch["audio_valid"][row] = len(segment) / self.model.segment_samples
        batch["meta_ids"][row] = recording.tokens["input_ids"]
        batch["meta_mask"][row] = recording.tokens["attention_mask"]
        batch["meta_types"][row] = recording.tokens["token_type_ids"]
        batch["meta_present"][row] = recording.present
        self._keys.append(key)
        recording.queued += 1
        return self._run() if len(self._keys) == self.model.batch_size else []

    def end(self, key) -> list[Result]:
        recording = self._recordings[key]
        recording.decoded = True
        return [self._finish(key)] if recording.queued == 0 else []

    def fail(self, key, reason: str) -> list[Result]:
        """Drops ``key`` (segments already queued are computed and discarded)."""
        recording = self._recordings[key]
        recording.failed = recording.decoded = True
        if recording.queued == 0:
            del self._recordings[key]
        return [Result(key, None, float(sum(recording.seconds)), reason)]

    def flush(self) -> list[Result]:
        return self._run() if self._keys else []

    def _run(self) -> list[Result]:
        used, batch = len(self._keys), self._batch
        for key in ("audio", "audio_valid", "meta_ids", "meta_mask", "meta_types", "meta_present"):
            batch[key][used:] = 0  # rows of an earlier batch must not leak into a partial one
        rows = packed.pack_items(self.model.fusion, self.model.embed_item_batch(batch))
        seconds = batch["audio_valid"] * (self.model.segment_samples / SAMPLE_RATE)
        finished = []
        for row, key in enumerate(self._keys):
            recording = self._recordings[key]
            recording.queued -= 1
            if recording.failed:
                if recording.queued == 0:
                    del self._recordings[key]
                continue
            recording.rows.append(rows[row].copy())
            recording.seconds.append(float(seconds[row]))
            if recording.decoded and recording.queued == 0:
                finished.append(self._finish(key))
        self._keys = []
        return finished

    def _finish(self, key) -> Result:
        recording = self._recordings.pop(key)
        if len(recording.rows) == 1:
            vector = recording.rows[0]
        else:
            vector = packed.mean_items(self.model.fusion, np.stack(recording.rows), np.asarray(recording.seconds))
        return Result(key, vector, float(sum(recording.seconds)))


def embed(model: SegmentModel, sources: Iterable[Source], *, workers: int = 2) -> Iterator[Result]:
    """Embeds every source; yields its ``Result`` as soon as it is finished (completion order).

    ``workers`` threads decode (and resample) files while the model runs; a file that cannot be
    read gives a ``Result`` with its ``error`` and never stops the others. Closing the generator
    (or an exception, e.g. Ctrl-C) stops the threads."""
    messages: queue.Queue = queue.Queue(maxsize=2 * model.batch_size)
    stop = threading.Event()
    lock = threading.Lock()
    pending = iter(sources)

    def put(message) -> bool:
        while not stop.is_set():
            try:
                messages.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            while not stop.is_set():
                with lock:
                    source = next(pending, None)
                if source is None or not put(("start", source)):
                    break
                try:
                    for segment in source.segments():
                        if not put(("segment", source.key, segment)):
                            return
                    put(("end", source.key))
                except AudioError as error:
                    put(("error", source.key, str(error)))
                except Exception as error:  # a bad file is reported, never fatal
                    put(("error", source.key, f"{type(error).__name__}: {error}"))
        except BaseException as error:  # the caller's source iterator failed: re-raised below
            put(("fatal", error))
        finally:
            put(("done",))

    threads = [threading.Thread(target=work, name=f"decode-{i}", daemon=True) for i in range(max(1, workers))]
    for thread in threads:
        thread.start()
    embedder = Embedder(model)
    try:
        running = len(threads)
        while running:
            message = messages.get()
            kind = message[0]
            if kind == "start":
                embedder.add(message[1].key, message[1].metadata)
            elif kind == "segment":
                yield from embedder.push(message[1], message[2])
            elif kind == "end":
                yield from embedder.end(message[1])
            elif kind == "error":
                yield from embedder.fail(message[1], message[2])
            elif kind == "fatal":
                raise message[1]
            else:
                running -= 1
        yield from embedder.flush()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
