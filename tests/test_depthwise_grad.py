"""depthwise.shifted_conv's hand-written backward equals autodiff of the same shifted sum and
of the native grouped convolution."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_jax.backend import batch_sum, depthwise


def native(x, kernel, stride):
    pad = (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
        precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("kernel_size,stride,height,width,channels", [
    (3, 1, 9, 12, 6), (3, 2, 10, 13, 6), (3, 2, 9, 9, 6), (5, 1, 6, 5, 6), (5, 2, 7, 8, 6),
    (5, 2, 8, 11, 6), (3, 2, 10, 13, 1),  # last: the stem's single input channel
])
@pytest.mark.parametrize("per_example", [True, False])
def test_shifted_conv_gradients_equal_autodiff_and_native(kernel_size, stride, height, width,
                                                          channels, per_example, monkeypatch):
    if per_example:  # the loop over examples that large activations take
        monkeypatch.setattr(batch_sum, "PER_EXAMPLE_MIN_BYTES", 0)
    rng = np.random.default_rng(kernel_size * 10 + stride + height)
    x = jnp.asarray(rng.normal(size=(2, height, width, channels)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, 1, 6)), jnp.float32)
    out = depthwise.shifted_conv(x, kernel, stride)
    assert out.shape == (2, -(-height // stride), -(-width // stride), 6)
    g = jnp.asarray(rng.normal(size=out.shape), jnp.float32)

    @jax.jit
    def grads(x, kernel, g):
        fns = [depthwise.shifted_conv, depthwise.shifted_conv_autodiff]
        if channels > 1:
            fns.append(native)
        return [jax.vjp(lambda x, k, f=f: f(x, k, stride), x, kernel)[1](g) for f in fns]

    custom, *references = grads(x, kernel, g)
    for reference in references:
        np.testing.assert_allclose(custom[0], reference[0], atol=1e-5)
        np.testing.assert_allclose(custom[1], reference[1], atol=1e-4)


@pytest.mark.parametrize("kernel_size,stride,height,width,channels", [
    (3, 1, 9, 12, 6), (5, 1, 6, 5, 6), (5, 1, 11, 7, 6), (3, 2, 10, 13, 6), (5, 2, 8, 11, 6),
    (3, 2, 10, 13, 1), (3, 1, 9, 8, 1),  # single input channel: the stem
])
def test_fused_conv_and_its_gradients_equal_native(kernel_size, stride, height, width, channels):
    """The accelerator form (TPU policy): same values and gradients as XLA's grouped conv."""
    rng = np.random.default_rng(kernel_size * 10 + stride + height)
    x = jnp.asarray(rng.normal(size=(2, height, width, channels)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, 1, 6)), jnp.float32)
    out = jax.jit(depthwise.fused_conv, static_argnums=2)(x, kernel, stride)
    assert out.shape == (2, -(-height // stride), -(-width // stride), 6)
    g = jnp.asarray(rng.normal(size=out.shape), jnp.float32)

    @jax.jit
    def grads(x, kernel, g):
        fns = [depthwise.fused_conv, depthwise.shifted_conv_autodiff] + ([native] if channels > 1 else [])
        return [jax.vjp(lambda x, k, f=f: f(x, k, stride), x, kernel) for f in fns]

    results = grads(x, kernel, g)
    (fused, fused_vjp), references = results[0], results[1:]
    fused_grads = fused_vjp(g)
    for value, vjp in references:
        np.testing.assert_allclose(fused, value, atol=1e-5)
        reference = vjp(g)
        np.testing.assert_allclose(fused_grads[0], reference[0], atol=1e-5)
        np.testing.assert_allclose(fused_grads[1], reference[1], atol=1e-4)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_fused_conv_sums_bfloat16_inputs_in_float32(kernel_size):
    """bfloat16 in and out, float32 inside: the output and the input gradient are within one
    bfloat16 rounding of the exact values. Summing the k*k taps in bfloat16 (what the CPU form
    does with bfloat16 inputs) is 0.7-1.4 % of the peak off here, against the 0.39 % (2^-8)
    allowed."""
    rng = np.random.default_rng(kernel_size)
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 64)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, 1, 64)), jnp.bfloat16)
    g = jnp.asarray(rng.normal(size=(2, 16, 16, 64)), jnp.bfloat16)
    exact = jax.vjp(lambda x, k: native(x, k, 1), x.astype(jnp.float32), kernel.astype(jnp.float32))
    fused = jax.vjp(lambda x, k: depthwise.fused_conv(x, k, 1), x, kernel)
    assert fused[0].dtype == jnp.bfloat16
    pairs = [(fused[0], exact[0])] + list(zip(fused[1](g), exact[1](g.astype(jnp.float32))))
    for got, want in pairs:
        assert got.dtype == jnp.bfloat16
        error = np.abs(np.asarray(got, np.float32) - np.asarray(want)).max()
        assert error <= 2.0 ** -8 * np.abs(np.asarray(want)).max()
