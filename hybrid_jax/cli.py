"""What the commands share: their common flags, and logs that go to a file instead of the terminal.

Flags are defined only by the module a command runs (inside its ``if __name__ == "__main__"``), by
calling these functions; library modules never define flags, so any module can import any other.
"""
from __future__ import annotations

import logging
import os
import pathlib

from absl import flags
from absl import logging as absl_logging

VERBOSE_ENV = "HYBRID_JAX_VERBOSE"  # "1": library INFO logs on the terminal too


def define_config_flag(help_text: str = "Experiment config file (configs/*.py).") -> None:
    """``--config FILE`` plus ``--config.a.b=value`` overrides (ml_collections), required."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)


def load_config_file(path: str | pathlib.Path):
    """``get_config()`` of an experiment config file, for tools that take no ``--config`` flag.

    The configs import their shared defaults as ``configs.base``, so the folder above the file's
    is put on ``sys.path`` (a checkout's root, whatever the working directory)."""
    import importlib.util
    import sys

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    root = str(path.resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def define_multihost_flags() -> None:
    """Flags of ``hybrid_jax.distributed.initialize`` (environment and cluster detection otherwise)."""
    flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 ('auto': JAX detects).")
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (default: env / cluster).")
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's index (default: env / cluster).")


def initialize_distributed() -> None:
    """``jax.distributed.initialize`` from the multi-host flags; first, before any JAX computation."""
    from hybrid_jax import distributed

    f = flags.FLAGS
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)


def verbose() -> bool:
    """Library INFO logs on the terminal: ``--verbosity`` given explicitly, or HYBRID_JAX_VERBOSE=1."""
    explicit = "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
    return bool(explicit or os.environ.get(VERBOSE_ENV, "") not in ("", "0"))


def quiet_terminal() -> None:
    """Library INFO logs (Orbax, TFDS, JAX, ours) leave the terminal, which keeps warnings, errors,
    progress bars and results; ``log_to_file`` keeps them. Call first in ``main``."""
    logging.getLogger().setLevel(logging.INFO)
    if not verbose():
        absl_logging.get_absl_handler().setLevel(logging.WARNING)


def log_to_file(path: str | pathlib.Path) -> pathlib.Path:
    """Appends every INFO (and louder) log record of this process to ``path``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return path
