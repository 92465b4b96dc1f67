"""Grain training loader over caption-clip pairs (seeded, resumable, per-process shards) and to_global."""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from hybrid_jax.data.records import SplitData
from hybrid_jax.schema import SAMPLE_RATE

Tokenize = Callable[[list[str]], dict[str, np.ndarray]]
METADATA_KINDS = ("keywords", "labels", "caption", "none")


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Tokenized texts: ``ids``, ``mask``, ``types`` int32 [N, L]."""

    ids: np.ndarray
    mask: np.ndarray
    types: np.ndarray

    @classmethod
    def of(cls, tokenize: Tokenize, texts: Sequence[str]) -> Tokens:
        """All texts in one vectorised call (the loaders then only index)."""
        out = tokenize(list(texts))
        ids = np.asarray(out["input_ids"], np.int32)
        types = out.get("token_type_ids")
        return cls(
            ids,
            np.asarray(out["attention_mask"], np.int32),
            np.zeros_like(ids) if types is None else np.asarray(types, np.int32),
        )

    def take(self, index: np.ndarray, present: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Rows ``index`` -> (ids, mask, types) [B, L]; rows with ``present`` False are all zero."""
        rows = tuple(a[index] for a in (self.ids, self.mask, self.types))
        if present is not None:
            for a in rows:
                a[~present] = 0
        return rows


def metadata_texts(data: SplitData, metadata: str) -> tuple[list[str], np.ndarray]:
    """Per clip: the metadata string (keywords/labels/tags joined by spaces) and bool [N] present.

    "labels" asks for AudioSet labels and refuses a split whose keywords are something else.
    """
    if metadata not in ("keywords", "labels"):
        raise ValueError(f"metadata_texts is for keywords/labels, not {metadata!r}")
    if metadata == "labels" and data.keyword_kind != "labels":
        raise ValueError(f"metadata='labels' but this split's keywords are {data.keyword_kind!r}")
    texts = [" ".join(k) for k in data.keywords]
    return texts, np.array([bool(t.strip()) for t in texts], bool)


