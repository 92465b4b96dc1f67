"""Reads PyTorch and safetensors state dicts into NumPy without torch and without running pickled code.

``read_state_dict(path) -> {name: np.ndarray}`` accepts

* ``.safetensors`` files;
* ``torch.save`` files (``.pt``, ``.pth``, ``.bin``, any suffix) in the zip format of torch >= 1.6
  (``<root>/data.pkl`` plus raw storages in ``<root>/data/<key>``) and in the legacy format that
  older checkpoints such as bert-base-uncased's ``pytorch_model.bin`` use (magic number, protocol,
  system info, the pickle, the storage keys, then each storage as an int64 element count and its
  raw bytes).

The pickle is read by an unpickler whose ``find_class`` knows only what a state dict needs (an
``OrderedDict``, the tensor and parameter rebuild functions, the storage types, and Sacred's read-only
config containers, which Lightning checkpoints of Sacred experiments hold in their hyper-parameters)
and implements each itself as plain data, so no code from the file ever runs. Anything else raises
``UnsafeCheckpointError`` naming the file and the global; so does a pickle that tries to change an
allowed object (BUILD on it) or to call a storage type. Unreadable, truncated or inconsistent files
raise ``CheckpointError``, and so does a tensor that would hold more than its storage beyond
``MAX_VIEW_BYTES`` (a zero-stride view of a huge size would otherwise allocate without bound).
Arrays keep their stored dtype (float32, float16, ``ml_dtypes.bfloat16``, int64, ...); a checkpoint
that wraps the state dict under "state_dict" or "model" is unwrapped. ``read_checkpoint`` also
returns what sits beside the state dict (a Lightning checkpoint's ``hyper_parameters``, ``epoch``, ...).
"""
from __future__ import annotations

import codecs
import collections
import dataclasses
import io
import math
import pathlib
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
WRAPPER_KEYS = ("state_dict", "model")
# A tensor is a view of its storage; it may repeat storage elements (a saved ``expand()``, stride
# 0) only up to this size. State dicts hold none such; the bound stops a hostile size/stride pair
# from allocating terabytes.
MAX_VIEW_BYTES = 1 << 28

STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),
}


