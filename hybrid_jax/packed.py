"""Packed embeddings: the item and query dicts of every fusion mode as one float32 row each.

An index stores one row per item and a query is one row, whatever the fusion mode, so the search
can be a blocked matrix product over a memory-mapped array. D = the model's ``embed_dim``:

* "none", "late", "metadata_only": items [N, D] = ``embedding``; queries [Q, D] = ``embedding``.
* "mid": items [N, 2D + 1] = [``audio`` expert | ``meta`` expert | ``meta_present`` (0/1)];
  queries [Q, 2D + 2] = [``audio_query`` | ``meta_query`` | ``mixture`` (2 weights)].

Scores always go through ``hybrid_jax.models.fusion.similarity`` (the model's own rule).
"""
from __future__ import annotations

import numpy as np

from hybrid_jax.models import fusion


def item_width(mode: str, dim: int) -> int:
    """Floats per packed item row."""
    return 2 * dim + 1 if mode == "mid" else dim


def query_width(mode: str, dim: int) -> int:
    """Floats per packed query row."""
    return 2 * dim + 2 if mode == "mid" else dim


def pack_items(mode: str, items: dict) -> np.ndarray:
    """``RetrievalModel.embed_items`` output -> float32 [N, item_width]."""
    if mode != "mid":
        return np.asarray(items["embedding"], np.float32)
    present = np.asarray(items["meta_present"], np.float32)[:, None]
    return np.concatenate([np.asarray(items["audio"], np.float32), np.asarray(items["meta"], np.float32), present], 1)


def unpack_items(mode: str, rows: np.ndarray) -> dict:
    """Inverse of ``pack_items`` (views, no copy)."""
    if mode != "mid":
        return {"embedding": rows}
    dim = (rows.shape[1] - 1) // 2
    return {"audio": rows[:, :dim], "meta": rows[:, dim : 2 * dim], "meta_present": rows[:, 2 * dim] > 0.5}


def pack_queries(mode: str, queries: dict) -> np.ndarray:
    """``RetrievalModel.embed_queries`` output -> float32 [Q, query_width]."""
    if mode != "mid":
        return np.asarray(queries["embedding"], np.float32)
    return np.concatenate([np.asarray(queries[k], np.float32) for k in ("audio_query", "meta_query", "mixture")], 1)


def unpack_queries(mode: str, rows: np.ndarray) -> dict:
    """Inverse of ``pack_queries`` (views, no copy)."""
    if mode != "mid":
        return {"embedding": rows}
    dim = (rows.shape[1] - 2) // 2
    return {"audio_query": rows[:, :dim], "meta_query": rows[:, dim : 2 * dim], "mixture": rows[:, 2 * dim :]}


def scores(mode: str, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Text queries [Q, query_width] x items [N, item_width] -> float32 [Q, N] by the fusion rule."""
    return np.array(fusion.similarity(unpack_queries(mode, queries), unpack_items(mode, items)), np.float32)


def example_scores(mode: str, examples: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Query by example: sounds embedded as items without metadata [Q, item_width] x items -> [Q, N].

    The cosine similarity of the examples' audio side and the items' embedding in the retrieval
    space (mid fusion: of the audio experts), again through ``fusion.similarity``.
    """
    if mode == "metadata_only":
        raise ValueError("a metadata_only model does not embed audio: it cannot search by example")
    audio = lambda rows: rows if mode != "mid" else rows[:, : (rows.shape[1] - 1) // 2]  # noqa: E731
    return np.array(fusion.similarity({"embedding": audio(examples)}, {"embedding": audio(items)}), np.float32)


def mean_items(mode: str, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean of packed item rows [K, W] -> [W], each unit-vector part normalised again
    (mid: the two experts separately; ``meta_present`` kept, it is the same in every row). A part
    that is zero in every row (no metadata in metadata_only) stays zero."""
    weights = np.asarray(weights, np.float64)
    mean = (rows.astype(np.float64) * weights[:, None]).sum(0) / weights.sum()
    parts = [slice(0, rows.shape[1])] if mode != "mid" else [slice(0, (rows.shape[1] - 1) // 2),
                                                             slice((rows.shape[1] - 1) // 2, rows.shape[1] - 1)]
    for part in parts:
        norm = np.linalg.norm(mean[part])
        if norm > 0:
            mean[part] /= norm
    return mean.astype(np.float32)
