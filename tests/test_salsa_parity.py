"""The whole model equals the authors' PyTorch code (tests/fixtures/salsa_hybrid, see its README).

Their Lightning checkpoint goes through the converter (``tools/convert_salsa.py``'s function) into a
model directory, ``model_dir.load`` reads it back, and the model is run on the fixture's captions,
keywords and 30 s clips. Every intermediate the model exposes, the similarity matrix and the NT-Xent
loss must match theirs within the tolerances of the fixture README (about 10x the float32-vs-float64
differences of their own code). Nothing here depends on this fixture's sizes: a fixture of the same
kind with another seed, valid fractions, layer count or truncation runs through the same code.
"""
import functools
import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from hybrid_jax import model_dir, steps
from hybrid_jax.convert import salsa
from hybrid_jax.convert.state_dict import read_checkpoint
from hybrid_jax.data.prepare.builder import split_keywords
from hybrid_jax.models import fusion
from hybrid_jax.models.retrieval import RetrievalModel

REPO = pathlib.Path(__file__).resolve().parents[1]
# Fixture README, "Checks and tolerances": float32 end to end vs their float32 run.
ATOL = {"mel": 2e-4, "window": 3e-3, "pooling": 1e-3, "text": 1e-5, "similarity": 2e-5, "loss": 2e-4}
# Fed their stored window embeddings, the pooling/projection part alone (float32 vs float64 there:
# up to 4.3e-6 on the pooling input, 2.5e-6 on the audio embedding).
ATOL_FROM_WINDOWS = 3e-5


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    folder = fixtures_dir / "salsa_hybrid"
    return folder, dict(np.load(folder / "inputs.npz")), dict(np.load(folder / "outputs.npz")), \
        json.loads((folder / "text.json").read_text())


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory):
    folder = fixture[0]
    out = tmp_path_factory.mktemp("salsa") / "model"
    conversion = salsa.convert_file(folder / "model.ckpt", out, vocab=folder / "vocab.txt")
    return conversion, model_dir.load(out)


def their_batch(loaded, inputs, text):
    """The fixture's clips and strings as our model's batch (the data pipeline's types)."""
    audio = np.round(inputs["audio"].astype(np.float64) * 32768.0)
    assert np.array_equal(audio / 32768.0, inputs["audio"]), "the clips are on the 16-bit grid"
    captions = loaded.tokenizer(text["captions"])
    metadata = loaded.tokenizer([" ".join(split_keywords(k)) for k in text["keywords"]])
    paths = text["paths"]
    return {
        "audio": audio.astype(np.int16),
        "audio_valid": (inputs["valid_samples"] / inputs["audio"].shape[1]).astype(np.float32),
        "query_ids": captions["input_ids"], "query_mask": captions["attention_mask"],
        "query_types": captions["token_type_ids"],
        "meta_ids": metadata["input_ids"], "meta_mask": metadata["attention_mask"],
        "meta_types": metadata["token_type_ids"],
        "meta_present": np.ones(len(paths), bool),
        "item_id": np.array([paths.index(p) for p in paths], np.int32),  # same file = positive
    }


@pytest.fixture(scope="module")
def ours(converted, fixture):
    _, loaded = converted
    _, inputs, _, text = fixture
    batch = their_batch(loaded, inputs, text)
    forward = jax.jit(functools.partial(loaded.model.apply, train=False, mutable=["intermediates"]))
    (queries, items, temperature), state = forward(loaded.variables, batch)
    inter = jax.device_get(state["intermediates"])
    return batch, queries, items, temperature, inter


