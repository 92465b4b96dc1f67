"""Compile-only NVIDIA GPU devices: XLA:GPU's deviceless compilation, on a host with no GPU.

JAX's CUDA plugin (``requirements-gpu-plan.txt``: the plugin and its PJRT library, no CUDA
toolkit, driver or GPU) compiles for a *target config*, XLA's description of one GPU model
(``GpuTargetConfigProto`` text: SM count, shared memory, compute capability, clock and matrix-unit
rates, memory size, library versions). The plugin carries XLA's own configs of the GPUs it knows
(``xla/backends/gpu/target_config/specs``) inside its library; this module reads the one of the
requested model from there, so the config always has the schema of the compiler that parses it
(a copy kept in this project would go stale with the next plugin). ``devices`` then asks the
plugin for a topology of that GPU: ``jax.jit(...).lower(...).compile()`` on a mesh of those
devices is the program a host with those GPUs would compile (cuDNN convolutions, bf16), and its
``memory_analysis()`` is the per-GPU memory. XLA:GPU has no cost model to report step time: only
the memory and the program are planned here.
"""
from __future__ import annotations

import functools
import importlib.util
import mmap
import os
import pathlib
import re

# The plugin packages, newest CUDA first (JAX ships one per CUDA major version).
PLUGINS = ("jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12")
INSTALL = "pip install -r requirements-gpu-plan.txt"
# What a JAX process may allocate of a GPU's memory: XLA's allocator takes this fraction of it
# (JAX's default 0.75, or XLA_PYTHON_CLIENT_MEM_FRACTION); a plan must fit in that, not the rest.
DEFAULT_MEM_FRACTION = 0.75


def plugin_library() -> pathlib.Path:
    """The installed CUDA plugin's shared library, or a RuntimeError saying how to install it."""
    for name in PLUGINS:
        spec = importlib.util.find_spec(name) if importlib.util.find_spec("jax_plugins") else None
        if spec and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                found = sorted(pathlib.Path(folder).glob("xla_cuda_plugin*.so"))
                if found:
                    return found[0]
    raise RuntimeError(f"compiling for a GPU target needs JAX's CUDA plugin ({' or '.join(PLUGINS)}), "
                       f"which is not installed: {INSTALL}")


@functools.lru_cache(maxsize=None)
def target_config(device_name: str) -> str:
    """The plugin's target config (proto text) of the GPU model named ``device_name`` (as in its
    ``device_description_str``, e.g. "NVIDIA H100 80GB HBM3")."""
    library = plugin_library()
    key = f'device_description_str: "{device_name}"\n'.encode()
    with open(library, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        end = data.find(key)
        if end < 0:
            known = sorted({m.group(1).decode() for m in
                            re.finditer(rb'device_description_str: "([^"\n]+)"\n', data)})
            raise ValueError(f"{library}: no target config for GPU {device_name!r}; "
                             f"this plugin knows {known}")
        # Each embedded config is one NUL-terminated string.
        start = data.rfind(b"\x00", 0, end) + 1
        text = data[start:end + len(key)].decode()
    if "gpu_device_info {" not in text:
        raise ValueError(f"{library}: the text around {device_name!r} is not a GPU target config")
    return text


def memory_bytes(config_text: str) -> int:
    """The GPU's memory in a target config (``device_memory_size``)."""
    match = re.search(r"device_memory_size: (\d+)", config_text)
    if not match:
        raise ValueError("target config without device_memory_size")
    return int(match.group(1))


def usable_memory_bytes(config_text: str) -> int:
    """What a JAX process on that GPU may allocate: its memory times XLA's allocator fraction."""
    fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", DEFAULT_MEM_FRACTION))
    return int(memory_bytes(config_text) * fraction)


def devices(device_name: str, hosts: int, per_host: int) -> list:
    """Compile-only devices of ``hosts`` x ``per_host`` GPUs of one model."""
    from jax.experimental import topologies

    # XLA's spec is partitions x hosts per partition x GPUs per host, a partition being one
    # NVLink domain: on H100/H200 (HGX) servers, one host's GPUs.
    topology = topologies.get_topology_desc(
        platform="cuda", topology_name="", target_config=target_config(device_name),
        topology=f"{hosts}x1x{per_host}")
    return list(topology.devices)
