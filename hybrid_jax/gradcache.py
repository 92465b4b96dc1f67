"""Contrastive batches in sub-batches: GradCache (exact full-batch loss) and naive accumulation.

GradCache (Gao et al. 2021) splits the step into three passes over K sub-batches of m pairs:
(1) embed every sub-batch without gradients and keep only the embeddings, (2) take the loss over
the whole batch and its gradient with respect to the embeddings, (3) embed each sub-batch again,
now with a VJP, and pull the cached embedding gradients back to the parameters, summing over
sub-batches. Activation memory is that of one sub-batch, and the gradient is the gradient of the
full-batch contrastive loss.

Randomness: sub-batch k uses ``fold_in(step_rng, k)`` in both passes (1) and (3), so dropout and
SpecAugment masks are replayed exactly; ``replay_error`` (max |pass 1 - pass 3| over embeddings)
reports any mismatch.

Batch norm: the CNN's BN in train mode normalises with the statistics of the sub-batch it sees, in
both passes, so the forward is that of m-example batches (as it would be on a device that holds
m examples) and pass (3) reproduces pass (1) exactly. Running statistics are updated only in pass
(3), once per sub-batch and sequentially, so the new ``batch_stats`` equal those of processing the
K sub-batches one after another (K momentum updates per step, not one).

Naive accumulation takes the loss within each sub-batch and averages the gradients: each query
only competes with the m - 1 other items of its sub-batch, so it optimises a different (easier,
smaller-batch) contrastive objective; it is kept as the baseline GradCache is compared against.

Sub-batch k holds rows k, k + K, k + 2K, ... of the global batch: with the batch split over the
devices in contiguous blocks, every sub-batch is then spread evenly over all devices without moving
data (needs m divisible by the number of batch devices).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hybrid_jax import sharding

ACCUMULATIONS = ("gradcache", "naive")

# embed_fn(params, batch_stats, batch, rng) -> (embeddings pytree [m, ...], new batch_stats)
EmbedFn = Callable[[Any, Any, dict, jax.Array], tuple[Any, Any]]
# loss_fn(params, embeddings pytree [B, ...], batch) -> (scalar loss, aux)
LossFn = Callable[[Any, Any, dict], tuple[jax.Array, Any]]


def num_sub_batches(batch: dict, microbatch_size: int) -> int:
    """K = B / m; the global batch must split evenly."""
    size = jax.tree.leaves(batch)[0].shape[0]
    if microbatch_size <= 0 or size % microbatch_size:
        raise ValueError(f"microbatch_size {microbatch_size} must divide the global batch {size}")
    return size // microbatch_size


def split(tree: Any, num: int, mesh: Mesh | None = None) -> Any:
    """[B, ...] leaves -> [K, m, ...]; sub-batch k holds rows k, k + K, ... (see module doc)."""

    def one(x):
        x = jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)
        if mesh is not None:
            axes = tuple(a for a in sharding.BATCH_AXES if a in mesh.axis_names)
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, axes)))
        return x

    return jax.tree.map(one, tree)


def merge(tree: Any) -> Any:
    """Inverse of ``split``: [K, m, ...] -> [B, ...] in the original row order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


def sub_batch_rng(rng: jax.Array, index) -> jax.Array:
    """The rng of sub-batch ``index``: the same in every pass, so its randomness is replayed."""
    return jax.random.fold_in(rng, index)


