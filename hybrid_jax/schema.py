"""The batch schema: every key the model reads, with its dtype and shape, written once.

B = batch, S = audio samples (``clip_seconds * SAMPLE_RATE``), L = text tokens. The training
loader, the evaluator, the benchmark, the search index and the exported model all build their
batches from these tables, so a key cannot be spelled two ways.
"""
from __future__ import annotations

import jax
import numpy as np

SAMPLE_RATE = 32_000  # Hz: every waveform in the project (EfficientAT's rate)

# key -> (dtype, per-row shape in symbols)
ITEM_FIELDS = {
    "audio": (np.int16, ("S",)),  # PCM, zero-padded after the valid part
    "audio_valid": (np.float32, ()),  # valid (non-padded) fraction of the S samples
    "meta_ids": (np.int32, ("L",)),  # metadata tokens (all zero where meta_present is False)
    "meta_mask": (np.int32, ("L",)),
    "meta_types": (np.int32, ("L",)),
    "meta_present": (np.bool_, ()),  # the item has metadata
}
QUERY_FIELDS = {
    "query_ids": (np.int32, ("L",)),  # caption / query tokens
    "query_mask": (np.int32, ("L",)),
    "query_types": (np.int32, ("L",)),
}
PAIR_FIELDS = {"item_id": (np.int32, ())}  # clip index; equal ids are positives of the loss
TRAIN_FIELDS = {**ITEM_FIELDS, **QUERY_FIELDS, **PAIR_FIELDS}

ITEM_KEYS = tuple(ITEM_FIELDS)
QUERY_KEYS = tuple(QUERY_FIELDS)
TRAIN_KEYS = tuple(TRAIN_FIELDS)


def num_samples(clip_seconds: float) -> int:
    """S for a clip length in seconds."""
    return int(round(clip_seconds * SAMPLE_RATE))


def _shape(rows: int, symbols: tuple[str, ...], samples: int, length: int) -> tuple[int, ...]:
    return (rows, *({"S": samples, "L": length}[s] for s in symbols))


def shapes(fields: dict, rows: int, samples: int, length: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract batch of ``rows`` rows (for ``jax.eval_shape`` / ahead-of-time compilation)."""
    return {k: jax.ShapeDtypeStruct(_shape(rows, sym, samples, length), dt) for k, (dt, sym) in fields.items()}


def zeros(fields: dict, rows: int, samples: int, length: int) -> dict[str, np.ndarray]:
    """A batch of zeros with the schema's shapes and dtypes (e.g. to initialise a model)."""
    return {k: np.zeros(_shape(rows, sym, samples, length), dt) for k, (dt, sym) in fields.items()}


def select(batch: dict, fields: dict) -> dict:
    """The schema's keys of ``batch`` (other keys, e.g. bookkeeping, are dropped); names a
    missing key."""
    missing = [k for k in fields if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing} (has {sorted(batch)})")
    return {k: batch[k] for k in fields}
