"""EfficientAT conversion: CLI end to end through the public API, key layout, width inference, rejections."""
import collections
import importlib.util
import json
import pathlib

import numpy as np
import pt_writer as torch_format  # tests/pt_writer.py: torch.save-format writer without torch
import pytest

from hybrid_jax.convert import efficientat as convert_efficientat
from hybrid_jax.convert import weights
from hybrid_jax.convert.efficientat import ConversionError
from hybrid_jax.convert.state_dict import read_state_dict
from hybrid_jax.models import pretrained

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _cli():
    spec = importlib.util.spec_from_file_location("convert_cli", ROOT / "tools" / "convert_efficientat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    folder = fixtures_dir / "efficientat_mn04"
    return folder, dict(np.load(folder / "arrays.npz"))


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory):
    """Both fixture files converted by the CLI, width inferred: {"pt": dir, "safetensors": dir}."""
    folder, _ = fixture
    out = {}
    for suffix in ("pt", "safetensors"):
        out[suffix] = tmp_path_factory.mktemp(suffix) / "mn04"
        assert _cli()([str(folder / f"state_dict.{suffix}"), str(out[suffix])]) == 0
    return out


def test_cli_output_and_config(converted, fixture):
    folder, _ = fixture
    variables_pt, config = weights.load(converted["pt"])
    variables_st, config_st = weights.load(converted["safetensors"])
    assert config["width_mult"] == 0.4 and config["num_classes"] == 527 and config["head"] == "mlp"
    assert config["mel"]["n_mels"] == 128 and config["mel"]["hop_length"] == 320
    assert config["model_name"] is None and config["source"].endswith("state_dict.pt")
    flat_pt, flat_st = weights.flatten(variables_pt), weights.flatten(variables_st)
    assert flat_pt.keys() == flat_st.keys() and len(flat_pt) == 312 - 46  # counters dropped
    for key in flat_pt:
        np.testing.assert_array_equal(flat_pt[key], flat_st[key], err_msg=key)
    kernel = flat_pt["params/features_2/block_1/conv/kernel"]  # depthwise: [C, 1, 3, 3] -> [3, 3, 1, C]
    torch_kernel = read_state_dict(folder / "state_dict.pt")["features.2.block.1.0.weight"]
    np.testing.assert_array_equal(kernel, torch_kernel.transpose(2, 3, 1, 0))


@pytest.mark.parametrize("suffix", ["pt", "safetensors"])
def test_public_api_matches_pytorch_end_to_end(converted, fixture, suffix):
    _, arrays = fixture
    encoder = pretrained.load_audio_encoder(converted[suffix])
    # Measured on XLA:CPU (float32 from the waveform, so the mel's rounding propagates through the
    # network): mel 3.3e-5, logits 8.6e-5, sequence 1.7e-3 and features 5.1e-4 of a peak of 87.
    mel = encoder.log_mel(arrays["waveform"])
    np.testing.assert_allclose(mel, arrays["mel"], rtol=0, atol=1e-4)
    out = encoder.embed(arrays["waveform"])
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in out.values())
    np.testing.assert_allclose(out["logits"], arrays["logits"], rtol=0, atol=2e-4)
    reference = arrays["embedding_sequence"]  # [B, C, F', T'] -> F'-mean, time-major
    atol = 4e-5 * np.abs(reference).max() + 1e-4
    np.testing.assert_allclose(out["sequence"], reference.mean(axis=2).transpose(0, 2, 1), rtol=0, atol=atol)
    np.testing.assert_allclose(out["features"], arrays["pooled_features"], rtol=0, atol=atol)
    assert encoder.mel_config.n_mels == 128 and encoder.module.width_mult == 0.4