def test_the_checkpoint_is_read_as_their_architecture(converted, fixture):
    conversion, loaded = converted
    hparams = json.loads((fixture[0] / "config.json").read_text())
    seq = hparams["audio_features"]["sequence_model"]
    model = loaded.model
    assert model == conversion.model
    assert (model.pooling.num_layers, model.pooling.dim, model.pooling.num_heads) == \
        (seq["num_layers"], seq["dim"], seq["nhead"])
    assert model.audio.tokens == ("frame" if hparams["audio_features"]["model_config"]["return_sequence"] else "window")
    assert model.fusion == ("late" if hparams["use_keywords"] else "none")
    assert model.embed_dim == hparams["shared_representation_size"]
    assert set(conversion.dropped) >= {"posencode.pe", "timing_tau"}
    assert all(not k.startswith("audio_sequence") for k in conversion.dropped)


def test_tokens_equal_theirs(ours, fixture):
    batch = ours[0]
    inputs = fixture[1]
    np.testing.assert_array_equal(batch["query_ids"], inputs["caption_input_ids"])
    np.testing.assert_array_equal(batch["query_mask"], inputs["caption_attention_mask"])
    np.testing.assert_array_equal(batch["meta_ids"], inputs["metadata_input_ids"])
    np.testing.assert_array_equal(batch["meta_mask"], inputs["metadata_attention_mask"])


def test_audio_tower_intermediates(ours, fixture):
    outputs = fixture[2]
    audio = ours[4]["audio_tower"]
    windows = outputs["window_embeddings"].shape[1]
    mel = audio["mel"][0]
    clips = [k for k in outputs if k.startswith("mel_clip")]
    assert clips
    for key in clips:
        clip = int(key[len("mel_clip"):])
        np.testing.assert_allclose(mel[clip * windows:(clip + 1) * windows], outputs[key], rtol=0,
                                   atol=ATOL["mel"], err_msg=key)
    np.testing.assert_allclose(audio["tokens"][0], outputs["window_embeddings"], rtol=0, atol=ATOL["window"])
    np.testing.assert_array_equal(audio["mask"][0], outputs["window_mask"].astype(bool))


def test_pooling_and_embeddings_end_to_end(ours, fixture):
    outputs = fixture[2]
    inter = ours[4]
    pool = inter["pool"]
    np.testing.assert_allclose(pool["input"][0], outputs["pooling_input"], rtol=0, atol=ATOL["pooling"])
    layers = outputs["pooling_layer_outputs"]
    assert len(pool["layers"]) == len(layers)
    for i, (got, want) in enumerate(zip(pool["layers"], layers)):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL["pooling"], err_msg=f"layer {i}")
    np.testing.assert_allclose(pool["global_token"][0], outputs["pooled_global_token"], rtol=0, atol=ATOL["pooling"])
    audio, meta = inter["audio_embedding"][0], inter["metadata_embedding"][0]
    np.testing.assert_allclose(audio, outputs["audio_embedding"], rtol=0, atol=ATOL["pooling"])
    np.testing.assert_allclose(meta, outputs["metadata_embedding"], rtol=0, atol=ATOL["text"])
    np.testing.assert_allclose(inter["query_embedding"][0], outputs["caption_embedding"], rtol=0, atol=ATOL["text"])
    np.testing.assert_allclose(audio + meta, outputs["fused_item_embedding"], rtol=0, atol=ATOL["pooling"])
    np.testing.assert_allclose(ours[2]["embedding"], outputs["fused_item_embedding_normalized"], rtol=0,
                               atol=ATOL["pooling"])


def test_similarity_and_loss(ours, converted, fixture):
    batch, queries, items, temperature, _ = ours
    outputs = fixture[2]
    loaded = converted[1]
    similarity = np.asarray(fusion.similarity(queries, items))  # ours: queries on rows
    np.testing.assert_allclose(similarity.T, outputs["similarity"], rtol=0, atol=ATOL["similarity"])
    np.testing.assert_allclose(float(temperature), np.abs(outputs["tau"]).item(), rtol=1e-6)
    loss, _ = steps.embedding_loss(loaded.model, loaded.variables["params"], (queries, items), batch)
    np.testing.assert_allclose(float(loss), float(outputs["loss"]), rtol=0, atol=ATOL["loss"])


