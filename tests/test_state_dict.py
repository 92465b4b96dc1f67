"""Torch-free reading of torch.save files (zip and legacy) and safetensors, including hostile input."""
import collections
import pickle
import re
import zipfile

import ml_dtypes
import numpy as np
import pt_writer as torch_format  # tests/pt_writer.py: torch.save-format writer without torch
import pytest

from hybrid_jax.convert.state_dict import (
    CheckpointError,
    UnsafeCheckpointError,
    read_checkpoint,
    read_state_dict,
)


@pytest.fixture(scope="module")
def fixture_state_dicts(fixtures_dir):
    folder = fixtures_dir / "efficientat_mn04"
    return read_state_dict(folder / "state_dict.pt"), read_state_dict(folder / "state_dict.safetensors")


def test_real_torch_file_matches_safetensors(fixture_state_dicts):
    from_pt, from_safetensors = fixture_state_dicts
    assert list(from_pt) == list(from_safetensors) and len(from_pt) == 312
    for key, value in from_safetensors.items():
        assert from_pt[key].dtype == value.dtype and from_pt[key].shape == value.shape, key
        np.testing.assert_array_equal(from_pt[key], value, err_msg=key)
    assert from_pt["features.0.1.num_batches_tracked"].shape == ()
    assert from_pt["features.0.1.num_batches_tracked"].dtype == np.int64


def test_writer_reproduces_torchs_pickle_byte_for_byte(fixtures_dir, fixture_state_dicts):
    # The writer must be exactly torch's format for the round-trip tests below to mean anything.
    real = zipfile.ZipFile(fixtures_dir / "efficientat_mn04" / "state_dict.pt").read("state_dict/data.pkl")
    written, storages = torch_format.pickle_bytes(collections.OrderedDict(fixture_state_dicts[1]))
    assert written == real
    assert len(storages) == 312


