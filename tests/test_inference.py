"""hybrid_jax.load_model: text and audio embeddings that are the model's own, bit-identical whatever
the batch, recordings of any length, rate and channel count, the fusion rule, clear errors."""
import numpy as np
import pytest
import soundfile as sf
import soxr
from model_files import BATCH_SIZE, SEGMENT_SECONDS, save_tiny_model, write_sound

import hybrid_jax
from hybrid_jax import packed
from hybrid_jax.data.audio_io import AudioError, to_int16
from hybrid_jax.models import fusion

SR = 32000
SEGMENT = int(SEGMENT_SECONDS * SR)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return hybrid_jax.load_model(save_tiny_model(tmp_path_factory.mktemp("late") / "model"), batch_size=BATCH_SIZE)


@pytest.fixture(scope="module")
def sounds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sounds")
    return {"short": write_sound(folder / "short.wav", 1.3, seed=1),
            "long": write_sound(folder / "long.wav", 5.5, seed=2),
            "stereo48": write_sound(folder / "stereo48.flac", 2.7, rate=48000, channels=2, seed=3, subtype="PCM_24")}


def item_batch(model, rows):
    """A full batch of the given (int16 segment, metadata) rows, built by hand."""
    batch = {"audio": np.zeros((BATCH_SIZE, SEGMENT), np.int16), "audio_valid": np.zeros(BATCH_SIZE, np.float32),
             "meta_present": np.zeros(BATCH_SIZE, bool)}
    for key in ("meta_ids", "meta_mask", "meta_types"):
        batch[key] = np.zeros((BATCH_SIZE, 8), np.int32)
    for i, (segment, text) in enumerate(rows):
        batch["audio"][i, : len(segment)] = segment
        batch["audio_valid"][i] = len(segment) / SEGMENT
        if text:
            tokens = model.tokenizer.tokenize([text])
            batch["meta_ids"][i], batch["meta_mask"][i] = tokens["input_ids"][0], tokens["attention_mask"][0]
            batch["meta_present"][i] = True
    return packed.pack_items(model.fusion, model.embed_item_batch(batch))


def pcm(path):
    wave, rate = sf.read(path, dtype="float32")
    assert rate == SR
    return to_int16(wave)


def test_text_embeddings_are_unit_vectors_identical_in_any_batch(model):
    alone = model.embed_text(["a dog barks"])
    crowd = model.embed_text([f"rain falls on the roof {i}" for i in range(20)] + ["a dog barks"])  # 3 batches
    assert alone.shape == (1, 12) and crowd.shape == (21, 12)
    np.testing.assert_array_equal(crowd[-1], alone[0])
    np.testing.assert_allclose(np.linalg.norm(crowd, axis=1), 1.0, rtol=1e-5)
    assert model.embed_text([]).shape == (0, 12)
    assert model.embed_queries_fn._cache_size() == 1  # one compilation for every call above
    with pytest.raises(TypeError, match="list of strings"):
        model.embed_text("a dog barks")


def test_a_short_clip_is_the_models_embedding_of_the_zero_padded_clip(model, sounds):
    samples = pcm(sounds["short"])
    got = model.embed_audio([sounds["short"]], ["dog bark"])
    # One segment, padded to 2 s with valid fraction 1.3 / 2, metadata as written: the model's row.
    expected = item_batch(model, [(samples, "dog bark")])[0]
    np.testing.assert_array_equal(got.vectors[0], expected)
    assert got.seconds[0] == pytest.approx(1.3)
    # The same clip among others, in another position, as a waveform pair: the same bits.
    crowd = model.embed_audio([sounds["long"], sounds["stereo48"], (samples.astype(np.float32) / 32768, SR),
                               sounds["short"]], ["", "rain", "dog bark", "dog bark"])
    np.testing.assert_array_equal(crowd.vectors[2], expected)
    np.testing.assert_array_equal(crowd.vectors[3], expected)
    # Metadata matters, and "" means none.
    without = model.embed_audio([sounds["short"]])
    np.testing.assert_array_equal(without.vectors[0], item_batch(model, [(samples, "")])[0])
    assert np.abs(without.vectors[0] - expected).max() > 1e-3
    assert model.embed_items_fn._cache_size() == 1  # one compilation, whatever the number of items


