"""Optimiser and learning-rate schedule of the recipe: Adam, linear warm-up, cosine decay, floor."""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(
    *,
    steps_per_epoch: int,
    peak_lr: float,
    final_lr: float,
    warmup_epochs: float,
    decay_end_epoch: float,
) -> optax.Schedule:
    """Linear warm-up 0 -> peak over ``warmup_epochs``, cosine peak -> final until
    ``decay_end_epoch``, then constant ``final_lr``. Evaluated every step (not per epoch)."""
    warmup_steps = max(1.0, warmup_epochs * steps_per_epoch)
    decay_steps = max(1.0, decay_end_epoch * steps_per_epoch - warmup_steps)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak_lr * step / warmup_steps
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = final_lr + 0.5 * (peak_lr - final_lr) * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


def make_optimizer(optim: ml_collections.ConfigDict, steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam (no weight decay) on the schedule above, with optional global-norm clipping."""
    schedule = learning_rate_schedule(
        steps_per_epoch=steps_per_epoch,
        peak_lr=optim.peak_lr,
        final_lr=optim.final_lr,
        warmup_epochs=optim.warmup_epochs,
        decay_end_epoch=optim.decay_end_epoch,
    )
    chain = []
    if optim.get("clip_grad_norm", 0.0):
        chain.append(optax.clip_by_global_norm(optim.clip_grad_norm))
    chain.append(optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps))
    return optax.chain(*chain), schedule
