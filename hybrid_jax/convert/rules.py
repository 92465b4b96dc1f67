"""Named tensor rules shared by every converter: a PyTorch tensor -> its Flax layout.

A converter is a key map (PyTorch key -> Flax variable path) plus one of these rules per key, so a
layout change is written once, named in error messages, and tested once. A rule applies, in order:
``take`` (one of ``count`` equal parts of axis 0: a fused tensor such as attention's packed q/k/v),
``axes`` (a permutation), ``shape`` (a reshape, e.g. splitting attention heads) and ``value`` (an
elementwise change of representation, e.g. tau -> log tau).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import numpy as np


class ConversionError(ValueError):
    """A checkpoint does not fit the target network; the message lists every problem at once."""


class TensorRule(NamedTuple):
    """A named layout change, cast to float32 (see the module docstring for the order of steps)."""

    name: str
    axes: Optional[tuple[int, ...]]
    take: Optional[tuple[int, int]] = None  # (index, count) along axis 0, before everything else
    shape: Optional[tuple[int, ...]] = None  # reshape after the permutation
    value: Optional[Callable[[np.ndarray], np.ndarray]] = None  # elementwise, last

    def apply(self, array: np.ndarray) -> np.ndarray:
        array = np.asarray(array, np.float32)
        if self.take is not None:
            index, count = self.take
            if array.shape[0] % count:
                raise ConversionError(f"rule {self.name}: axis 0 of {array.shape} does not split into {count}")
            array = np.split(array, count, axis=0)[index]
        if self.axes is not None:
            array = array.transpose(self.axes)
        if self.shape is not None:
            array = array.reshape(self.shape)
        if self.value is not None:
            array = self.value(array).astype(np.float32)
        return np.array(array, np.float32, order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)


COPY = TensorRule("copy", None)
# torch Linear.weight [out, in] -> Flax Dense.kernel [in, out].
LINEAR_TO_DENSE = TensorRule("linear_to_dense", (1, 0))
# torch Conv2d.weight [O, I, kh, kw] -> Flax [kh, kw, I, O].
CONV_OIHW_TO_HWIO = TensorRule("conv_oihw_to_hwio", (2, 3, 1, 0))
# Depthwise [C, 1, k, k] -> [k, k, 1, C]; the groups come from the layer type, never from the shape
# (the stem weight of mn40 has the same shape as a depthwise one).
DEPTHWISE_OIHW_TO_HWIO = TensorRule("depthwise_oihw_to_hwio", (2, 3, 1, 0))
# A one-element parameter ([1], [1, 1]) -> a Flax scalar [].
TO_SCALAR = TensorRule("to_scalar", None, shape=())
# A [1, ..., 1, D] parameter (e.g. a learned token [1, 1, D]) -> a vector [D].
TO_VECTOR = TensorRule("to_vector", None, shape=(-1,))
# A temperature tau [1] (used as |tau|) -> the scalar log |tau| that Flax models learn.
TAU_TO_LOG = TensorRule("tau_to_log", None, shape=(), value=lambda a: np.log(np.abs(a)))

ATTENTION_PARTS = ("query", "key", "value")


def packed_attention_in(part: int, dim: int, num_heads: int) -> tuple[TensorRule, TensorRule]:
    """torch MultiheadAttention's packed ``in_proj_weight`` [3D, D] / ``in_proj_bias`` [3D] ->
    (Flax ``MultiHeadDotProductAttention`` query/key/value kernel [D, H, D/H], bias [H, D/H]).

    ``part`` 0, 1, 2 = q, k, v (PyTorch's packing order); heads are contiguous D/H slices."""
    name = ATTENTION_PARTS[part]
    head_dim = dim // num_heads
    return (TensorRule(f"packed_in_proj_{name}_to_heads", (1, 0), take=(part, 3),
                       shape=(dim, num_heads, head_dim)),
            TensorRule(f"packed_in_bias_{name}_to_heads", None, take=(part, 3), shape=(num_heads, head_dim)))


def attention_out(dim: int, num_heads: int) -> TensorRule:
    """torch MultiheadAttention ``out_proj.weight`` [D, D] -> Flax attention ``out`` kernel [H, D/H, D]."""
    return TensorRule("out_proj_to_heads", (1, 0), shape=(num_heads, dim // num_heads, dim))