class CheckpointError(ValueError):
    """The file is not a readable state dict (corrupt, truncated, or holds something else)."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks for a global outside the allow-list (possibly code execution)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    """``torch.<Name>Storage`` as the pickle names it; only a persistent id may refer to it."""

    name: str
    dtype: np.dtype

    def __call__(self, *args, **kwargs):
        raise UnsafeCheckpointError(f"the pickle calls torch.{self.name}, which a state dict never does")

    def __setstate__(self, state):
        # BUILD would otherwise rewrite the shared allow-list entry for every later file.
        raise UnsafeCheckpointError(f"the pickle tries to modify torch.{self.name}")


class _Constructor:
    """An allow-listed callable: immutable, so a pickle's BUILD cannot rewrite it (e.g. its
    ``__defaults__``) for every later file read in this process."""

    __slots__ = ("qualname", "function")

    def __init__(self, qualname: str, function):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "function", function)

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __setattr__(self, name, value):
        raise UnsafeCheckpointError(f"the pickle tries to modify {self.qualname}")

    def __setstate__(self, state):
        raise UnsafeCheckpointError(f"the pickle tries to modify {self.qualname}")


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    offset: int = 0  # in elements; only legacy storage views have one


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _int_tuple(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int for v in value):
        raise CheckpointError(f"tensor {what} must be a tuple of ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _StorageRef) or type(storage_offset) is not int:
        raise CheckpointError(
            f"malformed tensor record (storage {storage!r}, offset {storage_offset!r})")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in rank")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    return data


def _latin1_encode(text, encoding="latin1"):
    # Protocol-2 pickles store bytes as _codecs.encode(str, "latin1"); nothing else is needed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"unexpected _codecs.encode({text!r}, {encoding!r})")
    return codecs.encode(text, "latin1")


def _plain_dict(items=()):
    return dict(items)


def _plain_list(items=()):
    return list(items)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,  # a C type: BUILD cannot change it
    **{(module, name): _Constructor(f"{module}.{name}", function) for module, name, function in (
        # sacred.config.custom_containers pickles as (ReadOnlyDict, (a dict copy,)): plain data.
        ("sacred.config.custom_containers", "ReadOnlyDict", _plain_dict),
        ("sacred.config.custom_containers", "ReadOnlyList", _plain_list),
        ("torch._utils", "_rebuild_tensor_v2", _rebuild_tensor_v2),
        ("torch._utils", "_rebuild_parameter", _rebuild_parameter),
        ("torch._utils", "_rebuild_parameter_with_state", _rebuild_parameter),
        ("_codecs", "encode", _latin1_encode),
    )},
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals, each to a local stand-in; storages become references."""

    def __init__(self, file, path: pathlib.Path):
        super().__init__(file)
        self.path = path
        self.storage_dtypes: dict[str, np.dtype] = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self.path}: refusing to unpickle global '{module}.{name}': a state dict needs "
                "only tensors, storages and OrderedDict, so this file may run code; not loaded"
            ) from None

    def persistent_load(self, pid):
        # zip: ("storage", type, key, location, numel); legacy adds view_metadata, which is None
        # or (view_key, offset, size) for a storage view of torch < 0.4.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and type(pid[1]) is _StorageType):
            raise CheckpointError(f"{self.path}: unexpected persistent id {pid!r}")
        key, offset = str(pid[2]), 0
        if len(pid) == 6 and pid[5] is not None:
            view = pid[5]
            if not (isinstance(view, tuple) and len(view) == 3 and type(view[1]) is int):
                raise CheckpointError(f"{self.path}: malformed storage view {view!r}")
            offset = view[1]
        self.storage_dtypes[key] = pid[1].dtype
        return _StorageRef(key, pid[1].dtype, offset)


def _tensor_to_array(tensor: _TensorRef, storage: np.ndarray, path, name) -> np.ndarray:
    dtype = tensor.storage.dtype
    if any(n < 0 for n in tensor.size):
        raise CheckpointError(f"{path}: tensor {name!r} has a negative size {tensor.size}; file corrupt?")
    if any(n == 0 for n in tensor.size):
        return np.zeros(tensor.size, dtype)
    numel = math.prod(tensor.size)
    if numel > storage.size and numel * dtype.itemsize > MAX_VIEW_BYTES:
        raise CheckpointError(
            f"{path}: tensor {name!r} (size {tensor.size}, stride {tensor.stride}) would hold "
            f"{numel:,} elements ({numel * dtype.itemsize / 2**30:,.1f} GiB) repeated from a storage "
            f"of {storage.size:,}; refusing to allocate it (file corrupt or hostile)"
        )
    offset = tensor.storage.offset + tensor.offset
    last = offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if offset < 0 or min(tensor.stride, default=0) < 0 or last >= storage.size:
        raise CheckpointError(
            f"{path}: tensor {name!r} (size {tensor.size}, stride {tensor.stride}, offset "
            f"{offset}) reaches past its storage of {storage.size} elements; file corrupt?"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], tensor.size, [s * dtype.itemsize for s in tensor.stride]
    )
    return np.array(view, order="C")  # a contiguous, writable copy


def _materialize(obj, storages: dict[str, np.ndarray], path, name=""):
    if isinstance(obj, _TensorRef):
        if obj.storage.key not in storages:
            raise CheckpointError(f"{path}: storage {obj.storage.key!r} of {name!r} is missing")
        return _tensor_to_array(obj, storages[obj.storage.key], path, name)
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v, storages, path, f"{name}.{k}".lstrip(".")))
                         for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, storages, path, name) for v in obj)
    return obj