def _inexact(tree: Any) -> tuple[list, Callable[[list], Any]]:
    """The floating leaves of ``tree`` (the differentiable embeddings) and a function putting new
    floating leaves back; other leaves (e.g. mid fusion's bool ``meta_present``) stay as given."""
    leaves, treedef = jax.tree.flatten(tree)
    floating = [jnp.issubdtype(leaf.dtype, jnp.inexact) for leaf in leaves]

    def rebuild(new):
        it = iter(new)
        return jax.tree.unflatten(
            treedef, [next(it) if f else leaf for f, leaf in zip(floating, leaves)])

    return [leaf for f, leaf in zip(floating, leaves) if f], rebuild


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def gradcache(embed_fn: EmbedFn, loss_fn: LossFn, params, batch_stats, batch: dict, rng: jax.Array,
              microbatch_size: int, mesh: Mesh | None = None):
    """Full-batch loss and parameter gradients with one sub-batch of activations in memory.

    Args:
      embed_fn: train-mode embedding of one sub-batch (see ``EmbedFn``); any pytree of embeddings.
      loss_fn: loss over the whole batch's embeddings (see ``LossFn``); ``params`` is passed so
        that learned loss scalars (temperature, SigLIP scale/bias) get their gradient here.
      params, batch_stats: model variables; batch: dict of [B, ...]; rng: the step's key.
      microbatch_size: m, dividing B.
      mesh: optional; pins each sub-batch's sharding to the batch axes.
    Returns:
      (loss, aux, grads, new batch_stats, replay_error).
    """
    num = num_sub_batches(batch, microbatch_size)
    subs = split(batch, num, mesh)
    indices = jnp.arange(num)

    # (1) Embeddings only: nothing is differentiated here, so no activations are kept.
    def embed_only(_, xs):
        sub, k = xs
        embeddings, _unused_stats = embed_fn(params, batch_stats, sub, sub_batch_rng(rng, k))
        return None, jax.lax.stop_gradient(embeddings)

    _, cached = jax.lax.scan(embed_only, None, (subs, indices))  # leaves [K, m, ...]

    # (2) Loss over the full batch; gradient w.r.t. the embeddings (and the loss's own params).
    floating, rebuild = _inexact(merge(cached))

    def full_loss(floating, params):
        return loss_fn(params, rebuild(floating), batch)

    (loss, aux), (emb_grads, loss_param_grads) = jax.value_and_grad(
        full_loss, argnums=(0, 1), has_aux=True)(floating, params)
    cotangents = split(emb_grads, num, mesh)
    cached_floating = split(floating, num, mesh)

    # (3) Replay each sub-batch with a VJP and pull the cached cotangents back to the parameters.
    def backward(carry, xs):
        grads, stats = carry
        sub, k, cotangent, previous = xs

        def embed(p):
            embeddings, new_stats = embed_fn(p, stats, sub, sub_batch_rng(rng, k))
            return _inexact(embeddings)[0], new_stats

        recomputed, vjp_fn, new_stats = jax.vjp(embed, params, has_aux=True)
        (sub_grads,) = vjp_fn(cotangent)
        error = jnp.max(jnp.stack([jnp.max(jnp.abs(a - b)) for a, b in zip(recomputed, previous)]))
        return (_add(grads, sub_grads), new_stats), error

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, batch_stats), errors = jax.lax.scan(
        backward, (zeros, batch_stats), (subs, indices, cotangents, cached_floating))
    return loss, aux, _add(grads, loss_param_grads), batch_stats, jnp.max(errors)


def accumulate(loss_and_grad_fn: Callable, params, batch_stats, batch: dict, rng: jax.Array,
               microbatch_size: int, mesh: Mesh | None = None):
    """Naive gradient accumulation: the mean over sub-batches of each sub-batch's own loss and
    gradient (a smaller-batch contrastive objective; see the module doc).

    ``loss_and_grad_fn(params, batch_stats, sub_batch, rng) -> ((loss, (new_stats, aux)), grads)``.
    Returns (mean loss, aux of the last sub-batch, mean grads, new batch_stats).
    """
    num = num_sub_batches(batch, microbatch_size)

    def step(carry, xs):
        loss_sum, grads, stats = carry
        sub, k = xs
        (loss, (stats, aux)), sub_grads = loss_and_grad_fn(
            params, stats, sub, sub_batch_rng(rng, k))
        return (loss_sum + loss, _add(grads, sub_grads), stats), aux

    zeros = jax.tree.map(jnp.zeros_like, params)
    init = (jnp.zeros((), jnp.float32), zeros, batch_stats)
    (loss_sum, grads, batch_stats), auxes = jax.lax.scan(
        step, init, (split(batch, num, mesh), jnp.arange(num)))
    aux = jax.tree.map(lambda x: x[-1], auxes)
    return loss_sum / num, aux, jax.tree.map(lambda g: g / num, grads), batch_stats
