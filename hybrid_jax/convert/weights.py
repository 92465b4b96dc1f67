"""Converted-weight directories: Flax variables as one safetensors file plus a JSON of settings.

A converted model directory (written by ``tools/convert_*.py``) holds

* ``variables.safetensors``: every leaf of the Flax variable tree (``params``, ``batch_stats``),
  keyed by its path joined with ``/`` (e.g. ``params/features_0/conv/kernel``), float32;
* ``config.json``: the settings needed to rebuild the module (width, classes, front end, ...).

safetensors is chosen over a pickle or an Orbax tree because any framework can read it without
executing code, and it is a single file that is easy to checksum and ship.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import load_file, save_file

VARIABLES_FILE = "variables.safetensors"
CONFIG_FILE = "config.json"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays -> {"a/b/c": array}."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        else:
            flat[path] = np.asarray(value)
    return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """{"a/b/c": array} -> nested dict of arrays (inverse of ``flatten``)."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def save_variables(directory: str | pathlib.Path, variables: Mapping[str, Any]) -> pathlib.Path:
    """Writes ``variables`` (host or device arrays) as ``directory/variables.safetensors``, float32."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # np.array, not np.ascontiguousarray: that one turns a 0-d scalar (log temperature) into [1].
    flat = {k: np.array(v, np.float32, order="C") for k, v in flatten(variables).items()}
    save_file(flat, str(directory / VARIABLES_FILE))
    return directory / VARIABLES_FILE


def load_variables(directory: str | pathlib.Path) -> dict[str, Any]:
    """Reads ``directory/variables.safetensors`` back into a nested dict; names a missing file."""
    path = pathlib.Path(directory) / VARIABLES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    return unflatten(load_file(str(path)))


def save(directory: str | pathlib.Path, variables: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Writes ``variables`` and ``config`` into ``directory`` (created if needed)."""
    directory = pathlib.Path(directory)
    save_variables(directory, variables)
    (directory / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")


def load(directory: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a converted directory; returns (variables, config). Names the missing file on error."""
    directory = pathlib.Path(directory)
    for name in (VARIABLES_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name}: not found; expected a directory written by tools/convert_*.py"
            )
    variables = unflatten(load_file(str(directory / VARIABLES_FILE)))
    config = json.loads((directory / CONFIG_FILE).read_text())
    return variables, config
