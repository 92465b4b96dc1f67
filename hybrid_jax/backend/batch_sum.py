"""Sum a per-batch reduction one example at a time when the operands are large (XLA:CPU).

The kernel gradients of the CNN's convolutions are reductions over batch and space. XLA:CPU
materialises their operands (tap slices, transposes) for the whole batch first, which streams
through main memory; one example's operands fit in cache. Measured on mn10 at batch 16, 10 s:
4-6x faster depthwise kernel gradients, and no 0.3 s transposes for the pointwise ones
(docs/benchmarks.md). Small operands already fit in cache and take one pass: a loop per layer
would only add compile time (and, outside jit, one compilation per layer shape).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# Operand bytes (x + g) from which the loop over examples is used.
PER_EXAMPLE_MIN_BYTES = 4 << 20
SCOPE = "cpu_kernel_per_example_loop"  # named scope of the loop (``hlo.audit``)


def sum_over_batch(fn: Callable, x, g):
    """``fn(x, g)`` for a ``fn`` that sums over the leading (batch) axis of both operands.

    Large operands: the sum over examples of ``fn(x[b:b+1], g[b:b+1])`` in a ``lax.scan``
    (float32 accumulation); the same value up to the order of the float additions.
    """
    if x.shape[0] == 1 or x.nbytes + g.nbytes < PER_EXAMPLE_MIN_BYTES:
        return fn(x, g)
    with jax.named_scope(SCOPE):
        return _scan(fn, x, g)


def _scan(fn: Callable, x, g):
    out = jax.eval_shape(fn, x[:1], g[:1])

    def add_example(total, example):
        x1, g1 = example
        return total + fn(x1[None], g1[None]).astype(jnp.float32), None

    total, _ = jax.lax.scan(add_example, jnp.zeros(out.shape, jnp.float32), (x, g))
    return total
