"""Accelerator chips a run can be planned for: TPU topologies as compile-only devices, chip specs.

``topology_devices("v5p:4x4x4")`` returns the 64 devices of that slice as compile-only devices
(libtpu's ahead-of-time compiler; no TPU needed): a mesh of them compiles the program a TPU host
of that slice would run. Names are ``<generation>:<chips per axis>`` with the generation one of
``CHIPS`` (v4 and v5p slices are 3-D, v5e and v6e 2-D), as in Cloud TPU's topology names.

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


CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, 275.0, 1228.0, dims=3, megacore=True),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GIB, 197.0, 819.0, dims=2),
    "v5p": Chip("v5p", "TPU v5", 95 * GIB, 459.0, 2765.0, dims=3, megacore=True),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GIB, 918.0, 1640.0, dims=2),
    "h100": Chip("h100", "NVIDIA H100 80GB HBM3", 80 * GIB, 989.0, 3350.0),
    "h200": Chip("h200", "NVIDIA H200", 141 * GIB, 989.0, 4800.0),
}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+)*)$")


def parse_topology(name: str) -> tuple[Chip, tuple[int, ...]]:
    """"v5p:4x4x4" -> (the v5p chip, (4, 4, 4)); names the accepted forms on bad input."""
    match = _TOPOLOGY.match(name.strip())
    if not match:
        raise ValueError(f"topology {name!r}: expected <chip>:<AxB[xC]> with chip one of "
                         f"{[c for c, s in CHIPS.items() if s.dims]}, e.g. v5e:2x2, v5p:4x4x4")
    chip = CHIPS[match.group(1)]
    shape = tuple(int(x) for x in match.group(2).split("x"))
    if len(shape) != chip.dims or min(shape) < 1:
        raise ValueError(f"topology {name!r}: {chip.name} slices have {chip.dims} positive axes")
    return chip, shape


def topology_devices(name: str) -> list:
    """The compile-only devices of a TPU slice (needs libtpu: ``requirements-tpu.txt``)."""
    chip, shape = parse_topology(name)
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
        if chip.device_kind == device_kind:
            return chip
    return None
