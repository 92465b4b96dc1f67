"""The backend policy: every CPU-vs-accelerator choice, decided once from the target devices.

The choices are made from the platform of the devices a program is compiled for (the mesh's
devices, or an explicit target such as a TPU topology on a CPU host), never from
``jax.default_backend()``: a TPU program planned on a laptop must be the program a TPU host would
compile, not the laptop's. The commands resolve one ``Policy`` from their mesh and pass it to
``build`` (model settings), ``state`` (init RNG) and ``Checkpoints`` (Orbax options).

What differs per platform, and why:

* ``kernels``: "shifted" on CPU (the shifted-sum depthwise conv and the per-example kernel-gradient
  loops of ``hybrid_jax.backend``; XLA:CPU runs grouped convolutions at ~1 GFLOP/s); "fused" on
  TPU (stride-1 depthwise convs and the stem as shifted sums, one fused loop per pass with the
  batch norm and activation around it, no per-example loops; strided depthwise convs and the
  pointwise ones as XLA's convolutions and dots): XLA:TPU moved the early blocks' activations
  between layouts around each grouped convolution, and the clotho_late step on v5p at 32 pairs
  per chip went from 87.3 to 73.1 ms in its cost model (``docs/tpu_efficiency.md``); "native" on
  GPU (``lax.conv_general_dilated`` and plain dots for cuDNN; not measured on a GPU). The
  per-example loops would serialise the batch on any accelerator.
* ``dtype("auto")``: float32 on CPU (XLA:CPU bf16 convolutions are slow), bfloat16 on GPU/TPU.
* ``init_rng_impl``: "rbg" on CPU (threefry compiles one large kernel per parameter on XLA:CPU:
  minutes for the whole model), "threefry2x32" on accelerators (the same initial values on every
  accelerator and sharding).
* ``replica_parallel_save``: Orbax's default on accelerators; off on CPU, where the "devices" share
  one host memory and the per-replica slicing only costs compilations (``checkpointing``).
* ``stft``: "matmul" on TPU (the mel front end's STFT as one float32 DFT matmul at HIGHEST
  precision: XLA:TPU lowers an FFT to staged small DFTs that move the frames through HBM several
  times; clotho_late on v5p at 32 pairs per chip, TPU cost model: 91.5 -> 87.3 ms per step),
  "fft" on CPU and GPU (XLA:CPU's FFT, cuFFT): the dense DFT does about 30 times the FFT's
  arithmetic, which only pays where the FFT's memory passes cost more (not measured on GPU).
* ``eval_chunk("auto")``: 1 on CPU (one example at a time keeps the CNN's activations in cache),
  0 (the whole batch) on accelerators.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import jax
import jax.numpy as jnp

PLATFORMS = ("cpu", "gpu", "tpu")
KERNELS = ("shifted", "native", "fused")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Device.platform spellings of the GPU plugins.
_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


@dataclasses.dataclass(frozen=True)
class Policy:
    """The choices for one target platform ("cpu", "gpu" or "tpu")."""

    platform: str

    def __post_init__(self):
        if self.platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {PLATFORMS}, got {self.platform!r}")

    @property
    def accelerator(self) -> bool:
        return self.platform != "cpu"

    def kernels(self, choice: str = "auto") -> str:
        """CNN kernels: "auto" -> "shifted" on CPU, "fused" on TPU, "native" on GPU; or the given one."""
        if choice == "auto":
            return {"cpu": "shifted", "tpu": "fused"}.get(self.platform, "native")
        if choice not in KERNELS:
            raise ValueError(f"depthwise must be 'auto' or one of {KERNELS}, got {choice!r}")
        return choice

    def dtype(self, name: str = "auto"):
        """Compute dtype: "auto" -> bfloat16 on accelerators, float32 on CPU; or the named one."""
        if name == "auto":
            return jnp.bfloat16 if self.accelerator else jnp.float32
        if name not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {name!r}")
        return DTYPES[name]

    @property
    def init_rng_impl(self) -> str:
        """PRNG implementation of the parameter initialisers."""
        return "threefry2x32" if self.accelerator else "rbg"

    @property
    def stft(self) -> str:
        """STFT of the mel front end (``frontend.STFT_IMPLS``)."""
        return "matmul" if self.platform == "tpu" else "fft"

    @property
    def replica_parallel_save(self) -> bool:
        """Whether Orbax splits each replicated array's save over its replicas."""
        return self.accelerator

    def eval_chunk(self, choice: int | str = "auto") -> int:
        """Examples per CNN pass in eval: "auto" -> 1 on CPU, 0 (whole batch) on accelerators."""
        if choice == "auto":
            return 0 if self.accelerator else 1
        return int(choice)


def platform_of(devices: Iterable) -> str:
    """The one platform of ``devices`` (compile-only TPU devices included); mixed is an error."""
    platforms = {_ALIASES.get(d.platform, d.platform) for d in devices}
    if len(platforms) != 1:
        raise ValueError(f"devices of one platform expected, got {sorted(platforms) or 'none'}")
    return platforms.pop()


def of_devices(devices: Iterable) -> Policy:
    """The policy for programs compiled for ``devices``."""
    return Policy(platform_of(devices))


def of_mesh(mesh: jax.sharding.Mesh) -> Policy:
    """The policy for programs compiled for ``mesh`` (its devices may be compile-only ones)."""
    return of_devices(mesh.devices.flat)


def local() -> Policy:
    """The policy for code given no mesh: arrays go to this process's devices."""
    return of_devices(jax.local_devices())
