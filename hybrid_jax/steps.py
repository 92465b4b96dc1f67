"""The jitted training step and embedding functions, with their shardings written down."""
from __future__ import annotations

import functools
from typing import Callable

import jax
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hybrid_jax import gradcache, losses, sharding
from hybrid_jax.models.retrieval import RetrievalModel
from hybrid_jax.state import TrainState


def _embed_both(module: RetrievalModel, batch, train: bool):
    # Same order as RetrievalModel.__call__ (queries first), so the dropout streams are the same.
    return module.embed_queries(batch, train=train), module.embed_items(batch, train=train)


def train_embeddings(model: RetrievalModel, params, batch_stats, batch, rng):
    """Train-mode embeddings of a (sub-)batch -> ((queries, items), new batch_stats).

    ``rng`` is split into the "dropout" and "augment" streams; the same rng gives the same masks."""
    dropout_rng, augment_rng = jax.random.split(rng)
    embeddings, updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        batch,
        train=True,
        rngs={"dropout": dropout_rng, "augment": augment_rng},
        mutable=["batch_stats"],
        method=_embed_both,
    )
    return embeddings, updates.get("batch_stats", {})


def embedding_loss(model: RetrievalModel, params, embeddings, batch, *, loss_impl="plain",
                   mesh=None):
    """The contrastive loss (``model.loss``) of a batch's (queries, items) -> (loss, logit params).

    Only the loss scalars (temperature, SigLIP scale/bias) are read from ``params``."""
    logit_params = model.apply({"params": params}, method=RetrievalModel.logit_params)
    queries, items = embeddings
    ids = batch["item_id"]
    loss = losses.contrastive_loss(queries, items, ids, ids, logit_params, loss=model.loss,
                                   impl=loss_impl, mesh=mesh)
    return loss, logit_params


def loss_and_updates(model: RetrievalModel, params, batch_stats, batch, rng, *, loss_impl="plain",
                     mesh=None):
    """Forward pass in train mode -> (loss, (new batch_stats, logit params)). Pure; used by the
    step and by gradient tests."""
    embeddings, new_stats = train_embeddings(model, params, batch_stats, batch, rng)
    loss, logit_params = embedding_loss(model, params, embeddings, batch, loss_impl=loss_impl,
                                        mesh=mesh)
    return loss, (new_stats, logit_params)


def make_gradient_fn(model: RetrievalModel, *, microbatch_size: int = 0,
                     accumulation: str = "gradcache", loss_impl: str = "plain",
                     mesh: Mesh | None = None):
    """(params, batch_stats, batch, rng) -> (loss, logit params, grads, new batch_stats, metrics).

    ``microbatch_size`` 0 (or >= the batch): one pass over the whole batch. Otherwise the batch is
    processed in sub-batches of that many pairs (global, over all devices) with ``accumulation``
    "gradcache" (exact full-batch loss and gradient) or "naive" (per-sub-batch loss: a different,
    smaller-batch objective); see ``hybrid_jax.gradcache``.
    """
    if accumulation not in gradcache.ACCUMULATIONS:
        raise ValueError(
            f"accumulation must be one of {gradcache.ACCUMULATIONS}, got {accumulation!r}")
    if loss_impl not in losses.LOSS_IMPLS:
        raise ValueError(f"loss_impl must be one of {losses.LOSS_IMPLS}, got {loss_impl!r}")
    if loss_impl == "ring" and mesh is None:
        raise ValueError("loss_impl='ring' needs the mesh")
    loss_kw = dict(loss_impl=loss_impl, mesh=mesh)

    def plain_grads(params, batch_stats, batch, rng):
        loss_fn = functools.partial(loss_and_updates, model, **loss_kw)
        return jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, batch, rng)

    def gradients(params, batch_stats, batch, rng):
        size = batch["item_id"].shape[0]
        if not microbatch_size or microbatch_size >= size:
            (loss, (stats, logit_params)), grads = plain_grads(params, batch_stats, batch, rng)
            return loss, logit_params, grads, stats, {}
        if accumulation == "naive":
            loss, logit_params, grads, stats = gradcache.accumulate(
                plain_grads, params, batch_stats, batch, rng, microbatch_size, mesh)
            return loss, logit_params, grads, stats, {}
        loss, logit_params, grads, stats, replay_error = gradcache.gradcache(
            functools.partial(train_embeddings, model),
            functools.partial(embedding_loss, model, **loss_kw),
            params, batch_stats, batch, rng, microbatch_size, mesh)
        return loss, logit_params, grads, stats, {"train/gradcache_replay_error": replay_error}

    return gradients


def config_options(train_config, mesh: Mesh) -> dict:
    """``make_train_step`` keywords from ``config.train`` (GradCache sub-batches, loss
    implementation) and the mesh."""
    keys = ("microbatch_size", "accumulation", "loss_impl")
    return {**{k: train_config[k] for k in keys if k in train_config}, "mesh": mesh}


def make_train_step(model: RetrievalModel, tx: optax.GradientTransformation, schedule: Callable,
                    *, microbatch_size: int = 0, accumulation: str = "gradcache",
                    loss_impl: str = "plain", mesh: Mesh | None = None):
    """The un-jitted step: state, global batch -> (new state, scalar metrics). The keywords are
    ``make_gradient_fn``'s (config.train.microbatch_size, .accumulation, .loss_impl)."""
    gradients = make_gradient_fn(model, microbatch_size=microbatch_size, accumulation=accumulation,
                                 loss_impl=loss_impl, mesh=mesh)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        loss, logit_params, grads, batch_stats, extra = gradients(
            sharding.gathered(state.params, mesh), state.batch_stats, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "train/loss": loss,
            "train/grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
            **extra,
        }
        if "temperature" in logit_params:
            metrics["train/temperature"] = logit_params["temperature"]
        else:  # SigLIP: report 1 / scale, comparable to NT-Xent's tau, and the bias
            metrics["train/temperature"] = 1.0 / logit_params["scale"]
            metrics["train/logit_bias"] = logit_params["bias"]
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, metrics

    return train_step


def jit_train_step(train_step, state_shardings, mesh: Mesh):
    """Jits the step once: state sharded by the rules, batch split over the batch axes, metrics
    replicated; the old state is donated so its buffers are reused for the new one."""
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, NamedSharding(mesh, P())),
        donate_argnums=0,
    )


def jit_embed(model: RetrievalModel, method: str, variables_shardings, mesh: Mesh):
    """Jitted eval-mode embedding of items or queries: (variables, batch) -> dict of [B, ...].
    The outputs are small, so they are replicated: every process can read all of them."""

    def embed(variables, batch):
        variables = sharding.gathered(variables, mesh)
        return model.apply(variables, batch, train=False, method=getattr(RetrievalModel, method))

    return jax.jit(
        embed,
        in_shardings=(variables_shardings, sharding.batch_sharding(mesh)),
        out_shardings=NamedSharding(mesh, P()),
    )
