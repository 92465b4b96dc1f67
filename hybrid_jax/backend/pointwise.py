"""1x1 convolution as a GEMM whose kernel gradient is summed one example at a time (XLA:CPU).

Autodiff gives the kernel gradient as one dot contracting over every position of the batch,
[B*H*W, I]^T x [B*H*W, O]. XLA:CPU lays that out by transposing the larger operand in memory
first: on mn10 at batch 16 (10 s) the transpose of the 64 x 512,000 cotangent of one expansion
layer alone took 0.3 s, and all such transposes plus their dots about 1 s of a 4 s backward.
One example's operands fit in cache, so ``matmul``'s ``custom_vjp`` sums per-example kernel
gradients for large activations (``batch_sum``). The input gradient is the plain GEMM.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hybrid_jax.backend import batch_sum

SCOPE = "cpu_kernel_pointwise"  # named scope of the backward's ops (``hlo.audit``)


@jax.custom_vjp
def matmul(x, kernel):
    """``x`` [B, H, W, I] times ``kernel`` [I, O] -> [B, H, W, O]."""
    return jnp.einsum("bhwi,io->bhwo", x, kernel)


def _fwd(x, kernel):
    return matmul(x, kernel), (x, kernel)


def _kernel_grad(x, g):
    """[B, H, W, I], [B, H, W, O] -> [I, O] float32."""
    return jnp.einsum("bhwi,bhwo->io", x, g, preferred_element_type=jnp.float32)


def _bwd(residuals, g):
    x, kernel = residuals
    with jax.named_scope(SCOPE):
        dx = jnp.einsum("bhwo,io->bhwi", g, kernel).astype(x.dtype)
        return dx, batch_sum.sum_over_batch(_kernel_grad, x, g).astype(kernel.dtype)


matmul.defvjp(_fwd, _bwd)