def test_embed_file_reads_mono_at_32_khz(converted, fixture, tmp_path, monkeypatch):
    import soundfile

    _, arrays = fixture
    encoder = pretrained.load_audio_encoder(converted["pt"])
    # A 16 kHz stereo file whose channels differ (signal + and - a loud 1 kHz tone): only their
    # mean is the signal, so taking one channel (or summing) is caught. Resampled to 99200.
    wave = arrays["waveform"][0, ::2]
    tone = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(len(wave)) / 16000).astype(np.float32)
    soundfile.write(tmp_path / "clip.wav", np.stack([wave + tone, wave - tone], axis=1), 16000, subtype="FLOAT")
    soundfile.write(tmp_path / "mono.wav", wave, 16000, subtype="FLOAT")
    seen = []
    monkeypatch.setattr(encoder, "embed", lambda waveform: seen.append(waveform) or {})
    encoder.embed_file(tmp_path / "clip.wav")
    encoder.embed_file(tmp_path / "mono.wav")
    batch, mono = seen
    assert batch.shape == (1, 99200) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, mono, rtol=0, atol=1e-6)  # the mean of the two channels
    # Band-limited resampling keeps the low-frequency content: compare after a 4 kHz low-pass.
    spectrum = np.fft.rfft(batch[0]), np.fft.rfft(arrays["waveform"][0])
    low = slice(0, len(spectrum[0]) // 4)
    assert np.corrcoef(np.abs(spectrum[0][low]), np.abs(spectrum[1][low]))[0, 1] > 0.9


def test_key_map_shifts_indices_without_expansion():
    mn01 = convert_efficientat.key_map(0.1)
    # At mn01 blocks 1-4 have no expansion conv: their depthwise is sub-layer 0.
    assert mn01["features.4.block.0.0.weight"].rule.name == "depthwise_oihw_to_hwio"
    assert mn01["features.4.block.1.conc_se_layers.0.fc1.weight"].shape == (8, 8)
    assert mn01["features.4.block.2.0.weight"].shape == (8, 8, 1, 1)
    assert "features.4.block.3.0.weight" not in mn01
    mn40 = convert_efficientat.key_map(4.0)
    assert mn40["features.4.block.0.0.weight"].rule.name == "conv_oihw_to_hwio"
    assert mn40["features.4.block.3.1.running_var"].path == ("batch_stats", "features_4", "block_3", "bn", "var")
    assert len(mn40) + 46 == 312  # the state-dict listing of mn40_as_ext, less the BN counters
    assert mn40["features.0.0.weight"].shape == mn40["features.1.block.0.0.weight"].shape == (64, 1, 3, 3)


def _fixture_state_dict(fixture):
    return collections.OrderedDict(read_state_dict(fixture[0] / "state_dict.safetensors"))


def test_width_inference(fixture):
    state = _fixture_state_dict(fixture)
    assert convert_efficientat.infer_width(state) == 0.4
    without_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert convert_efficientat.infer_width(without_counters) == 0.4
    state["features.0.0.weight"] = np.zeros((24, 1, 3, 3), np.float32)
    with pytest.raises(ConversionError, match=r"no mn\* width.*\(24, 1, 3, 3\).*--width"):
        convert_efficientat.infer_width(state)


def test_rejections_name_every_problem(fixture, tmp_path):
    state = _fixture_state_dict(fixture)
    del state["features.5.block.2.conc_se_layers.0.fc2.bias"]
    state["features.17.0.weight"] = np.zeros((1,), np.float32)
    state["classifier.2.weight"] = np.zeros((512, 385), np.float32)
    path = tmp_path / "broken.pt"
    torch_format.save_zip(state, path)
    with pytest.raises(ConversionError) as error:
        convert_efficientat.convert_file(path, tmp_path / "out", width_mult=0.4)
    message = str(error.value)
    assert "broken.pt" in message and "1 missing: ['features.5.block.2.conc_se_layers.0.fc2.bias']" in message
    assert "1 unknown: ['features.17.0.weight']" in message
    assert "classifier.2.weight: (512, 385) instead of (512, 384)" in message
    assert _cli()([str(path), str(tmp_path / "out2"), "--width", "0.4"]) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_wrong_width_is_a_shape_error(fixture):
    with pytest.raises(ConversionError, match="wrong shape"):
        convert_efficientat.convert(_fixture_state_dict(fixture), 1.0)


def test_unsupported_heads_and_architectures(fixture):
    state = _fixture_state_dict(fixture)
    fc_head = {k: v for k, v in state.items() if not k.startswith("classifier")}
    fc_head["classifier.0.weight"] = np.zeros((527, 384, 1, 1), np.float32)
    with pytest.raises(ConversionError, match="'_fc'.*not supported"):
        convert_efficientat.infer_width(fc_head)
    with pytest.raises(ConversionError, match="DyMN"):
        convert_efficientat.convert({"layers.0.conv.weight": np.zeros(3)}, 1.0)


@pytest.mark.parametrize("name,width,hop,n_mels", [
    ("mn40_as_ext", 4.0, 320, 128), ("mn40_as(2)", 4.0, 320, 128), ("mn01_im", 0.1, 320, 128),
    ("mn10_as_hop_5", 1.0, 160, 128), ("mn10_as_hop_25", 1.0, 800, 128),
    ("mn10_as_mels_64", 1.0, 320, 64), ("mn40_as_ext_mAP_487.pt", 4.0, 320, 128),
])
def test_release_names(name, width, hop, n_mels):
    got_width, mel = convert_efficientat.release_settings(name)
    assert (got_width, mel.hop_length, mel.n_mels) == (width, hop, n_mels)


@pytest.mark.parametrize("name", ["dymn10_as", "mn10_as_fc", "mn10_as_fc_s2221"])
def test_release_names_not_supported(name):
    with pytest.raises(ConversionError, match="not supported"):
        convert_efficientat.release_settings(name)


def test_model_flag_sets_front_end(fixture, tmp_path):
    assert _cli()([str(fixture[0] / "state_dict.pt"), str(tmp_path / "a"), "--model", "mn04_as"]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model_name"] == "mn04_as" and config["width_mult"] == 0.4
    # The mel variants are mn10; with mn04 weights this must fail on shapes, not load silently.
    assert _cli()([str(fixture[0] / "state_dict.pt"), str(tmp_path / "b"), "--model", "mn10_as_mels_64"]) == 1
    with pytest.raises(SystemExit):
        _cli()([str(fixture[0] / "state_dict.pt"), str(tmp_path / "c"), "--model", "mn04_as", "--width", "0.4"])


def test_command_line_refuses_hostile_and_missing_files(tmp_path, capsys):
    """The command prints one ``error:`` line and exits 1 (no traceback) for a pickle that would
    run code, a zero-stride tensor of a huge size, and a missing file."""
    from commands import assert_clean_error, run_python

    evil = tmp_path / "evil.pt"
    payload = {"features.0.0.weight": np.ones(2, np.float32),
               "x": torch_format.Call(torch_format.Global("os", "system"), (f"touch {tmp_path / 'pwned'}",))}
    torch_format.save_zip(payload, evil)
    result = run_python("tools/convert_efficientat.py", str(evil), str(tmp_path / "out"))
    assert_clean_error(result, "evil.pt", "'os.system'")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
    # The other refusals in-process (the command is ``sys.exit(main())``): same exit code and line.
    huge = tmp_path / "huge.pt"
    storage = torch_format.Storage(np.ones(1, np.float32))
    torch_format.save_zip({"features.0.0.weight": torch_format.Tensor(storage, 0, (1 << 20, 1 << 20), (0, 0))}, huge)
    for path, words in ((huge, ("huge.pt", "refusing to allocate")), (tmp_path / "missing.pt", ("missing.pt",))):
        assert _cli()([str(path), str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and all(w in err for w in words), err
    assert not (tmp_path / "out").exists()
