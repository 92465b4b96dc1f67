"""Orbax checkpoints of the training state: the latest and the best (by validation mAP@10).

The one Orbax touch-point of the project. Each checkpoint holds the sharded train state (``state``:
params, batch stats, optimizer state, step, RNG) and a JSON ``meta`` item (epoch, data-iterator
state, best metric), so a restart with the same workdir resumes exactly. Saving is asynchronous;
Orbax writes into a temporary directory and renames it, so an interrupted save never looks complete.
"""
from __future__ import annotations

import contextlib
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from hybrid_jax.backend import policy as backend_policy


def _save_whole_replicas_on_cpu(policy: backend_policy.Policy) -> None:
    """On CPU (``policy.replica_parallel_save`` false), save each array from one replica instead
    of splitting it across replicas.

    Orbax's default (replica-parallel saving everywhere but GPU) slices every replicated array
    into one piece per device before the host copy: on 8 CPU "devices", which share one host
    memory, that is thousands of eager slices and hundreds of small compilations per save (about
    24 s per save of the tiny test model) for no parallelism at all. Registered once per process
    (Orbax warns at every override).
    """
    global _REGISTERED
    if not policy.replica_parallel_save and not _REGISTERED:
        _REGISTERED = True
        with _absl_level(absl_logging.ERROR):
            ocp.type_handlers.register_type_handler(
                jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


_REGISTERED = False


@contextlib.contextmanager
def _absl_level(level: int):
    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(level)
    try:
        yield
    finally:
        absl_logging.set_verbosity(before)


class Checkpoints:
    """Two managers under ``workdir/checkpoints``: ``latest`` and ``best``.

    ``policy``: the backend policy of the devices holding the state (``policy.of_mesh``);
    default: this process's devices."""

    def __init__(self, workdir: str | pathlib.Path, keep_latest: int = 1,
                 policy: backend_policy.Policy | None = None):
        _save_whole_replicas_on_cpu(policy or backend_policy.local())
        root = pathlib.Path(workdir).absolute() / "checkpoints"
        options = lambda keep: ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)  # noqa: E731
        self.latest = ocp.CheckpointManager(root / "latest", options=options(keep_latest), item_names=("state", "meta"))
        self.best = ocp.CheckpointManager(root / "best", options=options(1), item_names=("state", "meta"))

    @staticmethod
    def _save(manager, step: int, state: Any, meta: dict) -> None:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def save_latest(self, step: int, state: Any, meta: dict) -> None:
        if step not in self.latest.all_steps():
            self._save(self.latest, step, state, meta)

    def save_best(self, step: int, state: Any, meta: dict) -> None:
        self._save(self.best, step, state, meta)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, which: str, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores ``which`` ("latest" or "best") onto the shardings of ``abstract_state``
        (a tree of ``jax.ShapeDtypeStruct`` with shardings). Returns (state, meta)."""
        manager = self.latest if which == "latest" else self.best
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no {which} checkpoint under {manager.directory}")
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        )
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def restore_from_path(path: str | pathlib.Path, abstract_state: Any) -> tuple[Any, dict]:
    """Restores a single checkpoint step directory (``.../latest/<step>``) given explicitly."""
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint directory not found")
    with ocp.CheckpointManager(path.parent, item_names=("state", "meta")) as manager:
        restored = manager.restore(
            int(path.name),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
    return restored["state"], restored["meta"]


def restore_variables(workdir: str | pathlib.Path, which: str, abstract_variables: Any) -> tuple[Any, dict]:
    """Restores only ``params`` and ``batch_stats`` of a checkpoint (no optimizer state is read)
    onto ``abstract_variables`` ({"params": ..., "batch_stats": ...} of ShapeDtypeStructs).

    ``which``: "best", "latest", or a checkpoint step directory (``.../latest/<step>``).
    Returns (variables, meta) with meta's ``step``."""
    # The handler reads too: the same one as the saves, for the devices the arrays go to.
    shardings = [x.sharding for x in jax.tree.leaves(abstract_variables) if getattr(x, "sharding", None)]
    devices = {d for s in shardings for d in s.device_set} or set(jax.local_devices())
    _save_whole_replicas_on_cpu(backend_policy.of_devices(devices))
    if which in ("best", "latest"):
        root = pathlib.Path(workdir).absolute() / "checkpoints" / which
        manager = ocp.CheckpointManager(root, item_names=("state", "meta"))
        step = manager.latest_step()
        if step is None:
            manager.close()
            raise FileNotFoundError(f"no {which} checkpoint under {root}")
    else:
        path = pathlib.Path(which).absolute()
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: checkpoint directory not found")
        manager, step = ocp.CheckpointManager(path.parent, item_names=("state", "meta")), int(path.name)
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_variables)
    with manager:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(abstract_variables, restore_args=restore_args, partial_restore=True),
            meta=ocp.args.JsonRestore()))
    return restored["state"], {**restored["meta"], "step": step}
