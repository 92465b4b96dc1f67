"""Evaluation data: every clip once and every caption once, in a fixed order, nothing dropped."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import numpy as np

from hybrid_jax.data.pipeline import (
    METADATA_KINDS,
    Tokenize,
    Tokens,
    fill_audio,
    metadata_texts,
)
from hybrid_jax.data.records import SplitData
from hybrid_jax.schema import SAMPLE_RATE


@dataclasses.dataclass
class EvalData:
    """A split laid out for retrieval evaluation (N clips in split order, Q captions clip by clip).

    Text is returned as whole arrays; audio (too big to hold: Clotho eval is 2 GB at 30 s)
    comes from ``clip_batches``, whose last batch is padded and flagged by ``is_real``.

    Metadata has V variants per clip: V = 1 for keywords/labels/none. For "caption"
    (full-sentence) metadata the item embedding depends on the query, since the metadata must
    never be the query itself: V = max captions per clip, variant v of clip i is its caption
    (v + 1) mod n_i, and query q is scored against the items' variant ``query_variant[q]``
    (= the query's own caption index, so its own clip shows another caption).

    Attributes:
      file_names: [N] as in the dataset's CSV/JSON (for submissions).
      captions: [Q] exactly as given (the scorer matches them byte for byte).
      caption_item: int32 [Q] the clip of each caption.
      caption_index: int32 [Q] position of the caption within its clip.
      query_ids, query_mask, query_types: int32 [Q, L].
      meta_ids, meta_mask, meta_types: int32 [V, N, L] (zero where missing).
      meta_present: bool [V, N].
      query_variant: int32 [Q] which metadata variant each query is scored against.
    """

    data: SplitData
    window: int
    file_names: list[str]
    captions: list[str]
    caption_item: np.ndarray
    caption_index: np.ndarray
    query_ids: np.ndarray
    query_mask: np.ndarray
    query_types: np.ndarray
    meta_ids: np.ndarray
    meta_mask: np.ndarray
    meta_types: np.ndarray
    meta_present: np.ndarray
    query_variant: np.ndarray

    @property
    def num_clips(self) -> int:
        return len(self.file_names)

    @property
    def num_queries(self) -> int:
        return len(self.captions)

    def clip_batches(
        self,
        batch_size: int,
        *,
        variant: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Clips in split order -> batches (this process's rows of each global batch).

        Audio is cropped from the start (deterministic) or zero-padded to ``clip_seconds``.
        Yields: audio int16 [B, S]; audio_valid float32 [B]; meta_ids/meta_mask/meta_types
        int32 [B, L] of ``variant``; meta_present bool [B]; item_id int32 [B] (-1 on padding);
        is_real bool [B]. B = batch_size // process_count; ceil(N / batch_size) batches.
        """
        for rows, real in _process_rows(self.num_clips, batch_size, process_index, process_count):
            items = np.where(real, rows, 0)
            audio, valid = fill_audio(self.data, items, np.zeros(len(items), np.int64), self.window)
            audio[~real], valid[~real] = 0, 0.0
            present = self.meta_present[variant, items] & real
            yield {
                "audio": audio,
                "audio_valid": valid,
                "meta_ids": np.where(present[:, None], self.meta_ids[variant, items], 0),
                "meta_mask": np.where(present[:, None], self.meta_mask[variant, items], 0),
                "meta_types": np.where(present[:, None], self.meta_types[variant, items], 0),
                "meta_present": present,
                "item_id": np.where(real, rows, -1).astype(np.int32),
                "is_real": real,
            }

    def query_batches(
        self, batch_size: int, *, process_index: int | None = None, process_count: int | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """Captions in order -> batches of query_ids/query_mask/query_types int32 [B, L],
        caption_item int32 [B] (-1 on padding), query_variant int32 [B], is_real bool [B]."""
        for rows, real in _process_rows(self.num_queries, batch_size, process_index, process_count):
            q = np.where(real, rows, 0)
            yield {
                "query_ids": np.where(real[:, None], self.query_ids[q], 0),
                "query_mask": np.where(real[:, None], self.query_mask[q], 0),
                "query_types": np.where(real[:, None], self.query_types[q], 0),
                "caption_item": np.where(real, self.caption_item[q], -1).astype(np.int32),
                "query_variant": self.query_variant[q],
                "is_real": real,
            }


def _process_rows(count: int, batch_size: int, process_index: int | None, process_count: int | None):
    """Yields (row indices [B], is_real [B]) of this process's slice of each global batch."""
    process_count = jax.process_count() if process_count is None else process_count
    process_index = jax.process_index() if process_index is None else process_index
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
    local = batch_size // process_count
    for start in range(0, count, batch_size):
        rows = start + process_index * local + np.arange(local)
        yield rows, rows < count


def eval_data(data: SplitData, tokenize: Tokenize, *, clip_seconds: float, metadata: str = "keywords") -> EvalData:
    """Tokenizes every caption and metadata string of ``data`` once -> ``EvalData``."""
    if metadata not in METADATA_KINDS:
        raise ValueError(f"metadata must be one of {METADATA_KINDS}, not {metadata!r}")
    num_captions = np.array([len(c) for c in data.captions], np.int64)
    first = np.concatenate([[0], np.cumsum(num_captions)[:-1]]).astype(np.int64)
    captions = [c for caps in data.captions for c in caps]
    caption_item = np.repeat(np.arange(len(data), dtype=np.int32), num_captions)
    caption_index = (np.arange(len(captions)) - first[caption_item]).astype(np.int32)
    queries = Tokens.of(tokenize, captions)
    if metadata in ("keywords", "labels"):
        texts, present = metadata_texts(data, metadata)
        meta, present = Tokens.of(tokenize, texts), present[None]
        rows = np.arange(len(data))[None]
        variant = np.zeros(len(captions), np.int32)
    elif metadata == "none":
        meta, rows = queries, np.zeros((1, len(data)), np.int64)
        present = np.zeros((1, len(data)), bool)
        variant = np.zeros(len(captions), np.int32)
    else:
        num_variants = int(num_captions.max(initial=1))
        v = np.arange(num_variants)[:, None]
        meta, rows = queries, first[None] + (v + 1) % num_captions[None]
        present = np.broadcast_to(num_captions >= 2, (num_variants, len(data))).copy()
        variant = caption_index
    ids, mask, types = (np.where(present[..., None], a[rows], 0) for a in (meta.ids, meta.mask, meta.types))
    return EvalData(
        data=data,
        window=int(round(clip_seconds * SAMPLE_RATE)),
        file_names=list(data.file_names),
        captions=captions,
        caption_item=caption_item,
        caption_index=caption_index,
        query_ids=queries.ids,
        query_mask=queries.mask,
        query_types=queries.types,
        meta_ids=ids.astype(np.int32),
        meta_mask=mask.astype(np.int32),
        meta_types=types.astype(np.int32),
        meta_present=present,
        query_variant=variant.astype(np.int32),
    )