def _sample_state_dict():
    rng = np.random.default_rng(0)
    return collections.OrderedDict(
        conv=rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        half=rng.normal(size=(5,)).astype(np.float16),
        bf16=rng.normal(size=(2, 3)).astype(ml_dtypes.bfloat16),
        double=rng.normal(size=(3,)),
        count=np.array(7, np.int64),
        ids=np.arange(6, dtype=np.int32).reshape(2, 3),
        mask=np.array([True, False, True]),
        empty=np.zeros((0, 4), np.float32),
    )


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_round_trip_dtypes(tmp_path, layout):
    expected = _sample_state_dict()
    path = tmp_path / "model.bin"
    (torch_format.save_zip if layout == "zip" else torch_format.save_legacy)(expected, path)
    loaded = read_state_dict(path)
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_views_shared_storages_and_wrappers(tmp_path, layout):
    base = np.arange(24, dtype=np.float32)
    storage = torch_format.Storage(base)
    state = collections.OrderedDict(
        transposed=torch_format.Tensor(storage, 0, (4, 6), (1, 4)),  # a .t() of a [6, 4] tensor
        shifted=torch_format.Tensor(storage, 5, (2, 3), (6, 2)),  # offset + strided rows
        scalar=torch_format.Tensor(storage, 23, (), ()),
    )
    state._metadata = collections.OrderedDict({"": {"version": 1}})  # what module.state_dict() has
    checkpoint = {"epoch": 3, "state_dict": state, "note": "trained"}
    path = tmp_path / "ckpt.pth"
    (torch_format.save_zip if layout == "zip" else torch_format.save_legacy)(checkpoint, path)
    loaded = read_state_dict(path)
    np.testing.assert_array_equal(loaded["transposed"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(loaded["shifted"], [[5, 7, 9], [11, 13, 15]])
    assert loaded["scalar"].shape == () and loaded["scalar"] == 23
    assert loaded["transposed"].flags["C_CONTIGUOUS"] and loaded["transposed"].flags["WRITEABLE"]


def test_any_root_folder_name(tmp_path):
    path = tmp_path / "x.pt"
    torch_format.save_zip({"w": np.ones(3, np.float32)}, path, root="my_model_v2")
    np.testing.assert_array_equal(read_state_dict(path)["w"], np.ones(3))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval")])
def test_refuses_arbitrary_callables_without_running_them(tmp_path, layout, module, name):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if name == "system" else f"open({str(marker)!r}, 'w')"
    evil = {"weight": np.ones(2, np.float32),
            "payload": torch_format.Call(torch_format.Global(module, name), (command,))}
    path = tmp_path / "evil.pt"
    (torch_format.save_zip if layout == "zip" else torch_format.save_legacy)(evil, path)
    with pytest.raises(UnsafeCheckpointError, match=rf"evil\.pt.*'{module}\.{name}'"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_truncated_file_names_the_file(tmp_path, layout):
    path = tmp_path / "cut.pt"
    state = {f"w{i}": np.full(1000, i, np.float32) for i in range(4)}
    (torch_format.save_zip if layout == "zip" else torch_format.save_legacy)(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt.*(truncated|unreadable)"):
        read_state_dict(path)


def test_truncated_real_checkpoint_and_safetensors(tmp_path, fixtures_dir):
    for name in ("state_dict.pt", "state_dict.safetensors"):
        data = (fixtures_dir / "efficientat_mn04" / name).read_bytes()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 3])
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            read_state_dict(path)


def test_rejects_non_state_dicts_and_bad_views(tmp_path):
    path = tmp_path / "list.pt"
    torch_format.save_zip([np.ones(2, np.float32)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(path)
    storage = torch_format.Storage(np.zeros(4, np.float32))
    torch_format.save_zip({"w": torch_format.Tensor(storage, 2, (3,), (1,))}, path)
    with pytest.raises(CheckpointError, match="past its storage"):
        read_state_dict(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"list\.pt"):
        read_state_dict(path)


def test_lightning_checkpoint_with_sacred_hyper_parameters(tmp_path):
    # A Lightning checkpoint of a Sacred experiment: hyper_parameters hold Sacred's read-only
    # containers, pickled as REDUCE(ReadOnlyDict, (a plain dict,)); they come back as plain data.
    read_only = torch_format.Global("sacred.config.custom_containers", "ReadOnlyDict")
    read_only_list = torch_format.Global("sacred.config.custom_containers", "ReadOnlyList")
    hparams = {"audio_features": torch_format.Call(read_only, ({"segment_length": 10},)),
               "languages": torch_format.Call(read_only_list, (["de", "fr"],)), "initial_tau": 0.05}
    path = tmp_path / "last.ckpt"
    torch_format.save_zip({"state_dict": {"tau": np.full(1, 0.05, np.float32)}, "hyper_parameters": hparams,
                           "epoch": 7}, path)
    state_dict, extras = read_checkpoint(path)
    assert list(state_dict) == ["tau"] and extras["epoch"] == 7
    assert extras["hyper_parameters"] == {"audio_features": {"segment_length": 10}, "languages": ["de", "fr"],
                                          "initial_tau": 0.05}
    assert type(extras["hyper_parameters"]["audio_features"]) is dict


# Hand-assembled pickles: each opcode a hostile file could use to reach a callable. Each would run
# ``os.system("touch <marker>")`` (or the named callable) if the reader resolved the global.
def _text(value: str) -> bytes:
    raw = value.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _hostile_pickle(opcode: str, module: str, name: str, argument: str) -> bytes:
    proto = pickle.PROTO + bytes([4])
    if opcode == "GLOBAL":
        body = _global(module, name) + _text(argument) + pickle.TUPLE1 + pickle.REDUCE
    elif opcode == "STACK_GLOBAL":
        body = _text(module) + _text(name) + pickle.STACK_GLOBAL + _text(argument) + pickle.TUPLE1 + pickle.REDUCE
    elif opcode == "INST":  # protocol 0: find_class, then call with the marked arguments
        body = pickle.MARK + _text(argument) + pickle.INST + f"{module}\n{name}\n".encode()
    elif opcode == "OBJ":
        body = pickle.MARK + _global(module, name) + _text(argument) + pickle.OBJ
    elif opcode == "NEWOBJ":
        body = _global(module, name) + _text(argument) + pickle.TUPLE1 + pickle.NEWOBJ
    else:
        raise ValueError(opcode)
    return proto + body + pickle.STOP


def _write(layout: str, data: bytes, path, storages=None) -> None:
    writer = torch_format.write_zip if layout == "zip" else torch_format.write_legacy
    writer(data, storages or {}, path)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("opcode", ["GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ"])
def test_every_opcode_that_names_a_callable_is_refused(tmp_path, layout, opcode):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    _write(layout, _hostile_pickle(opcode, "os", "system", f"touch {marker}"), path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt: refusing to unpickle global 'os\.system'"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [
    ("posix", "system"), ("nt", "system"), ("__builtin__", "eval"),  # Python 2 name, no remapping
    ("builtins", "getattr"), ("builtins", "__import__"), ("subprocess", "Popen"), ("torch", "load"),
    ("numpy.core.multiarray", "_reconstruct"), ("torch.storage", "_load_from_bytes"),
    ("copyreg", "_reconstructor"),
    # Allowed names, reached through attributes or spelled with padding: still refused.
    ("torch._utils", "_rebuild_tensor_v2.__globals__"), ("collections", "OrderedDict.fromkeys"),
    ("torch", "FloatStorage.__init__"), ("torch._utils ", "_rebuild_tensor_v2"), ("Torch", "FloatStorage"),
])
def test_global_variants_are_refused(tmp_path, module, name):
    path = tmp_path / "variant.pt"
    # STACK_GLOBAL carries any string (dots, spaces); GLOBAL cannot hold a newline in either part.
    _write("zip", _hostile_pickle("STACK_GLOBAL", module, name, "x"), path)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"'{module}.{name}'")):
        read_state_dict(path)


def test_reduce_of_allowed_objects_that_are_not_callables_is_refused(tmp_path):
    path = tmp_path / "reduce.pt"
    cases = [
        # A storage type is only ever named in a persistent id, never called.
        (_global("torch", "FloatStorage") + _text("x") + pickle.TUPLE1 + pickle.REDUCE,
         UnsafeCheckpointError, r"reduce\.pt: the pickle calls torch\.FloatStorage"),
        # _codecs.encode is allowed for latin-1 bytes only.
        (_global("_codecs", "encode") + _text("x") + _text("rot13") + pickle.TUPLE2 + pickle.REDUCE,
         CheckpointError, r"reduce\.pt: unexpected _codecs\.encode\('x', 'rot13'\)"),
        # The tensor rebuild function with something other than a storage.
        (_global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + _text("x") + pickle.BININT1 + b"\x00"
         + pickle.EMPTY_TUPLE + pickle.EMPTY_TUPLE + pickle.TUPLE + pickle.REDUCE,
         CheckpointError, r"reduce\.pt: malformed tensor record"),
        # An object built from the pickle, used as the callable.
        (pickle.EMPTY_DICT + pickle.EMPTY_TUPLE + pickle.REDUCE, CheckpointError, r"reduce\.pt: unreadable"),
    ]
    for body, error, message in cases:
        _write("zip", pickle.PROTO + b"\x04" + body + pickle.STOP, path)
        with pytest.raises(error, match=message):
            read_state_dict(path)


@pytest.mark.parametrize("target", [("torch", "FloatStorage"), ("torch._utils", "_rebuild_tensor_v2")])
def test_build_cannot_rewrite_the_allowed_objects_for_later_files(tmp_path, target):
    """BUILD on an allowed global would change the shared allow-list entry (e.g. make every later
    file's float32 storages read as float16); it is refused and later files read normally."""
    state = (pickle.EMPTY_DICT + _text("dtype") + _text("<f2") + pickle.SETITEM if target[1] == "FloatStorage"
             else pickle.NONE + pickle.EMPTY_DICT + _text("__defaults__") + pickle.NONE + pickle.TUPLE1
             + pickle.SETITEM + pickle.TUPLE2)  # (None, slotstate): setattr on the function
    path = tmp_path / "poison.pt"
    _write("zip", pickle.PROTO + b"\x04" + _global(*target) + state + pickle.BUILD + pickle.POP
           + pickle.EMPTY_DICT + pickle.STOP, path)
    with pytest.raises(UnsafeCheckpointError, match=rf"poison\.pt: the pickle tries to modify {re.escape('.'.join(target))}"):
        read_state_dict(path)
    good = tmp_path / "good.pt"
    torch_format.save_zip({"w": np.arange(3, dtype=np.float32)}, good)
    loaded = read_state_dict(good)["w"]
    assert loaded.dtype == np.float32 and loaded.tolist() == [0, 1, 2]


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_zero_stride_view_of_huge_size_is_refused_without_allocating(tmp_path, layout):
    storage = torch_format.Storage(np.ones(1, np.float32))
    path = tmp_path / "huge.pt"
    state = {"w": torch_format.Tensor(storage, 0, (1 << 20, 1 << 20), (0, 0))}  # 4 TiB of one float
    (torch_format.save_zip if layout == "zip" else torch_format.save_legacy)(state, path)
    with pytest.raises(CheckpointError, match=r"huge\.pt: tensor 'w' \(size \(1048576, 1048576\), stride \(0, 0\)\) "
                                              r"would hold 1,099,511,627,776 elements .*refusing to allocate"):
        read_state_dict(path)
    negative = {"w": torch_format.Tensor(storage, 0, (-1, 4), (0, 0))}
    torch_format.save_zip(negative, path)
    with pytest.raises(CheckpointError, match="negative size"):
        read_state_dict(path)
    # A small broadcast view (what torch saves for an expand()) is still read.
    torch_format.save_zip({"w": torch_format.Tensor(torch_format.Storage(np.arange(3, dtype=np.float32)), 0,
                                                     (4, 3), (0, 1))}, path)
    np.testing.assert_array_equal(read_state_dict(path)["w"], np.tile(np.arange(3), (4, 1)))


def test_legacy_storage_declaring_more_than_the_file_holds_is_refused(tmp_path):
    path = tmp_path / "lying.bin"
    data, storages = torch_format.pickle_bytes({"w": np.ones(4, np.float32)}, legacy=True)
    torch_format.write_legacy(data, storages, path, numel={"0": 1 << 60})
    with pytest.raises(CheckpointError, match=r"lying\.bin: truncated: storage '0' declares 1,152,921,504,606,846,976"):
        read_state_dict(path)