def test_a_long_recording_is_the_seconds_weighted_mean_of_its_segments(model, sounds):
    samples = pcm(sounds["long"])  # 5.5 s = 2 s + 2 s + 1.5 s
    parts = [samples[:SEGMENT], samples[SEGMENT : 2 * SEGMENT], samples[2 * SEGMENT :]]
    rows = item_batch(model, [(p, "rain") for p in parts])[:3]
    mean = (rows * np.array([2.0, 2.0, 1.5])[:, None]).sum(0)
    got = model.embed_audio([sounds["long"]], ["rain"])
    np.testing.assert_allclose(got.vectors[0], mean / np.linalg.norm(mean), rtol=1e-6, atol=1e-7)
    assert got.seconds[0] == pytest.approx(5.5)
    assert np.abs(got.vectors[0] - rows[0]).max() > 1e-4  # the whole recording, not its start


def test_any_rate_and_channels_become_32_khz_mono(model, sounds):
    wave, rate = sf.read(sounds["stereo48"], dtype="float32")
    assert rate == 48000 and wave.shape[1] == 2
    mono = soxr.resample(wave.mean(axis=1), rate, SR, quality="HQ")
    from_file = model.embed_audio([sounds["stereo48"]])
    np.testing.assert_array_equal(from_file.vectors, model.embed_audio([(wave, rate)]).vectors)
    np.testing.assert_array_equal(from_file.vectors, model.embed_audio([(mono, SR)]).vectors)
    assert from_file.seconds[0] == pytest.approx(2.7, abs=1e-4)


def test_similarity_is_the_fusion_rule_and_example_search_finds_the_same_sound(model, sounds):
    queries = model.embed_text(["a dog barks", "rain"])
    items = model.embed_audio([sounds["short"], sounds["long"]], ["dog bark", ""])
    expected = np.asarray(fusion.similarity({"embedding": queries}, {"embedding": items.vectors}))
    np.testing.assert_allclose(model.similarity(queries, items), expected, rtol=1e-6)
    examples = model.embed_audio([sounds["long"]])
    np.testing.assert_allclose(model.similarity(examples, items), examples.vectors @ items.vectors.T, rtol=1e-6)
    assert model.similarity(examples, items)[0, 1] == pytest.approx(1.0, abs=1e-5)  # itself, no metadata


def test_bad_audio_is_named_with_its_reason(model, sounds, tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    nan = np.zeros(SR, np.float32)
    nan[16000] = np.nan
    with pytest.raises(AudioError) as error:
        model.embed_audio([sounds["short"], tmp_path / "empty.wav", (nan, SR), tmp_path / "missing.wav"])
    message = str(error.value)
    assert message.startswith("3 of 4 items could not be embedded")
    assert "empty.wav: empty file (0 bytes)" in message
    assert "item 2 (waveform): non-finite (NaN/Inf) samples (first at 0.50 s)" in message
    assert "missing.wav: FileNotFoundError" in message
    with pytest.raises(AudioError, match=r"looks like \[channels, samples\]"):
        model.embed_audio([(np.zeros((2, SR), np.float32), SR)])
    with pytest.raises(ValueError, match="2 items but 1 metadata"):
        model.embed_audio([sounds["short"], sounds["long"]], ["x"])


@pytest.fixture(scope="module")
def mid_model(tmp_path_factory):
    return hybrid_jax.load_model(save_tiny_model(tmp_path_factory.mktemp("mid") / "model", "mid"), batch_size=BATCH_SIZE)


def test_mid_fusion_packs_both_experts_and_mixes_them(mid_model, sounds):
    queries = mid_model.embed_text(["a dog barks"])
    items = mid_model.embed_audio([sounds["short"], sounds["long"]], ["dog bark", ""])
    assert queries.shape == (1, 2 * 12 + 2) and items.vectors.shape == (2, 2 * 12 + 1)
    parts = items.as_dict()
    assert list(parts["meta_present"]) == [True, False]
    np.testing.assert_allclose(np.linalg.norm(parts["audio"], axis=1), 1.0, rtol=1e-5)
    expected = np.asarray(fusion.similarity(packed.unpack_queries("mid", queries), parts))
    np.testing.assert_allclose(mid_model.similarity(queries, items), expected, rtol=1e-6)
    audio_only = queries[0, :12] @ parts["audio"][1]  # no metadata: the audio expert alone decides
    assert mid_model.similarity(queries, items)[0, 1] == pytest.approx(audio_only, rel=1e-5)
