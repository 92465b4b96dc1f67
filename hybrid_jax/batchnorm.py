"""Train-mode batch norm over (B, H, W) of NHWC activations, with a hand-written backward pass.

Forward: one pass for the float32 statistics (E[y] and E[y^2]), then y * multiplier + shift.
Backward: two per-channel sums (of g and g * y), then one elementwise pass
``dy = g * multiplier + y * a + b`` with per-channel a, b; autodiff of the textbook formula
re-reads the activation several times. Gradients through the returned mean and variance are
included (they are normally only used for the running statistics).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

AXES = (0, 1, 2)


def _stats(y):
    y32 = y.astype(jnp.float32)
    mean = y32.mean(axis=AXES)
    var = jnp.maximum(jnp.square(y32).mean(axis=AXES) - jnp.square(mean), 0.0)
    return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(y, scale, bias, epsilon: float):
    """-> (normalised y * scale + bias in y's dtype, batch mean [C], biased batch variance [C])."""
    return _fwd(y, scale, bias, epsilon)[0]


def _fwd(y, scale, bias, epsilon):
    mean, var = _stats(y)
    inv = jax.lax.rsqrt(var + epsilon)
    multiplier = scale * inv
    shift = bias - mean * multiplier
    out = y * multiplier.astype(y.dtype) + shift.astype(y.dtype)
    return (out, mean, var), (y, mean, inv, scale)


def _bwd(epsilon, residuals, cotangents):
    del epsilon
    y, mean, inv, scale = residuals
    g, g_mean, g_var = cotangents
    count = y.size // y.shape[-1]
    g32 = g.astype(jnp.float32)
    sum_g = g32.sum(axis=AXES)
    sum_gy = (g32 * y.astype(jnp.float32)).sum(axis=AXES)
    d_bias = sum_g
    d_scale = (sum_gy - mean * sum_g) * inv
    multiplier = scale * inv
    a = 2.0 * g_var / count - multiplier * inv * d_scale / count
    b = g_mean / count - multiplier * d_bias / count - mean * a
    dy = g * multiplier.astype(y.dtype) + y * a.astype(y.dtype) + b.astype(y.dtype)
    return dy, d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


batch_norm_train.defvjp(_fwd, _bwd)


def batch_norm_train_autodiff(y, scale, bias, epsilon: float):
    """The same function differentiated by JAX (reference for tests)."""
    mean, var = _stats(y)
    multiplier = scale * jax.lax.rsqrt(var + epsilon)
    shift = bias - mean * multiplier
    return y * multiplier.astype(y.dtype) + shift.astype(y.dtype), mean, var
