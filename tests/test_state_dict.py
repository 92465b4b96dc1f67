"""Torch-free reading of torch.save files (zip and legacy) and safetensors, including hostile input."""
import collections
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
