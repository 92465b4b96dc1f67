"""Test-only writer of ``torch.save`` files (zip and legacy formats) from NumPy arrays, without torch.

The pickle is produced by a pure-Python ``pickle._Pickler`` that writes what torch writes: each
tensor as ``REDUCE(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False,
OrderedDict()))`` and each storage as a persistent id ``("storage", torch.<Type>Storage, key,
"cpu", numel)`` (plus ``view_metadata=None`` in the legacy format). ``Global`` and ``Call`` can
also express what a malicious file would hold, e.g. ``Call(Global("os", "system"), ("...",))``.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


class Global:
    """``module.name`` written as a GLOBAL opcode, whether or not that module exists here."""

    _interned: dict[tuple[str, str], "Global"] = {}

    def __new__(cls, module: str, name: str):
        # One object per name, so the pickle memo reuses it as torch's pickler does for classes.
        key = (module, name)
        if key not in cls._interned:
            cls._interned[key] = super().__new__(cls)
            cls._interned[key].module, cls._interned[key].name = module, name
        return cls._interned[key]

    def __call__(self, *args):  # pickle requires reduce functions to be callable
        raise TypeError(f"{self.module}.{self.name} is a pickling stand-in")


class Call:
    """Pickles as ``REDUCE(func, args)``."""

    def __init__(self, func: Global, args: tuple):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Storage:
    """A flat storage; tensors are views into it."""

    def __init__(self, array: np.ndarray):
        self.array = np.ascontiguousarray(array).reshape(-1)


class Tensor:
    """A tensor as torch pickles it: (offset, size, stride), in elements, into a ``Storage``."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce__(self):
        return Global("torch._utils", "_rebuild_tensor_v2"), (
            self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())


def tensor(array: np.ndarray) -> Tensor:
    """A contiguous tensor with its own storage."""
    array = np.asarray(array)
    strides = tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim))  # C order
    return Tensor(Storage(array), 0, array.shape, strides)


class _Pickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages: dict[str, Storage] = {}
        self._keys: dict[int, str] = {}

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        if id(obj) not in self._keys:
            self._keys[id(obj)] = str(len(self._keys))
            self.storages[self._keys[id(obj)]] = obj
        kind = Global("torch", STORAGE_NAMES[obj.array.dtype])
        pid = ("storage", kind, self._keys[id(obj)], "cpu", obj.array.size)
        return pid + (None,) if self.legacy else pid

    def _save_global_ref(self, obj: Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = _save_global_ref


def _as_tensors(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return tensor(obj)
    if isinstance(obj, dict):
        converted = type(obj)((k, _as_tensors(v)) for k, v in obj.items())
        if hasattr(obj, "__dict__"):
            converted.__dict__.update(obj.__dict__)  # e.g. a state dict's _metadata
        return converted
    if isinstance(obj, (list, tuple)):
        return type(obj)(_as_tensors(v) for v in obj)
    return obj


def pickle_bytes(obj: Any, legacy: bool = False) -> tuple[bytes, dict[str, Storage]]:
    """The pickle of ``obj`` (arrays become tensors) and the storages it references."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, legacy)
    pickler.dump(_as_tensors(obj))
    return buffer.getvalue(), pickler.storages


def save_zip(obj: Any, path, root: str = "archive") -> None:
    """torch >= 1.6 format: ``<root>/data.pkl`` plus one raw file per storage."""
    write_zip(*pickle_bytes(obj), path, root)


def write_zip(data: bytes, storages: dict[str, Storage], path, root: str = "archive") -> None:
    """A zip-format file around a given pickle (e.g. hand-assembled opcodes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{root}/data.pkl", data)
        archive.writestr(f"{root}/byteorder", "little")
        for key, storage in storages.items():
            archive.writestr(f"{root}/data/{key}", storage.array.tobytes())
        archive.writestr(f"{root}/version", "3\n")


def save_legacy(obj: Any, path) -> None:
    """Pre-1.6 format: magic, protocol, sys_info, pickle, storage keys, then the storages."""
    write_legacy(*pickle_bytes(obj, legacy=True), path)


def write_legacy(data: bytes, storages: dict[str, Storage], path, numel: dict[str, int] | None = None) -> None:
    """A legacy-format file around a given pickle; ``numel`` overrides declared storage sizes."""
    numel = numel or {}
    sys_info = {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as file:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, sys_info):
            pickle.dump(header, file, protocol=2)
        file.write(data)
        keys = sorted(storages)
        pickle.dump(keys, file, protocol=2)
        for key in keys:
            file.write(struct.pack("<q", numel.get(key, storages[key].array.size)))
            file.write(storages[key].array.tobytes())
