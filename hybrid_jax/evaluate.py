"""Retrieval evaluation: embed every item and every query once, score, report, write DCASE CSV.

Run: python -m hybrid_jax.evaluate --config configs/clotho_late.py --workdir DIR
         [--checkpoint best|latest|PATH] [--split test] [--missing-metadata 0.3]
"""
from __future__ import annotations

import csv
import json
import pathlib
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from hybrid_jax import fusion, metrics, sharding
from hybrid_jax.data import pipeline
from hybrid_jax.data.eval_data import EvalData


MODEL_KEYS_ITEMS = ("audio", "audio_valid", "meta_ids", "meta_mask", "meta_types", "meta_present")
MODEL_KEYS_QUERIES = ("query_ids", "query_mask", "query_types")


def _embed_batches(embed: Callable, variables, batches, keys, count: int, mesh: Mesh, transform=None) -> dict:
    """Embeds process-local batches as global arrays and returns the first ``count`` rows.

    Global batch rows are the processes' local rows in process order (``EvalData`` lays them out
    so), and the outputs are replicated, so every process gets all rows in split order."""
    spec = sharding.batch_sharding(mesh).spec
    outputs = []
    for batch in batches:
        if transform is not None:
            batch = transform(batch)
        global_batch = pipeline.to_global({k: batch[k] for k in keys}, mesh, spec)
        outputs.append(jax.device_get(embed(variables, global_batch)))
    merged = jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
    return jax.tree.map(lambda x: np.asarray(x)[:count], merged)


def evaluate_split(
    embed_items: Callable,
    embed_queries: Callable,
    variables,
    data: EvalData,
    *,
    batch_size: int,
    mesh: Mesh,
    missing_metadata: float = 0.0,
    seed: int = 0,
    return_similarity: bool = False,
):
    """Embeds every item (audio + metadata) once per metadata variant and every query once, and
    returns ``retrieval_metrics`` (plus the [Q, N] similarity when asked).

    ``missing_metadata``: the metadata of this fraction of items (chosen by ``seed``) is removed.
    ``batch_size`` must be a multiple of the device count."""
    dropped = np.zeros(data.num_clips, bool)
    if missing_metadata > 0:
        chosen = np.random.default_rng(seed).permutation(data.num_clips)[: int(round(missing_metadata * data.num_clips))]
        dropped[chosen] = True

    def drop(batch):
        keep = batch["meta_present"] & ~dropped[np.maximum(batch["item_id"], 0)]
        return {**batch, "meta_present": keep}

    queries = _embed_batches(embed_queries, variables, data.query_batches(batch_size), MODEL_KEYS_QUERIES,
                             data.num_queries, mesh)
    num_variants = data.meta_present.shape[0]
    similarity = np.empty((data.num_queries, data.num_clips), np.float32)
    for variant in range(num_variants):
        users = data.query_variant == variant
        if not users.any():
            continue
        items = _embed_batches(embed_items, variables, data.clip_batches(batch_size, variant=variant),
                               MODEL_KEYS_ITEMS, data.num_clips, mesh, transform=drop)
        chosen = jax.tree.map(lambda x: x[users], queries)
        similarity[users] = score(chosen, items)
    result = metrics.retrieval_metrics(similarity, data.caption_item)
    return (result, similarity) if return_similarity else result


def score(queries: dict, items: dict) -> np.ndarray:
    """Similarity [Q, N] on the host (float32); the fusion rule decides how experts combine."""
    return np.asarray(jax.jit(fusion.similarity, backend="cpu")(queries, items))


def write_submission(path: pathlib.Path, captions: list[str], file_names: list[str], similarity: np.ndarray) -> None:
    """DCASE retrieval submission: ``caption,file_name_1..file_name_10`` best first; captions and
    names byte-exact; the order is the metrics' (stable descending)."""
    best = metrics.top_k(similarity, k=min(10, similarity.shape[1]))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["caption"] + [f"file_name_{i}" for i in range(1, 11)])
        for caption, row in zip(captions, best):
            writer.writerow([caption] + [file_names[j] for j in row])


def write_results(workdir: pathlib.Path, split: str, results: dict) -> pathlib.Path:
    path = pathlib.Path(workdir) / f"results_{split}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path