def test_pooling_from_their_window_embeddings(converted, fixture):
    """Fed their stored windows, the pooling, projection and position code alone are tight."""
    loaded = converted[1]
    outputs = fixture[2]

    def pool_and_project(module, tokens, mask):
        pooled, _ = module.pool(tokens, mask, train=False)
        return module.audio_proj(pooled)

    audio, state = loaded.model.apply(loaded.variables, outputs["window_embeddings"],
                                      outputs["window_mask"].astype(bool), method=pool_and_project,
                                      mutable=["intermediates"])
    pool = state["intermediates"]["pool"]
    np.testing.assert_allclose(pool["input"][0], outputs["pooling_input"], rtol=0, atol=ATOL_FROM_WINDOWS)
    for i, (got, want) in enumerate(zip(pool["layers"], outputs["pooling_layer_outputs"])):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_FROM_WINDOWS, err_msg=f"layer {i}")
    np.testing.assert_allclose(audio, outputs["audio_embedding"], rtol=0, atol=ATOL_FROM_WINDOWS)


def test_safetensors_with_hparams_converts_to_the_same_variables(converted, fixture, tmp_path):
    folder = fixture[0]
    state_dict, _ = read_checkpoint(folder / "model.ckpt")
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    with pytest.raises(salsa.ConversionError, match="--hparams"):
        salsa.read(tmp_path / "model.safetensors")
    state_dict2, hparams, _ = salsa.read(tmp_path / "model.safetensors", folder / "config.json")
    again = salsa.convert(state_dict2, hparams)
    first = converted[0]
    assert again.model == first.model
    flat_a, flat_b = (jax.tree_util.tree_flatten_with_path(c.variables)[0] for c in (first, again))
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, a), (_, b) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _cli():
    spec = importlib.util.spec_from_file_location("convert_salsa", REPO / "tools" / "convert_salsa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unmappable_checkpoint_names_every_bad_key(fixture, tmp_path, capsys):
    folder = fixture[0]
    state_dict, _ = read_checkpoint(folder / "model.ckpt")
    state_dict["audio_sequence.0.extra_gate.weight"] = np.zeros((3, 3), np.float32)
    del state_dict["project_sentence.0.bias"]
    del state_dict["audio_sequence.1.linear2.weight"]
    save_file(state_dict, str(tmp_path / "broken.safetensors"))
    code = _cli().main([str(tmp_path / "broken.safetensors"), str(tmp_path / "out"),
                        "--hparams", str(folder / "config.json"), "--vocab", str(folder / "vocab.txt")])
    err = capsys.readouterr().err
    assert code == 1
    assert "unmapped: audio_sequence.0.extra_gate.weight" in err
    assert "missing: project_sentence.0.bias" in err
    assert "missing: audio_sequence.1.linear2.weight" in err
    assert not (tmp_path / "out").exists()


def test_settings_the_model_lacks_are_refused_by_name(fixture):
    folder = fixture[0]
    state_dict, hparams, _ = salsa.read(folder / "model.ckpt")
    hparams["audio_features"]["sequence_model"]["norm_first"] = False
    hparams["init_audio_token_with_mean"] = False
    with pytest.raises(salsa.ConversionError) as error:
        salsa.convert(state_dict, hparams)
    assert "norm_first = False" in str(error.value) and "init_audio_token_with_mean = False" in str(error.value)


def test_model_directory_has_their_settings_on_the_card(converted):
    loaded = converted[1]
    assert loaded.card["original_code"].startswith("OptimusPrimus/salsa")
    assert loaded.card["hyper_parameters"]["audio_features"]["sequence_model"]["num_layers"] == \
        loaded.model.pooling.num_layers
    assert isinstance(loaded.model, RetrievalModel)


def test_variant_without_pooling_layers(fixture):
    """num_layers=0 in their code: the masked mean of the window embeddings, then project_audio
    from the backbone width; the pooling keys are unused."""
    folder, _, outputs, _ = fixture
    state_dict, hparams, _ = salsa.read(folder / "model.ckpt")
    for key in [k for k in state_dict if k.startswith("audio_sequence.")]:
        del state_dict[key]
    width = outputs["window_embeddings"].shape[-1]
    rng = np.random.default_rng(0)
    embed = state_dict["project_audio.0.weight"].shape[0]
    state_dict["project_audio.0.weight"] = rng.uniform(-0.05, 0.05, (embed, width)).astype(np.float32)
    hparams["audio_features"]["sequence_model"]["num_layers"] = 0
    conversion = salsa.convert(state_dict, hparams)
    assert conversion.model.pooling.num_layers == 0
    assert "pool" not in conversion.variables["params"] and "audio_token" in conversion.dropped

    def pool_and_project(module, tokens, mask):
        return module.audio_proj(module.pool(tokens, mask, train=False)[0])

    mask = outputs["window_mask"]
    got = conversion.model.apply(conversion.variables, outputs["window_embeddings"], mask.astype(bool),
                                 method=pool_and_project)
    mean = (outputs["window_embeddings"] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    want = mean @ state_dict["project_audio.0.weight"].T + state_dict["project_audio.0.bias"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_variant_with_a_separate_metadata_encoder(fixture):
    folder = fixture[0]
    state_dict, hparams, _ = salsa.read(folder / "model.ckpt")
    for key in [k for k in state_dict if k.startswith(salsa.TEXT_PREFIX) or k.startswith("project_sentence.")]:
        twin = key.replace(salsa.TEXT_PREFIX, salsa.META_PREFIX).replace("project_sentence.", "project_metadata.")
        state_dict[twin] = state_dict[key] + 1.0
    hparams["use_separate_metadata_embedding_model"] = True
    conversion = salsa.convert(state_dict, hparams)
    params = conversion.variables["params"]
    assert conversion.model.separate_metadata_encoder
    np.testing.assert_array_equal(params["meta_proj"]["kernel"], state_dict["project_metadata.0.weight"].T)
    np.testing.assert_array_equal(params["meta_bert"]["embeddings"]["word_embeddings"]["embedding"],
                                  state_dict["metadata_embedding_model.embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(params["bert"]["embeddings"]["word_embeddings"]["embedding"],
                                  state_dict["sentence_embedding_model.embeddings.word_embeddings.weight"])


def test_load_model_on_wav_files_gives_their_similarity(converted, fixture, tmp_path):
    """The user's path: the public ``hybrid_jax.load_model`` on the converted directory, each clip as
    a 16-bit WAV file of its valid samples only (the model pads it to whole windows itself), the
    captions and keywords as plain strings."""
    import soundfile as sf

    import hybrid_jax

    folder, inputs, outputs, text = fixture
    out = tmp_path / "model"
    salsa.convert_file(folder / "model.ckpt", out, vocab=folder / "vocab.txt")
    files = []
    for i, valid in enumerate(inputs["valid_samples"]):
        files.append(tmp_path / f"clip{i}.wav")
        sf.write(files[-1], inputs["audio"][i, : int(valid)], 32000, subtype="PCM_16")
    model = hybrid_jax.load_model(out)
    assert model.segment_seconds == 30.0  # their Clotho clip length (train_on = clothov2)
    items = model.embed_audio(files, metadata=[" ".join(split_keywords(k)) for k in text["keywords"]])
    np.testing.assert_allclose(items.seconds, inputs["valid_samples"] / 32000, rtol=1e-6)
    similarity = model.similarity(model.embed_text(text["captions"]), items)
    np.testing.assert_allclose(similarity.T, outputs["similarity"], rtol=0, atol=ATOL["similarity"])


def test_training_clip_length_follows_their_data_sets():
    assert salsa.training_clip_seconds({"train_on": "audiocaps"}) == 10.0
    for name in ("clothov2", "wavcaps", "all"):
        assert salsa.training_clip_seconds({"train_on": name}) == 30.0
    assert salsa.training_clip_seconds({}) == 30.0  # their default_config trains on Clotho
