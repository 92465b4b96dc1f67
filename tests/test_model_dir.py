"""The model directory format: architecture, weights and tokenizer round-trip exactly."""
import dataclasses
import functools
import json

import jax
import numpy as np
import pytest
from test_model import tiny_batch, tiny_model

from hybrid_jax import model_dir
from hybrid_jax.convert import weights


def init(model, batch):
    """Jitted, rbg keys: eager threefry initialisation takes minutes on 8 emulated CPU devices."""
    keys = {k: jax.random.key(i, impl="rbg") for i, k in enumerate(("params", "dropout", "augment"))}
    return jax.device_get(jax.jit(functools.partial(model.init, train=False))(keys, batch))


@pytest.fixture
def vocab_dir(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "dog", "bark"]) + "\n")
    return folder


@pytest.mark.parametrize("mode", ["late", "mid"])
def test_round_trip(tmp_path, vocab_dir, mode):
    model = tiny_model(mode, separate_metadata_encoder=(mode == "late"))
    variables = init(model, tiny_batch())
    out = model_dir.save(tmp_path / "m", model, variables, vocab_dir, max_length=8,
                         card={"training_data": "unit test", "metrics": {"mAP@10": 0.5}})
    loaded = model_dir.load(out)
    assert loaded.model == model
    flat, back = weights.flatten(variables), weights.flatten(loaded.variables)
    assert sorted(flat) == sorted(back)
    for key in flat:
        assert np.shape(flat[key]) == np.shape(back[key]), key  # scalars stay scalars
        np.testing.assert_array_equal(flat[key], back[key], err_msg=key)
    assert loaded.tokenizer.max_length == 8
    assert loaded.card["training_data"] == "unit test" and "created" in loaded.card
    assert "hybrid_jax.load_model" in (out / "README.md").read_text()


def test_unknown_setting_and_missing_file_are_named(tmp_path, vocab_dir):
    model = tiny_model("late")
    out = model_dir.save(tmp_path / "m", model, jax.device_get(init(model, tiny_batch())), vocab_dir,
                         max_length=8, card={})
    spec = json.loads((out / "model.json").read_text())
    spec["model"]["pooling"]["flux_capacitor"] = 1
    (out / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"model.pooling: unknown settings \['flux_capacitor'\]"):
        model_dir.load(out)
    with pytest.raises(FileNotFoundError, match="model.json"):
        model_dir.load(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no vocab.txt or tokenizer.json"):
        model_dir.save(tmp_path / "m2", model, {}, tmp_path, max_length=8, card={})


def test_kernels_are_left_to_the_loading_host(tmp_path, vocab_dir):
    """A model trained on a CPU (shifted-sum kernels) must run the native kernels on a TPU: the
    directory says "auto", and the loader's backend policy decides."""
    model = tiny_model("late")
    model = model.clone(audio=dataclasses.replace(model.audio, depthwise="shifted"))
    out = model_dir.save(tmp_path / "m", model, init(model, tiny_batch()), vocab_dir, max_length=8, card={})
    assert json.loads((out / "model.json").read_text())["model"]["audio"]["depthwise"] == "auto"
    assert model_dir.load(out).model.audio.depthwise == "auto"
