"""Depthwise k x k convolution as a "shifted sum", with a hand-written backward pass.

XLA:CPU runs grouped convolutions (``feature_group_count == channels``) at ~1 GFLOP/s; a sum of
k*k strided slices of the padded input times per-channel weights fuses into one elementwise loop
and is 9-24x faster. Autodiff of that sum, though, turns every strided slice into its own
pad/scatter buffer of the input's size. ``shifted_conv``'s ``custom_vjp`` writes the backward as
shifted sums too:

* input gradient: the depthwise conv of the (for stride s: interior-dilated) cotangent with the
  flipped kernel, i.e. one more fused loop over k*k slices;
* kernel gradient: per tap, the product of a slice of the padded input with the cotangent, summed
  over batch and space (k*k reductions).

Layout NHWC; kernel [k, k, 1, C]; the input has C channels (depthwise) or 1 (the stem). Padding is
PyTorch's symmetric (k - 1) // 2 on both spatial axes.

``fused_conv`` is the accelerator form of the same sums (the TPU choice of ``backend.policy``):
no per-example loops (they would serialise the batch), products and sums in float32 inside the
fused loop (the inputs stay bfloat16 in HBM). Why on TPU: XLA:TPU runs a grouped convolution in
layouts of its own and copied the early blocks' activations between layouts around each one
(21 GB per clotho_late step at 32 pairs per chip on v5p), and a convolution does not fuse the batch
norm and activation before it, so that activation was written to HBM. A sum of shifted slices is
one elementwise loop that fuses both. XLA:TPU does not fuse *strided* slices, though: stride-2
depthwise convs written this way had every tap written out (50 GB per step), and splitting the
input into stride phases first cost more than it saved (``docs/tpu_efficiency.md``), so
``mobilenet.spatial_conv`` uses ``fused_conv`` for stride-1 depthwise convs and the
single-channel stem only.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hybrid_jax.backend import batch_sum

# Named scope of every op these kernels emit, so that a compiled program shows whether it holds
# them (``hlo.audit``: an accelerator program must not).
SCOPE = "cpu_kernel_shifted_depthwise"


def _out_size(size: int, k: int, stride: int) -> int:
    pad = (k - 1) // 2
    return (size + 2 * pad - k) // stride + 1


def _taps(xp, k: int, stride: int, out_h: int, out_w: int):
    """Yield (i, j, slice) of the padded input read by tap (i, j)."""
    batch, _, _, channels = xp.shape
    for i in range(k):
        for j in range(k):
            yield i, j, jax.lax.slice(
                xp, (0, i, j, 0),
                (batch, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, channels),
                (1, stride, stride, 1))


def _forward(x, kernel, stride: int):
    with jax.named_scope(SCOPE):
        return _forward_sum(x, kernel, stride)


def _as(a, acc):
    """``a`` in the accumulation dtype ``acc`` (None: as it is)."""
    return a if acc is None else a.astype(acc)


def _forward_sum(x, kernel, stride: int, acc=None):
    """The shifted sum; ``acc``: the dtype products and sums are formed in (None: the inputs')."""
    k = kernel.shape[0]
    pad = (k - 1) // 2
    out_h, out_w = _out_size(x.shape[1], k, stride), _out_size(x.shape[2], k, stride)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    w = _as(kernel, acc)
    total = None
    for i, j, tap in _taps(xp, k, stride, out_h, out_w):
        term = _as(tap, acc) * w[i, j, 0]
        total = term if total is None else total + term
    return total if acc is None else total.astype(jnp.result_type(x, kernel))


def shifted_conv_autodiff(x, kernel, stride: int):
    """The shifted sum differentiated by JAX (reference for tests)."""
    return _forward(x, kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def shifted_conv(x, kernel, stride: int):
    """Depthwise (or single-input-channel) k x k conv of NHWC ``x`` with [k, k, 1, C] ``kernel``."""
    return _forward(x, kernel, stride)


def _fwd(x, kernel, stride):
    return _forward(x, kernel, stride), (x, kernel)


def _bwd(stride, residuals, g):
    with jax.named_scope(SCOPE):
        return _backward(stride, residuals, g, _kernel_grad)


def _backward(stride, residuals, g, kernel_grad, acc=None):
    """(dx, dkernel); ``kernel_grad(x, g, k, stride)`` -> [k*k, C] float32; ``acc`` as in
    ``_forward_sum``."""
    x, kernel = residuals
    k = kernel.shape[0]
    pad = (k - 1) // 2
    batch, height, width, in_channels = x.shape
    out_h, out_w = g.shape[1], g.shape[2]
    zero = jnp.zeros((), g.dtype)
    # dx[p] = sum_i gd[p + pad - i] w[i], gd = g dilated by the stride: pad gd by k - 1 - pad in
    # front (and enough behind) and read H rows from offset k - 1 - i.
    low = k - 1 - pad
    gp = jax.lax.pad(g, zero, ((0, 0, 0),
                               (low, height + pad - ((out_h - 1) * stride + 1), stride - 1),
                               (low, width + pad - ((out_w - 1) * stride + 1), stride - 1),
                               (0, 0, 0)))
    w = _as(kernel, acc)
    dx = None
    for i in range(k):
        for j in range(k):
            term = jax.lax.slice(gp, (0, k - 1 - i, k - 1 - j, 0),
                                 (batch, k - 1 - i + height, k - 1 - j + width, gp.shape[3]))
            # Cast each slice, not the padded buffer: XLA:TPU wrote a cast buffer out.
            term = _as(term, acc) * w[i, j, 0]
            dx = term if dx is None else dx + term
    if in_channels == 1 and dx.shape[-1] != 1:  # the stem broadcast one input channel
        dx = dx.sum(axis=-1, keepdims=True)
    dw = kernel_grad(x, g, k, stride).reshape(kernel.shape).astype(kernel.dtype)
    return dx.astype(x.dtype), dw


def _kernel_grad_one(x, g, k: int, stride: int, acc=None):
    """[k*k, C] float32: per tap, the sum over batch and space of tap(i, j) * g."""
    pad = (k - 1) // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return jnp.stack([(_as(tap, acc) * _as(g, acc)).sum(axis=(0, 1, 2), dtype=jnp.float32)
                      for _, _, tap in _taps(xp, k, stride, g.shape[1], g.shape[2])])


def _kernel_grad(x, g, k: int, stride: int):
    """dw[i, j] = sum over batch and space of tap(i, j) * g ([k*k, C] float32).

    XLA:CPU writes each tap's strided slice out before reducing it (k*k copies of the input);
    ``batch_sum`` keeps those copies in cache for large activations.
    """
    return batch_sum.sum_over_batch(lambda x, g: _kernel_grad_one(x, g, k, stride), x, g)


shifted_conv.defvjp(_fwd, _bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def fused_conv(x, kernel, stride: int):
    """``shifted_conv`` for accelerators: float32 inside the loop, no per-example loops."""
    return _forward_sum(x, kernel, stride, jnp.float32)


def _fused_fwd(x, kernel, stride):
    return _forward_sum(x, kernel, stride, jnp.float32), (x, kernel)


def _fused_kernel_grad(x, g, k: int, stride: int):
    return _kernel_grad_one(x, g, k, stride, jnp.float32)


def _fused_bwd(stride, residuals, g):
    return _backward(stride, residuals, g, _fused_kernel_grad, jnp.float32)


fused_conv.defvjp(_fused_fwd, _fused_bwd)
