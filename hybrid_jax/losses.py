"""Contrastive losses: symmetric NT-Xent with duplicate positives, SigLIP, and ring versions."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from hybrid_jax.models import fusion
from hybrid_jax.sharding import BATCH_AXES


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


LOSSES = ("nt_xent", "siglip")
LOSS_IMPLS = ("plain", "ring")


def siglip(similarity: jax.Array, positives: jax.Array, scale, bias) -> jax.Array:
    """Sigmoid loss of SigLIP (Zhai et al. 2023): every query-item pair is a binary problem.

    ``logits = scale * similarity + bias``; the label is +1 for every same-clip pair (duplicates
    included) and -1 otherwise; the loss is ``-sum(log_sigmoid(label * logits)) / Q``, normalised
    by the number of queries as in the paper.

    Args:
      similarity: float [Q, N] cosine similarities.
      positives: bool [Q, N].
      scale, bias: scalars (the paper learns ``scale = exp(t')``, t' init log 10, and b init -10).
    Returns:
      scalar float32 loss.
    """
    logits = similarity.astype(jnp.float32) * scale + bias
    labels = 2.0 * positives.astype(jnp.float32) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / similarity.shape[0]


# --- Ring implementations: the global [B, B] logits never exist on one device. -----------------
#
# Each device holds b = B / n queries and the b items of the same rows. Item blocks travel round
# the ring (``ppermute`` to the next device, n - 1 times), so every device meets every block once;
# the per-item (column) statistics travel with their block and a last hop brings them home. Both
# losses have a custom VJP whose backward pass is a second ring pass recomputing the [b, b] blocks,
# so neither direction keeps more than one block of logits or the other devices' embeddings.


def _ring(visit, local, travel, static, axes):
    """Runs ``visit`` on each device's own block and then on every block arriving round the ring.

    ``visit(local, static, acc) -> (local, acc)``: ``local`` stays on the device, ``static`` (the
    travelling item block, read-only) and ``acc`` (its accumulators) hop to the next device between
    visits. Returns (local, acc) with ``acc`` back on the device its block started from.
    """
    n = jax.lax.axis_size(axes)
    perm = [(i, (i + 1) % n) for i in range(n)]
    local, travel = visit(local, static, travel)

    def hop(carry, _):
        local, static, acc = carry
        static, acc = jax.lax.ppermute((static, acc), axes, perm)
        local, acc = visit(local, static, acc)
        return (local, static, acc), None

    (local, _, travel), _ = jax.lax.scan(hop, (local, static, travel), length=n - 1)
    return local, jax.lax.ppermute(travel, axes, perm)  # the n-th hop: accumulators come home


def _block(q, qid, static, scale):
    """Logits [b, b] of the local queries against a visiting item block, and the positive mask."""
    x, iid = static
    logits = (q @ x.T) * scale
    return logits, (qid[:, None] == iid[None, :]).astype(jnp.float32)


def _nt_xent_fwd_local(q, x, qid, iid, temperature, axes):
    scale = 1.0 / temperature
    b = q.shape[0]

    def visit(local, static, acc):
        row_lse, row_n, pos_logits = local
        col_lse, col_n = acc
        logits, pos = _block(q, qid, static, scale)
        local = (jnp.logaddexp(row_lse, jax.nn.logsumexp(logits, axis=1)), row_n + pos.sum(1),
                 pos_logits + jnp.sum(logits * pos))
        return local, (jnp.logaddexp(col_lse, jax.nn.logsumexp(logits, axis=0)), col_n + pos.sum(0))

    empty = (jnp.full((b,), -jnp.inf, jnp.float32), jnp.zeros((b,), jnp.float32))
    (row_lse, row_n, pos_logits), (col_lse, col_n) = _ring(
        visit, (*empty, jnp.zeros(())), empty, (x, iid), axes)
    # Sum over positives of log p = sum of positive logits - sum over rows of (#positives * LSE),
    # and the same over columns.
    total = 2.0 * pos_logits - jnp.sum(row_n * row_lse) - jnp.sum(col_n * col_lse)
    total = jax.lax.psum(total, axes)
    count = jax.lax.psum(jnp.sum(row_n), axes)
    return -0.5 * total / count, (row_lse, row_n, col_lse, col_n, count)


def _nt_xent_bwd_local(q, x, qid, iid, temperature, row_lse, row_n, col_lse, col_n, count, g, axes):
    scale = 1.0 / temperature
    coef = -0.5 * g / count

    def visit(local, static, acc):
        dq, dscale = local
        x_blk, iid_blk, col_lse_blk, col_n_blk = static
        logits, pos = _block(q, qid, (x_blk, iid_blk), scale)
        # d loss / d logits = coef * (2 pos - n_row softmax_row - n_col softmax_col)
        dlogits = coef * (2.0 * pos - row_n[:, None] * jnp.exp(logits - row_lse[:, None])
                          - col_n_blk[None, :] * jnp.exp(logits - col_lse_blk[None, :]))
        local = (dq + scale * dlogits @ x_blk, dscale + jnp.sum(dlogits * logits) / scale)
        return local, acc + scale * dlogits.T @ q

    (dq, dscale), dx = _ring(visit, (jnp.zeros_like(q), jnp.zeros(())), jnp.zeros_like(x),
                             (x, iid, col_lse, col_n), axes)
    # logits = s / tau: d/dtau = -(d/dscale) / tau^2.
    dtemperature = -jax.lax.psum(dscale, axes) * scale * scale
    return dq, dx, dtemperature


def _siglip_fwd_local(q, x, qid, iid, scale, bias, axes):
    def visit(local, static, acc):
        logits, pos = _block(q, qid, static, scale)
        return local + jnp.sum(jax.nn.log_sigmoid((2.0 * pos - 1.0) * (logits + bias))), acc

    total, _ = _ring(visit, jnp.zeros(()), (), (x, iid), axes)  # nothing travels back
    queries = jax.lax.psum(q.shape[0], axes)
    return -jax.lax.psum(total, axes) / queries


def _siglip_bwd_local(q, x, qid, iid, scale, bias, g, axes):
    coef = -g / jax.lax.psum(q.shape[0], axes)

    def visit(local, static, acc):
        dq, dscale, dbias = local
        sim, pos = _block(q, qid, static, 1.0)
        labels = 2.0 * pos - 1.0
        # d/dz log_sigmoid(z) = sigmoid(-z), with z = label * (scale * sim + bias).
        dlogits = coef * labels * jax.nn.sigmoid(-labels * (scale * sim + bias))
        local = (dq + scale * dlogits @ static[0], dscale + jnp.sum(dlogits * sim),
                 dbias + jnp.sum(dlogits))
        return local, acc + scale * dlogits.T @ q

    local = (jnp.zeros_like(q), jnp.zeros(()), jnp.zeros(()))
    (dq, dscale, dbias), dx = _ring(visit, local, jnp.zeros_like(x), (x, iid), axes)
    return dq, dx, jax.lax.psum(dscale, axes), jax.lax.psum(dbias, axes)


def _batch_axes(mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def ring_nt_xent(queries, items, query_ids, item_ids, temperature, mesh) -> jax.Array:
    """``nt_xent(queries @ items.T, positives_from_ids(query_ids, item_ids), temperature)`` computed
    under ``shard_map`` over the mesh's batch axes ("data", "fsdp") without the global logits.

    Each device computes its rows (its local queries) against item blocks passed round the ring,
    accumulating the row log-sum-exp online; the column (item -> query) log-sum-exp travels with
    its block. Duplicate positives are handled exactly as in ``nt_xent``.

    Args:
      queries, items: float [B, D] (B divisible by the number of batch devices), paired by row.
      query_ids, item_ids: int [B] clip ids; equal ids are positives.
      temperature: scalar tau (may carry a gradient).
      mesh: the device mesh.
    Returns:
      scalar float32 loss (replicated).
    """
    axes = _batch_axes(mesh)
    rows, rep = P(axes), P()
    fwd_map = jax.shard_map(functools.partial(_nt_xent_fwd_local, axes=axes), mesh=mesh,
                            in_specs=(rows, rows, rows, rows, rep),
                            out_specs=(rep, (rows, rows, rows, rows, rep)))
    bwd_map = jax.shard_map(functools.partial(_nt_xent_bwd_local, axes=axes), mesh=mesh,
                            in_specs=(rows,) * 4 + (rep,) + (rows,) * 4 + (rep, rep),
                            out_specs=(rows, rows, rep))

    @jax.custom_vjp
    def loss(q, x, qid, iid, tau):
        return fwd_map(q, x, qid, iid, tau)[0]

    def fwd(q, x, qid, iid, tau):
        value, stats = fwd_map(q, x, qid, iid, tau)
        return value, (q, x, qid, iid, tau, stats)

    def bwd(res, g):
        q, x, qid, iid, tau, stats = res
        dq, dx, dtau = bwd_map(q, x, qid, iid, tau, *stats, g)
        return dq, dx, None, None, dtau

    loss.defvjp(fwd, bwd)
    return loss(queries.astype(jnp.float32), items.astype(jnp.float32), query_ids, item_ids,
                jnp.asarray(temperature, jnp.float32))


def ring_siglip(queries, items, query_ids, item_ids, scale, bias, mesh) -> jax.Array:
    """``siglip(queries @ items.T, positives_from_ids(...), scale, bias)`` on the ring, as
    ``ring_nt_xent`` (same arguments, scale and bias instead of the temperature)."""
    axes = _batch_axes(mesh)
    rows, rep = P(axes), P()
    fwd_map = jax.shard_map(functools.partial(_siglip_fwd_local, axes=axes), mesh=mesh,
                            in_specs=(rows,) * 4 + (rep, rep), out_specs=rep)
    bwd_map = jax.shard_map(functools.partial(_siglip_bwd_local, axes=axes), mesh=mesh,
                            in_specs=(rows,) * 4 + (rep, rep, rep),
                            out_specs=(rows, rows, rep, rep))

    @jax.custom_vjp
    def loss(q, x, qid, iid, t, b):
        return fwd_map(q, x, qid, iid, t, b)

    def fwd(q, x, qid, iid, t, b):
        return fwd_map(q, x, qid, iid, t, b), (q, x, qid, iid, t, b)

    def bwd(res, g):
        dq, dx, dt, db = bwd_map(*res, g)
        return dq, dx, None, None, dt, db

    loss.defvjp(fwd, bwd)
    as_f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    return loss(as_f32(queries), as_f32(items), query_ids, item_ids, as_f32(scale), as_f32(bias))


def contrastive_loss(queries: dict, items: dict, query_ids, item_ids, logit_params: dict, *,
                     loss: str = "nt_xent", impl: str = "plain", mesh=None) -> jax.Array:
    """The training loss on embedding dicts (``fusion.similarity``'s inputs) -> scalar.

    ``loss``: "nt_xent" (``logit_params["temperature"]``) or "siglip" (``logit_params["scale"]``,
    ``["bias"]``). ``impl``: "plain" (global similarity matrix; XLA inserts the collectives) or
    "ring" (``ring_nt_xent`` / ``ring_siglip`` under shard_map; needs ``mesh``). Mid-level fusion's
    mixture of experts is not a single dot product, so it always uses the plain loss.
    """
    if loss not in LOSSES or impl not in LOSS_IMPLS:
        raise ValueError(
            f"loss must be in {LOSSES} and impl in {LOSS_IMPLS}, got {loss!r}, {impl!r}")
    if impl == "ring" and "embedding" in queries:
        if mesh is None:
            raise ValueError("the ring loss needs the device mesh")
        q, x = queries["embedding"], items["embedding"]
        if loss == "siglip":
            return ring_siglip(q, x, query_ids, item_ids, logit_params["scale"],
                               logit_params["bias"], mesh)
        return ring_nt_xent(q, x, query_ids, item_ids, logit_params["temperature"], mesh)
    similarity = fusion.similarity(queries, items)  # [Q, N]
    positives = positives_from_ids(query_ids, item_ids)
    if loss == "siglip":
        return siglip(similarity, positives, logit_params["scale"], logit_params["bias"])
    return nt_xent(similarity, positives, logit_params["temperature"])
