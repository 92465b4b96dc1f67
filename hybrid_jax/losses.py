"""Contrastive losses on similarity matrices: symmetric NT-Xent with duplicate positives."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def positives_from_ids(query_item_id: jax.Array, item_id: jax.Array) -> jax.Array:
    """bool [Q, N]: True where query q and item n come from the same clip (same item id)."""
    return query_item_id[:, None] == item_id[None, :]


def nt_xent(similarity: jax.Array, positives: jax.Array, temperature: jax.Array | float) -> jax.Array:
    """Symmetric NT-Xent over a batch, every same-clip pair a positive.

    Logits are ``similarity / temperature``. Each direction (query->item over rows, item->query over
    columns) takes a log-softmax; the loss is minus the mean log-probability over all positive
    pairs, averaged over the two directions. With duplicates (two captions of one clip in the
    batch), every such pair counts as a positive and the other positives stay in the denominator,
    as in the authors' code.

    Args:
      similarity: float [B, B] cosine similarities, queries on rows, items on columns.
      positives: bool [B, B] positive pairs (the diagonal must be True).
      temperature: scalar tau > 0.
    Returns:
      scalar float32 loss.
    """
    logits = similarity.astype(jnp.float32) / temperature
    weight = positives.astype(jnp.float32)
    count = jnp.sum(weight)
    log_p_items = jax.nn.log_softmax(logits, axis=1)  # query -> item
    log_p_queries = jax.nn.log_softmax(logits, axis=0)  # item -> query
    loss_q2i = -jnp.sum(log_p_items * weight) / count
    loss_i2q = -jnp.sum(log_p_queries * weight) / count
    return 0.5 * (loss_q2i + loss_i2q)
