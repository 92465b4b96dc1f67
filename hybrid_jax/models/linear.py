"""PyTorch's default initialisation for the layers trained from scratch (``nn.Linear``, attention).

The authors train with Adam at lr 2e-5, so the initial scale of the new layers persists through
training: they get PyTorch's initialisation here, not Flax's defaults.

* ``nn.Linear``: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (``kaiming_uniform_`` with
  a = sqrt(5), and the bias rule of ``reset_parameters``).
* ``nn.MultiheadAttention``: the packed input projection [3D, D] is Xavier-uniform over the *packed*
  shape, bound sqrt(6 / (D + 3D)), biases zero; ``out_proj`` is a Linear weight with a zero bias.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def uniform(bound: float):
    """Initializer U(-bound, bound)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# Weight [fan_in, fan_out] (Flax DenseGeneral flattens its kernel to 2-D before initialising):
# variance_scaling(1/3, fan_in, uniform) has bound sqrt(3 * (1/3) / fan_in) = 1/sqrt(fan_in).
linear_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def packed_qkv_kernel(key, shape, dtype=jnp.float32):
    """One of q/k/v ([D, D] flattened) drawn as its slice of PyTorch's Xavier-uniform [3D, D]."""
    fan_in = shape[0]
    return uniform(float(np.sqrt(6.0 / (fan_in + 3 * fan_in))))(key, shape, dtype)


class Linear(nn.Module):
    """``torch.nn.Linear`` in Flax: x [..., in] -> [..., features], PyTorch's default init.

    Parameters are ``kernel`` [in, features] and ``bias`` [features], as in ``nn.Dense``, so a
    PyTorch weight converts with the ``linear_to_dense`` rule."""

    features: int
    dtype: Any = None  # compute dtype (None: promote from the input and the parameters)
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        bound = 1.0 / np.sqrt(fan_in)
        kernel = self.param("kernel", uniform(bound), (fan_in, self.features))
        bias = self.param("bias", uniform(bound), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.dot(x, kernel, precision=self.precision) + bias
