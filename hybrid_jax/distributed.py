"""Multi-host start-up: ``jax.distributed.initialize`` from flags, the environment or the cluster.

Call :func:`initialize` once, first thing in ``main`` (before any JAX computation). It resolves
the three distributed parameters from, in order,

1. the arguments (``--coordinator_address --num_processes --process_id`` in ``hybrid_jax.train``),
2. ``HYBRID_JAX_COORDINATOR``, ``HYBRID_JAX_NUM_PROCESSES``, ``HYBRID_JAX_PROCESS_ID``,
3. JAX's own ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``,

and then

* a single process (nothing set, or ``num_processes == 1``) is a no-op;
* all three known: ``jax.distributed.initialize(address, n, i)``;
* otherwise, inside a multi-process job of a cluster JAX auto-detects (SLURM with more than one
  task, Open MPI ``mpirun``, multi-host Cloud TPU slices/pods, Kubernetes JobSets),
  ``jax.distributed.initialize`` with whatever is known and JAX fills in the rest;
* ``coordinator_address="auto"`` forces JAX's own detection where no environment variable tells
  (e.g. a GCE TPU pod, detected through the metadata server).

Afterwards every process sees all devices (``jax.devices()``), feeds its own rows of each global
batch (``TrainLoader`` uses ``jax.process_index()``) and Orbax writes/reads one checkpoint
together.
"""
from __future__ import annotations

import dataclasses
import os

import jax
from absl import logging

AUTO = "auto"
_ENV = {  # ours first: JAX only reads JAX_COORDINATOR_ADDRESS itself
    "coordinator_address": ("HYBRID_JAX_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("HYBRID_JAX_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("HYBRID_JAX_PROCESS_ID", "JAX_PROCESS_ID"),
}


@dataclasses.dataclass(frozen=True)
class Setup:
    """What :func:`initialize` decided: ``mode`` is "single", "explicit" or the detected cluster."""

    mode: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _env(name: str) -> str | None:
    for var in _ENV[name]:
        if os.environ.get(var):
            return os.environ[var]
    return None


def detect_cluster(environ=None) -> str | None:
    """The multi-process job JAX can configure itself in, from environment variables only (no
    network probe), or None. A one-task SLURM/MPI job or a single-host TPU VM is not one."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" in env and _count_in(env, "SLURM_NTASKS") > 1:
        return "slurm"
    if _count_in(env, "OMPI_COMM_WORLD_SIZE") > 1:  # mpirun (Open MPI 5 also needs mpi4py)
        return "ompi"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"  # multislice
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if "," in hosts or env.get("TPU_PROCESS_ADDRESSES_PATH"):
        return "tpu"
    if "KUBERNETES_SERVICE_HOST" in env and env.get("JOBSET_NAME"):
        return "k8s"
    return None


def _count_in(env, var: str) -> int:
    try:
        return int(env.get(var, "1").split("(")[0])  # SLURM_NTASKS may read "4(x2)"
    except ValueError:
        return 1


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> Setup:
    """Decides what :func:`initialize` will do (pure apart from reading the environment)."""
    address = coordinator_address or _env("coordinator_address")
    count = num_processes if num_processes is not None else _env("num_processes")
    index = process_id if process_id is not None else _env("process_id")
    count = None if count is None else int(count)
    index = None if index is None else int(index)
    if count is not None and count < 1:
        raise ValueError(f"num_processes must be >= 1, got {count}")
    if count == 1:
        return Setup("single", None, 1, 0)
    if count is not None and index is not None and not 0 <= index < count:
        raise ValueError(f"process_id {index} is not in [0, {count})")
    if address == AUTO:
        return Setup("auto", None, count, index)
    if address is not None and count is not None and index is not None:
        return Setup("explicit", address, count, index)
    cluster = detect_cluster()
    if cluster is not None:
        return Setup(cluster, address, count, index)
    if address is not None or count is not None or index is not None:
        raise ValueError(
            "multi-process training needs the coordinator address, the process count and this "
            f"process's id (got {address!r}, {count!r}, {index!r}) outside a cluster JAX detects; "
            "pass --coordinator_address/--num_processes/--process_id or set HYBRID_JAX_COORDINATOR/"
            "_NUM_PROCESSES/_PROCESS_ID"
        )
    return Setup("single")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> Setup:
    """Joins the distributed system (see the module docstring); returns what was decided."""
    setup = resolve(coordinator_address, num_processes, process_id)
    if setup.mode == "single":
        return setup
    if jax.distributed.is_initialized():  # e.g. a launcher already did it
        logging.info("jax.distributed already initialised; process %d of %d",
                     jax.process_index(), jax.process_count())
        return setup
    jax.distributed.initialize(setup.coordinator_address, setup.num_processes, setup.process_id)
    logging.info("jax.distributed (%s): process %d of %d, %d local / %d global devices", setup.mode,
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return setup
