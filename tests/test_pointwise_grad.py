"""pointwise.matmul (per-example kernel gradient) equals autodiff of the plain einsum."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_jax.backend import batch_sum, pointwise


@pytest.mark.parametrize("per_example", [True, False])
@pytest.mark.parametrize("batch,height,width,cin,cout", [(3, 5, 4, 6, 10), (1, 7, 3, 12, 5)])
def test_pointwise_gradients_equal_autodiff(batch, height, width, cin, cout, per_example, monkeypatch):
    if per_example:  # the loop over examples that large activations take
        monkeypatch.setattr(batch_sum, "PER_EXAMPLE_MIN_BYTES", 0)
    rng = np.random.default_rng(batch * 100 + cin)
    x = jnp.asarray(rng.normal(size=(batch, height, width, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(cin, cout)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(batch, height, width, cout)), jnp.float32)

    def plain(x, w):
        return jnp.einsum("bhwi,io->bhwo", x, w, precision=jax.lax.Precision.HIGHEST)

    @jax.jit
    def both(x, w, g):
        return [jax.vjp(f, x, w)[1](g) + (f(x, w),) for f in (pointwise.matmul, plain)]

    (dx, dw, y), (dx_ref, dw_ref, y_ref) = both(x, w, g)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-4)
    assert dw.dtype == w.dtype and dx.dtype == x.dtype
