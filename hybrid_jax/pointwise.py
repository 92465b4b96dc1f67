"""1x1 convolution as a GEMM whose kernel gradient is summed one example at a time (XLA:CPU).

Autodiff gives the kernel gradient as one dot contracting over every position of the batch,
[B*H*W, I]^T x [B*H*W, O]. XLA:CPU lays that out by transposing the larger operand in memory
first: on mn10 at batch 16 (10 s) the transpose of the 64 x 512,000 cotangent of one expansion
layer alone took 0.3 s, and all such transposes plus their dots about 1 s of a 4 s backward.
One example's operands fit in cache, so ``matmul``'s ``custom_vjp`` scans over the batch and
sums per-example kernel gradients (float32 accumulation). The input gradient is the plain GEMM.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def matmul(x, kernel):
    """``x`` [B, H, W, I] times ``kernel`` [I, O] -> [B, H, W, O]."""
    return jnp.einsum("bhwi,io->bhwo", x, kernel)


def _fwd(x, kernel):
    return matmul(x, kernel), (x, kernel)


def _example_grad(x1, g1):
    """One example: [H, W, I], [H, W, O] -> [I, O] float32."""
    return jnp.einsum("hwi,hwo->io", x1, g1, preferred_element_type=jnp.float32)


# Below this many operand bytes the whole batch fits in cache: one dot, no loop.
PER_EXAMPLE_MIN_BYTES = 4 << 20


def _bwd(residuals, g):
    x, kernel = residuals
    dx = jnp.einsum("bhwo,io->bhwi", g, kernel).astype(x.dtype)
    if x.shape[0] == 1 or x.nbytes + g.nbytes < PER_EXAMPLE_MIN_BYTES:
        dw = jnp.einsum("bhwi,bhwo->io", x, g, preferred_element_type=jnp.float32)
        return dx, dw.astype(kernel.dtype)

    def add_example(total, example):
        return total + _example_grad(*example), None

    dw, _ = jax.lax.scan(add_example, jnp.zeros(kernel.shape, jnp.float32), (x, g))
    return dx, dw.astype(kernel.dtype)


matmul.defvjp(_fwd, _bwd)