def _read_zip(path: pathlib.Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = sorted((n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), key=len)
        if not pickles:
            raise CheckpointError(f"{path}: zip archive without data.pkl; not a torch.save file")
        root = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        big_endian = (root + "byteorder" in names
                      and archive.read(root + "byteorder").strip() == b"big")
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path)
        obj = unpickler.load()
        storages = {}
        for key, dtype in unpickler.storage_dtypes.items():
            member = f"{root}data/{key}"
            if member not in names:
                raise CheckpointError(f"{path}: storage {member} is missing from the archive")
            raw = archive.read(member)
            stored = dtype.newbyteorder(">") if big_endian else dtype
            array = np.frombuffer(raw, stored, len(raw) // dtype.itemsize)
            storages[key] = array.astype(dtype, copy=False)
    return _materialize(obj, storages, path)


def _read_legacy(path: pathlib.Path) -> Any:
    size = path.stat().st_size
    with open(path, "rb") as file:
        def load(unpickler=None):
            return (unpickler or _RestrictedUnpickler(file, path)).load()

        if load() != LEGACY_MAGIC:
            raise CheckpointError(
                f"{path}: neither safetensors, a torch zip archive nor a legacy torch file")
        if load() != LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported legacy torch protocol version")
        sys_info = load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointError(f"{path}: big-endian legacy torch files are not supported")
        unpickler = _RestrictedUnpickler(file, path)
        obj = load(unpickler)
        keys = load()
        dtypes = unpickler.storage_dtypes
        storages = {}
        for key in keys:
            count = file.read(8)
            if len(count) != 8:
                raise CheckpointError(f"{path}: truncated: storage {key!r} is missing")
            numel = int.from_bytes(count, "little")
            if str(key) not in dtypes:
                raise CheckpointError(f"{path}: storage {key!r} is listed but never referenced")
            dtype = dtypes[str(key)]
            if numel * dtype.itemsize > size - file.tell():  # before reading: no huge allocation
                raise CheckpointError(f"{path}: truncated: storage {key!r} declares {numel:,} elements, "
                                      f"the file has {size - file.tell():,} bytes left")
            raw = file.read(numel * dtype.itemsize)
            if len(raw) != numel * dtype.itemsize:
                raise CheckpointError(f"{path}: truncated: storage {key!r} has {len(raw)} of "
                                      f"{numel * dtype.itemsize} bytes")
            storages[str(key)] = np.frombuffer(raw, dtype)
    return _materialize(obj, storages, path)


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _select_state_dict(obj: Any, path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """-> (the state dict, the other top-level entries of a wrapping dict)."""
    def is_state_dict(value):
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items())

    if is_state_dict(obj):
        return dict(obj), {}
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if is_state_dict(obj.get(key)):
                return dict(obj[key]), {k: v for k, v in obj.items() if k != key}
        raise CheckpointError(f"{path}: a dict with keys {sorted(map(str, obj))[:10]} is not a "
                              f"state dict and holds none under {WRAPPER_KEYS}")
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def read_checkpoint(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads ``path`` (.safetensors or a torch.save file) -> ({name: np.ndarray} in file order,
    the entries beside the state dict, e.g. a Lightning checkpoint's "hyper_parameters")."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as file:
            head = file.read(9)
        # safetensors: an 8-byte header length, then the JSON header.
        if path.suffix == ".safetensors" or head[8:] == b"{":
            return _read_safetensors(path), {}
        if head.startswith(b"PK"):
            return _select_state_dict(_read_zip(path), path)
        return _select_state_dict(_read_legacy(path), path)
    except CheckpointError as error:
        if str(path) in str(error):
            raise
        raise type(error)(f"{path}: {error}") from error  # raised where the path is not known
    except (FileNotFoundError, IsADirectoryError):
        raise
    except Exception as error:  # zipfile, pickle and safetensors each raise their own types
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({type(error).__name__}: "
                              f"{error})") from error


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads ``path`` (.safetensors or a torch.save file) -> {name: np.ndarray} in file order."""
    return read_checkpoint(path)[0]
