"""Text-to-audio retrieval metrics (mAP@10, R@k) as pure functions, plus DCASE-style rankings.

Ties: items are ranked by descending similarity with a *stable* order, so among items with equal
similarity the one with the lower index ranks first. A query's rank is therefore
``1 + #{j: s[j] > s[t]} + #{j < t: s[j] == s[t]}`` for its target ``t``. This is what a stable
``argsort(-similarity)`` gives, and the DCASE submission CSV is written with the same order, so the
metrics here equal what the official scorer computes from that CSV.
"""
from __future__ import annotations

import numpy as np


def target_ranks(similarity: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1-based rank of each query's target item.

    Args:
      similarity: float [Q, N], higher is better.
      target: int [Q], index in [0, N) of each query's single correct item.
    Returns:
      int64 [Q] ranks in [1, N].
    """
    similarity = np.asarray(similarity)
    target = np.asarray(target, dtype=np.int64)
    if similarity.ndim != 2 or target.shape != (similarity.shape[0],):
        raise ValueError(f"expected similarity [Q, N] and target [Q], got {similarity.shape} and {target.shape}")
    if similarity.shape[0] and (target.min() < 0 or target.max() >= similarity.shape[1]):
        raise ValueError(f"target indices must lie in [0, {similarity.shape[1]})")
    if not np.all(np.isfinite(similarity)):
        raise ValueError("similarity contains NaN or infinite values")
    target_score = np.take_along_axis(similarity, target[:, None], axis=1)  # [Q, 1]
    higher = (similarity > target_score).sum(axis=1)
    columns = np.arange(similarity.shape[1])[None, :]
    tied_before = ((similarity == target_score) & (columns < target[:, None])).sum(axis=1)
    return 1 + higher + tied_before


def retrieval_metrics(similarity: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Text-to-audio retrieval metrics with one relevant item per query.

    Args:
      similarity: float [Q, N] query-item scores.
      target: int [Q] index of each query's correct item.
    Returns:
      {"mAP@10", "R@1", "R@5", "R@10"} as fractions in [0, 1]. mAP@10 is the mean over queries of
      1/rank when rank <= 10, else 0 (with one relevant item, AP@10 is exactly that).
    """
    ranks = target_ranks(similarity, target)
    return {
        "mAP@10": float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0))),
        "R@1": float(np.mean(ranks <= 1)),
        "R@5": float(np.mean(ranks <= 5)),
        "R@10": float(np.mean(ranks <= 10)),
    }


def top_k(similarity: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices [Q, k] of the best k items per query, best first, ties broken as documented above."""
    order = np.argsort(-np.asarray(similarity), axis=1, kind="stable")
    return order[:, :k]


def format_line(result: dict[str, float]) -> str:
    """``retrieval_metrics`` as one line in percent: "mAP@10 45.21  R@1 30.62  ..."."""
    return "  ".join(f"{k} {100 * result[k]:.2f}" for k in ("mAP@10", "R@1", "R@5", "R@10"))
