"""The jitted training step and embedding functions, with their shardings written down."""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hybrid_jax import fusion, losses, sharding
from hybrid_jax.model import RetrievalModel


class TrainState(flax.struct.PyTreeNode):
    """Everything a resumed run needs besides the data iterator (kept in checkpoint meta)."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    batch_stats: Any  # BN running statistics of the audio CNN ({} without an audio tower)
    opt_state: Any
    rng: jax.Array  # uint32 [2] base key; step keys are fold_in(rng, step), so resume is exact


def loss_and_updates(model: RetrievalModel, params, batch_stats, batch, rng):
    """Forward pass in train mode -> (loss, (new batch_stats, temperature)). Pure; used by the step
    and by gradient tests."""
    dropout_rng, augment_rng = jax.random.split(rng)
    (queries, items, temperature), updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        batch,
        train=True,
        rngs={"dropout": dropout_rng, "augment": augment_rng},
        mutable=["batch_stats"],
    )
    similarity = fusion.similarity(queries, items)  # [B, B]
    positives = losses.positives_from_ids(batch["item_id"], batch["item_id"])
    loss = losses.nt_xent(similarity, positives, temperature)
    return loss, (updates.get("batch_stats", {}), temperature)


def make_train_step(model: RetrievalModel, tx: optax.GradientTransformation, schedule: Callable):
    """The un-jitted step: state, global batch -> (new state, scalar metrics)."""

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(loss_and_updates, argnums=1, has_aux=True)
        (loss, (batch_stats, temperature)), grads = grad_fn(model, state.params, state.batch_stats, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "train/loss": loss,
            "train/grad_norm": optax.global_norm(grads),
            "train/temperature": temperature,
            "lr": schedule(state.step),
        }
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
        return model.apply(variables, batch, train=False, method=getattr(RetrievalModel, method))

    return jax.jit(
        embed,
        in_shardings=(variables_shardings, sharding.batch_sharding(mesh)),
        out_shardings=NamedSharding(mesh, P()),
    )