def fill_audio(
    data: SplitData, items: np.ndarray, offsets: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Copies ``window`` samples of each clip from ``offsets`` (zero-padded) -> int16 [B, S], valid [B].

    The valid fraction is of the window, for the audio tower's padding mask.
    """
    # np.empty + zeroing only the padded tail: np.zeros would fault in fresh pages every batch.
    audio = np.empty((len(items), window), np.int16)
    valid = np.empty(len(items), np.float32)
    for row, (item, offset) in enumerate(zip(items, offsets)):
        segment = data.audio(int(item))[offset : offset + window]
        audio[row, : len(segment)] = segment
        audio[row, len(segment) :] = 0
        valid[row] = len(segment) / window
    return audio, valid


class TrainLoader:
    """Training batches of caption-clip pairs (every caption of every clip is one example).

    Per epoch a seeded permutation of all pairs is cut into global batches of
    ``global_batch_size`` (the remainder is dropped); process p of n gets rows
    [p*B, (p+1)*B) of each global batch, B = global_batch_size // n, so the global batch does
    not depend on the process count. Randomness (crop offset, metadata choice, dropout) is a
    function of (seed, epoch, step), which makes batches reproducible and resumable.

    Batch (numpy, B = per-process batch, S = clip_seconds * 32000, L = token length):
      audio int16 [B, S]; audio_valid float32 [B]; query_ids/query_mask/query_types int32
      [B, L]; meta_ids/meta_mask/meta_types int32 [B, L] (zero where missing); meta_present
      bool [B]; item_id int32 [B] (clip index in the split; equal ids are positives).

    ``iter(loader)`` is a ``grain.DatasetIterator``: ``get_state()`` is a JSON-able dict and
    ``set_state(state)`` resumes with exactly the batches an uninterrupted run would see.
    """

    def __init__(
        self,
        data: SplitData,
        tokenize: Tokenize,
        *,
        global_batch_size: int,
        clip_seconds: float,
        metadata: str = "keywords",
        metadata_dropout: float = 0.0,
        seed: int = 0,
        num_epochs: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        worker_count: int = 0,
        prefetch_batches: int = 2,
        read_threads: int = 1,
    ):
        if metadata not in METADATA_KINDS:
            raise ValueError(f"metadata must be one of {METADATA_KINDS}, not {metadata!r}")
        process_count = jax.process_count() if process_count is None else process_count
        process_index = jax.process_index() if process_index is None else process_index
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by {process_count} processes")
        self.data, self.metadata, self.metadata_dropout, self.seed = data, metadata, metadata_dropout, seed
        self.global_batch_size = global_batch_size
        self.batch_size = global_batch_size // process_count  # per process
        self.process_index = process_index
        self.window = int(round(clip_seconds * SAMPLE_RATE))
        self.num_captions = np.array([len(c) for c in data.captions], np.int64)
        if (self.num_captions == 0).any():
            raise ValueError("every clip needs at least one caption")
        self.first_caption = np.concatenate([[0], np.cumsum(self.num_captions)[:-1]])
        self.pair_item = np.repeat(np.arange(len(data), dtype=np.int32), self.num_captions)
        self.num_pairs = len(self.pair_item)
        self.steps_per_epoch = self.num_pairs // global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.num_pairs} pairs are fewer than one global batch of {global_batch_size}")
        self.queries = Tokens.of(tokenize, [c for caps in data.captions for c in caps])
        if metadata in ("keywords", "labels"):
            texts, self.meta_present = metadata_texts(data, metadata)
            self.meta = Tokens.of(tokenize, texts)
        self._permutations: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

        dataset = grain.MapDataset.range(self.steps_per_epoch).repeat(num_epochs, reseed_each_epoch=False)
        dataset = dataset.map_with_index(lambda step, _: self.batch(step))
        options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
        self.dataset = dataset.to_iter_dataset(options)
        if worker_count > 0:
            self.dataset = self.dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))

    def __iter__(self) -> grain.DatasetIterator:
        return iter(self.dataset)

    def __getstate__(self) -> dict:
        # Grain pickles the batch function into its worker processes (worker_count > 0).
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "dataset")}
        return state | {"_permutations": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._permutations:
                self._permutations = {  # keep the neighbour epoch for prefetch across the boundary
                    e: p for e, p in self._permutations.items() if e >= epoch - 1
                }
                self._permutations[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_pairs)
            return self._permutations[epoch]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The process-local batch of global step ``step`` (steps run on across epochs)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        b, lo = self.batch_size, self.process_index * self.batch_size
        start = k * self.global_batch_size + lo
        pairs = self._permutation(epoch)[start : start + b]
        # One draw per global row, then this process's slice: same values for any process count.
        u = np.random.default_rng([self.seed, epoch, k, 1]).random((3, self.global_batch_size))[:, lo : lo + b]
        items = self.pair_item[pairs]
        spare = np.maximum(self.data.num_samples[items] - self.window, 0)
        offsets = np.floor(u[0] * (spare + 1)).astype(np.int64)
        audio, valid = fill_audio(self.data, items, offsets, self.window)
        query = self.queries.take(pairs)
        present, tokens, rows = self._metadata(items, pairs, u[1])
        present &= u[2] >= self.metadata_dropout
        meta = tokens.take(rows, present)
        return {
            "audio": audio,
            "audio_valid": valid,
            "query_ids": query[0],
            "query_mask": query[1],
            "query_types": query[2],
            "meta_ids": meta[0],
            "meta_mask": meta[1],
            "meta_types": meta[2],
            "meta_present": present,
            "item_id": items.astype(np.int32),
        }

    def _metadata(self, items: np.ndarray, pairs: np.ndarray, u: np.ndarray):
        """-> (present bool [B] before dropout, Tokens, their rows [B])."""
        if self.metadata in ("keywords", "labels"):
            return self.meta_present[items], self.meta, items
        if self.metadata == "none":
            return np.zeros(len(items), bool), self.queries, pairs
        # "caption": another caption of the same clip, uniformly, never the query itself.
        n, first = self.num_captions[items], self.first_caption[items]
        own = pairs - first
        other = np.floor(u * np.maximum(n - 1, 1)).astype(np.int64)
        other += other >= own
        return n >= 2, self.queries, np.where(n >= 2, first + np.minimum(other, n - 1), pairs)


def to_global(
    batch: Mapping[str, np.ndarray],
    mesh: jax.sharding.Mesh,
    partition_spec: PartitionSpec | Mapping[str, PartitionSpec] = PartitionSpec("data"),
) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global ``jax.Array``s sharded by ``partition_spec``.

    Each process passes its own rows; the global leading dimension is their concatenation in
    process order (what ``TrainLoader`` produces). ``partition_spec`` may be one spec for all
    keys or a dict per key. int16 audio stays int16 until it is on the device.
    """
    out = {}
    for key, value in batch.items():
        spec = partition_spec[key] if isinstance(partition_spec, Mapping) else partition_spec
        out[key] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), np.asarray(value))
    return out
