"""HF BERT -> Flax conversion: key styles, file formats, errors, and the public text-encoder API."""

import collections
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pt_writer as torch_format  # tests/pt_writer.py: torch.save-format writer without torch
import pytest
from safetensors.numpy import load_file, save_file

from hybrid_jax.convert import bert as convert_bert
from hybrid_jax.convert import rules, weights
from hybrid_jax.models import pretrained, text, text_encoder
from hybrid_jax.models.bert import BertConfig, BertEncoder
from tools import convert_bert as convert_tool

SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
WORDS = ["a", "dog", "barks", "rain", "falls", "on", "roof", "##s"]


def write_vocab(folder, size=2000):
    """A BERT-style vocab.txt for the random bert_tiny model (the fixture has no tokenizer)."""
    tokens = [SPECIALS.get(i, f"[unused{i}]") for i in range(104)] + WORDS
    tokens += [f"w{i}" for i in range(size - len(tokens))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")


@pytest.fixture(scope="module")
def tiny_state(fixtures_dir):
    return load_file(str(fixtures_dir / "bert_tiny" / "model.safetensors"))


@pytest.fixture(scope="module")
def tiny_reference(fixtures_dir):
    return dict(np.load(fixtures_dir / "bert_tiny" / "arrays.npz"))


@pytest.fixture(scope="module")
def tiny_config(fixtures_dir):
    return json.loads((fixtures_dir / "bert_tiny" / "config.json").read_text())


def hf_folder(path, state, config, *, weights_file="model.safetensors", vocab=True):
    """A HF-layout model folder holding ``state`` in the given file format."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    if weights_file == "model.safetensors":
        save_file(state, str(path / weights_file))
    elif weights_file == "zip":  # torch.save of a state dict (an OrderedDict), torch >= 1.6
        torch_format.save_zip(collections.OrderedDict(state), path / "pytorch_model.bin")
    else:  # the pre-1.6 format of e.g. bert-base-uncased's pytorch_model.bin
        torch_format.save_legacy(collections.OrderedDict(state), path / "pytorch_model.bin")
    if vocab:
        write_vocab(path)
    return path


def convert(tmp_path, state, config, name, **kwargs):
    destination = tmp_path / f"{name}_converted"
    convert_tool.main([str(hf_folder(tmp_path / name, state, config, **kwargs)), str(destination)])
    return destination


@pytest.mark.parametrize(
    "key, path",
    [
        ("embeddings.word_embeddings.weight", "params/embeddings/word_embeddings/embedding"),
        (
            "encoder.layer.11.attention.self.query.weight",
            "params/encoder/layer_11/attention/self/query/kernel",
        ),
        (
            "encoder.layer.0.attention.output.LayerNorm.gamma",
            "params/encoder/layer_0/attention/output/LayerNorm/scale",
        ),
        ("encoder.layer.3.output.LayerNorm.beta", "params/encoder/layer_3/output/LayerNorm/bias"),
        (
            "encoder.layer.3.output.LayerNorm.weight",
            "params/encoder/layer_3/output/LayerNorm/scale",
        ),
        (
            "encoder.layer.0.intermediate.dense.bias",
            "params/encoder/layer_0/intermediate/dense/bias",
        ),
        ("pooler.dense.weight", "params/pooler/dense/kernel"),
    ],
)
def test_key_map(key, path):
    assert convert_bert.map_key(key)[0] == path


def test_unknown_key_and_tensor_rules():
    with pytest.raises(KeyError):
        convert_bert.map_key("encoder.layer.0.attention.self.rotary.inv_freq")
    w = np.arange(6.0).reshape(3, 2)  # torch Linear: [out=3, in=2]
    np.testing.assert_array_equal(rules.LINEAR_TO_DENSE.apply(w), w.T)
    assert convert_bert.map_key("encoder.layer.0.output.dense.weight")[1] is rules.LINEAR_TO_DENSE


def test_tool_and_public_api_match_the_reference(
    tmp_path, tiny_state, tiny_config, tiny_reference, capsys
):
    source = hf_folder(tmp_path / "src", tiny_state, tiny_config, vocab=False)
    write_vocab(tmp_path / "tok")
    destination = tmp_path / "dst"
    assert (
        convert_tool.main([str(source), str(destination), "--tokenizer", str(tmp_path / "tok")])
        == 0
    )
    assert "pooler: True" in capsys.readouterr().out
    saved = json.loads((destination / "config.json").read_text())
    assert saved["hf_config"] == tiny_config and saved["max_length"] == 32
    assert (destination / "vocab.txt").is_file()

    txt = pretrained.load_text_encoder(destination)
    ids, mask, types = (
        tiny_reference[k] for k in ("input_ids", "attention_mask", "token_type_ids")
    )
    hidden = txt.encode(ids, mask, types)
    assert hidden.dtype == jnp.float32 and hidden.shape == (3, 16, 64)
    np.testing.assert_allclose(hidden, tiny_reference["last_hidden_state"], atol=1e-5)
    assert isinstance(txt.config, BertConfig) and "pooler" not in txt.variables["params"]

    batch = txt.tokenize(["A dog barks.", "Rain falls on roofs!"])
    assert batch["input_ids"].dtype == np.int32 and batch["input_ids"].shape == (2, 32)
    np.testing.assert_array_equal(
        batch["input_ids"][:, :6], [[101, 104, 105, 106, 102, 0], [101, 107, 108, 109, 110, 111]]
    )

    pooled = text_encoder.load(destination, add_pooling_layer=True)(ids, mask, types)
    np.testing.assert_allclose(pooled["pooler_output"], tiny_reference["pooler_output"], atol=1e-5)


def test_minilm_end_to_end(tmp_path, fixtures_dir):
    # Real weights: raw sentences -> preprocessing -> ids -> hidden states of PyTorch's BertModel.
    reference = np.load(fixtures_dir / "minilm" / "arrays.npz")
    sentences = json.loads((fixtures_dir / "minilm" / "sentences.json").read_text())["sentences"]
    convert_tool.main([str(text.minilm_package_dir()), str(tmp_path / "minilm")])
    txt = pretrained.load_text_encoder(tmp_path / "minilm")
    batch = txt.tokenize(sentences)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(batch[key], reference[key], err_msg=key)
    hidden = txt.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    np.testing.assert_allclose(hidden, reference["last_hidden_state"], atol=1e-4)

    fast = text_encoder.load(tmp_path / "minilm", dtype=jnp.bfloat16)
    cls = fast.encode(batch["input_ids"], batch["attention_mask"])[:, 0]
    assert cls.dtype == jnp.float32
    error = np.abs(np.asarray(cls) - reference["last_hidden_state"][:, 0])
    assert 0 < error.max() < 0.05 and error.mean() < 0.01, (error.max(), error.mean())


def renamed(state, rename):
    return {rename(k): v for k, v in state.items()}


def test_key_styles_and_file_formats_convert_identically(
    tmp_path, tiny_state, tiny_config, tiny_reference, capsys
):
    heads = {
        "cls.predictions.bias": np.zeros(2000, np.float32),
        "cls.predictions.transform.dense.weight": np.ones((64, 64), np.float32),
        "cls.seq_relationship.weight": np.ones((2, 64), np.float32),
    }

    def old_names(key):
        return key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        )

    variants = {
        "prefixed_with_heads": {
            **renamed(tiny_state, lambda k: "bert." + k),
            "bert.embeddings.position_ids": np.arange(64, dtype=np.int64)[None],
            **heads,
        },
        "gamma_beta": renamed(tiny_state, old_names),
    }
    baseline = weights.load(convert(tmp_path, tiny_state, tiny_config, "plain"))[0]
    converted = {
        name: convert(tmp_path, state, tiny_config, name) for name, state in variants.items()
    }
    converted["zip"] = convert(tmp_path, tiny_state, tiny_config, "zip", weights_file="zip")
    converted["legacy"] = convert(
        tmp_path, renamed(tiny_state, old_names), tiny_config, "legacy", weights_file="legacy"
    )
    out = capsys.readouterr().out
    assert "ignored 3 keys" in out and "cls.seq_relationship.weight" in out

    forward = jax.jit(
        BertEncoder(BertConfig.from_hf(tiny_config), add_pooling_layer=True).apply,
        static_argnames="train",
    )
    ids, mask, types = (
        tiny_reference[k] for k in ("input_ids", "attention_mask", "token_type_ids")
    )
    expected = forward(baseline, ids, mask, types, train=False)
    np.testing.assert_allclose(
        expected["last_hidden_state"], tiny_reference["last_hidden_state"], atol=1e-5
    )
    flat_baseline = weights.flatten(baseline)
    for name, destination in converted.items():
        variables = weights.load(destination)[0]
        flat = weights.flatten(variables)
        assert flat.keys() == flat_baseline.keys(), name
        for path, value in flat.items():
            np.testing.assert_array_equal(value, flat_baseline[path], err_msg=f"{name}: {path}")
        got = forward(variables, ids, mask, types, train=False)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name}: {key}")


def test_missing_and_misshaped_tensors_are_all_named(tiny_state, tiny_config):
    config = BertConfig.from_hf(tiny_config)
    broken = dict(tiny_state)
    del broken["encoder.layer.1.output.dense.bias"]
    broken["encoder.layer.0.intermediate.dense.weight"] = np.zeros((128, 65), np.float32)
    broken["encoder.layer.2.output.dense.bias"] = np.zeros(64, np.float32)  # config has 2 layers
    with pytest.raises(ValueError) as error:
        convert_bert.convert_state_dict(broken, config)
    message = str(error.value)
    assert "3 problems" in message
    assert "missing: params/encoder/layer_1/output/dense/bias" in message
    assert "mis-shaped: encoder.layer.0.intermediate.dense.weight (128, 65)" in message
    assert "unexpected: encoder.layer.2.output.dense.bias" in message


def test_half_precision_checkpoints_become_float32(tiny_state, tiny_config):
    half = {k: v.astype(np.float16) for k, v in tiny_state.items()}
    variables = convert_bert.convert_state_dict(half, BertConfig.from_hf(tiny_config)).variables
    leaves = jax.tree.leaves(variables)
    assert {leaf.dtype for leaf in leaves} == {np.dtype(np.float32)}


def test_missing_files_are_reported(tmp_path, tiny_state, tiny_config):
    folder = hf_folder(tmp_path / "no_vocab", tiny_state, tiny_config, vocab=False)
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        convert_bert.convert_checkpoint(folder, tmp_path / "out")
    (folder / "model.safetensors").unlink()
    write_vocab(folder)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        convert_bert.convert_checkpoint(folder, tmp_path / "out")
    shutil.rmtree(folder)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        convert_bert.convert_checkpoint(folder, tmp_path / "out")


def test_command_line_reports_errors_without_a_traceback(tmp_path, tiny_state, tiny_config, capsys):
    """Hostile, mis-shaped and missing inputs: exit code 1 and one ``error:`` line naming the file."""
    from commands import assert_clean_error, run_python

    hostile = dict(tiny_state)
    hostile["cls.payload"] = torch_format.Call(torch_format.Global("os", "system"), (f"touch {tmp_path / 'pwned'}",))
    folder = hf_folder(tmp_path / "evil", {}, tiny_config, weights_file="zip")
    torch_format.save_zip(collections.OrderedDict(hostile), folder / "pytorch_model.bin")
    result = run_python("tools/convert_bert.py", str(folder), str(tmp_path / "out"))
    assert_clean_error(result, "pytorch_model.bin", "'os.system'")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
    broken = dict(tiny_state)
    broken["encoder.layer.0.intermediate.dense.weight"] = np.zeros((128, 65), np.float32)
    cases = [
        (hf_folder(tmp_path / "misshaped", broken, tiny_config), "mis-shaped: encoder.layer.0.intermediate"),
        (tmp_path / "nowhere", "nowhere: not a Hugging Face model folder"),
    ]
    for source, words in cases:
        assert convert_tool.main([str(source), str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err, err
    assert not (tmp_path / "out").exists()
