"""Accelerator chips a run can be planned for: TPU and GPU topologies as compile-only devices, chip specs.

``topology_devices("v5p:4x4x4")`` returns the 64 devices of that slice as compile-only devices
(libtpu's ahead-of-time compiler; no TPU needed): a mesh of them compiles the program a TPU host
of that slice would run. TPU names are ``<generation>:<chips per axis>`` with the generation one
of ``CHIPS`` (v4 and v5p slices are 3-D, v5e and v6e 2-D), as in Cloud TPU's topology names.
GPU names are ``<gpu>:<GPUs>`` (one host) or ``<gpu>:<hosts>x<GPUs per host>``, e.g. ``h100:8``,
``h200:2x8``: XLA:GPU's deviceless compilation (``gpu_target``; JAX's CUDA plugin, no GPU).

The spec table holds what the compiler does not report: HBM per chip and the dense bf16 peak, from
Google's published chip specifications (cloud.google.com/tpu/docs/system-architecture-tpu-vm, the
v4/v5e/v5p/v6e pages); the H100/H200 entries are NVIDIA's SXM data-sheet figures.
"""
from __future__ import annotations

import dataclasses
import os
import re

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip: what bounds a step's memory and its FLOP rate."""

    name: str
    device_kind: str  # jax Device.device_kind
    hbm_bytes: int
    peak_bf16_tflops: float  # dense
    hbm_gbps: float  # HBM bandwidth, GB/s
    dims: int = 0  # topology dimensions (TPU); 0 for GPUs
    megacore: bool = False  # two TensorCores presented as one device
    target_name: str = ""  # GPUs: the model's name in XLA's GPU target configs (``gpu_target``)


CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, 275.0, 1228.0, dims=3, megacore=True),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GIB, 197.0, 819.0, dims=2),
    "v5p": Chip("v5p", "TPU v5", 95 * GIB, 459.0, 2765.0, dims=3, megacore=True),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GIB, 918.0, 1640.0, dims=2),
    "h100": Chip("h100", "NVIDIA H100 80GB HBM3", 80 * GIB, 989.0, 3350.0,
                 target_name="NVIDIA H100 80GB HBM3"),
    "h200": Chip("h200", "NVIDIA H200", 141 * GIB, 989.0, 4800.0,
                 target_name="NVIDIA H200 141GB HBM3e"),
}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+)*)$")
_GPU_TOPOLOGY = re.compile(r"^(h100|h200):(?:(\d+)x)?(\d+)$")


def parse_topology(name: str) -> tuple[Chip, tuple[int, ...]]:
    """"v5p:4x4x4" -> (the v5p chip, (4, 4, 4)); "h100:2x8" -> (the h100 chip, (2 hosts, 8 GPUs
    each)), "h100:8" -> (h100, (1, 8)); names the accepted forms on bad input."""
    gpu = _GPU_TOPOLOGY.match(name.strip())
    if gpu:
        shape = (int(gpu.group(2) or 1), int(gpu.group(3)))
        if min(shape) < 1:
            raise ValueError(f"topology {name!r}: host and GPU counts must be positive")
        return CHIPS[gpu.group(1)], shape
    match = _TOPOLOGY.match(name.strip())
    if not match:
        raise ValueError(f"topology {name!r}: expected <chip>:<AxB[xC]> with chip one of "
                         f"{[c for c, s in CHIPS.items() if s.dims]}, e.g. v5e:2x2, v5p:4x4x4, or "
                         f"<gpu>:[<hosts>x]<GPUs per host> with gpu one of "
                         f"{[c for c, s in CHIPS.items() if not s.dims]}, e.g. h100:8, h200:2x8")
    chip = CHIPS[match.group(1)]
    shape = tuple(int(x) for x in match.group(2).split("x"))
    if len(shape) != chip.dims or min(shape) < 1:
        raise ValueError(f"topology {name!r}: {chip.name} slices have {chip.dims} positive axes")
    return chip, shape


def planning_chip(name: str) -> Chip:
    """The chip of a topology name as a plan must count it: for GPUs, with the memory a JAX
    process may allocate there (the target config's memory times XLA's allocator fraction, see
    ``gpu_target``), not the data sheet's."""
    chip, _ = parse_topology(name)
    if chip.dims:
        return chip
    from hybrid_jax.backend import gpu_target

    return dataclasses.replace(
        chip, hbm_bytes=gpu_target.usable_memory_bytes(gpu_target.target_config(chip.target_name)))


def topology_devices(name: str) -> list:
    """The compile-only devices of a TPU slice (needs libtpu: ``requirements-tpu.txt``) or of GPU
    hosts (needs JAX's CUDA plugin: ``requirements-gpu-plan.txt``)."""
    chip, shape = parse_topology(name)
    if not chip.dims:
        from hybrid_jax.backend import gpu_target

        return gpu_target.devices(chip.target_name, *shape)
    try:
        import libtpu  # noqa: F401  (the ahead-of-time TPU compiler)
    except ImportError as error:
        raise RuntimeError("compiling for a TPU topology needs libtpu: "
                           "pip install -r requirements-tpu.txt") from error
    from jax.experimental import topologies

    # No metadata server to ask: this host is not a TPU VM. Compiling drives no chip, so the
    # lock libtpu takes against a second process on the same chips is not needed (any other JAX
    # process on this host that probed for TPUs would hold it).
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # Hosts of 2x2 chips, as on every multi-host slice of these generations; megacore chips
    # (v4, v5p) are one device per chip, as JAX presents them on a TPU VM.
    per_host = tuple(min(2, s) for s in shape[:2]) + (1,)
    kwargs = dict(chip_config_name="megacore" if chip.megacore else "default",
                  chips_per_host_bounds=per_host, num_slices=1)
    topology = topologies.get_topology_desc(f"{chip.name}:{'x'.join(map(str, shape))}",
                                            platform="tpu", **kwargs)
    return list(topology.devices)


def chip_of(device_kind: str) -> Chip | None:
    """The spec of a device kind (``Device.device_kind``), or None if unknown."""
    for chip in CHIPS.values():
        if device_kind in (chip.device_kind, chip.target_name):
            return chip
    return None
