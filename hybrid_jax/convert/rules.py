"""Named tensor rules shared by every converter: a PyTorch tensor -> its Flax layout.

A converter is a key map (PyTorch key -> Flax variable path) plus one of these rules per key, so a
layout change is written once, named in error messages, and tested once.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np


class ConversionError(ValueError):
    """A checkpoint does not fit the target network; the message lists every problem at once."""


class TensorRule(NamedTuple):
    """A named layout change (an axis permutation; None keeps the layout), cast to float32."""

    name: str
    axes: Optional[tuple[int, ...]]

    def apply(self, array: np.ndarray) -> np.ndarray:
        array = np.asarray(array, np.float32)
        return np.ascontiguousarray(array if self.axes is None else array.transpose(self.axes))


COPY = TensorRule("copy", None)
# torch Linear.weight [out, in] -> Flax Dense.kernel [in, out].
LINEAR_TO_DENSE = TensorRule("linear_to_dense", (1, 0))
# torch Conv2d.weight [O, I, kh, kw] -> Flax [kh, kw, I, O].
CONV_OIHW_TO_HWIO = TensorRule("conv_oihw_to_hwio", (2, 3, 1, 0))
# Depthwise [C, 1, k, k] -> [k, k, 1, C]; the groups come from the layer type, never from the shape
# (the stem weight of mn40 has the same shape as a depthwise one).
DEPTHWISE_OIHW_TO_HWIO = TensorRule("depthwise_oihw_to_hwio", (2, 3, 1, 0))
