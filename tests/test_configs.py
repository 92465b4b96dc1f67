"""Every configs/*.py imports, passes config_checks and builds, with towers converted from the test
fixtures (EfficientAT mn04, a random tiny BERT) standing in for the released weights; the graft of
``init_state`` puts exactly the converted variables into the model; a missing checkpoint fails at
once, naming its path.

The configs are built as they are, whatever keys they gain: only the ``pretrained/...`` paths (the
released weights, absent here) are replaced.
"""
import importlib
import json
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util
from test_convert_bert import write_vocab

from configs import demo
from hybrid_jax import config_checks, optim, sharding, train
from hybrid_jax.convert import bert as convert_bert
from hybrid_jax.convert import efficientat as convert_efficientat
from hybrid_jax.convert import weights
from hybrid_jax.models import build, frontend
from hybrid_jax.state import init_state

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAMES = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")
RELEASED = "pretrained/"  # the prefix of every released-weights path in the configs


def get_config(name: str):
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.fixture(scope="module")
def towers(fixtures_dir, tmp_path_factory):
    """(audio dir, text dir): the fixtures converted by the converters a user runs."""
    root = tmp_path_factory.mktemp("towers")
    audio = root / "mn04"
    convert_efficientat.convert_file(fixtures_dir / "efficientat_mn04" / "state_dict.pt", audio)
    # A front end unlike the configs' (64 mel bands, as the mn10_as_mels_64 release has; the CNN's
    # weights do not depend on it), so a model built from the config's mel settings is caught.
    saved = json.loads((audio / "config.json").read_text())
    saved["mel"]["n_mels"] = 64
    (audio / "config.json").write_text(json.dumps(saved))
    source = root / "bert_tiny_hf"
    source.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(fixtures_dir / "bert_tiny" / name, source / name)
    write_vocab(source)
    convert_bert.convert_checkpoint(source, root / "bert_tiny")
    return audio, root / "bert_tiny"


def with_towers(config, towers):
    """``config`` with the released-weights paths pointing at the converted fixtures."""
    audio, text = towers
    if (config.model.audio.checkpoint or "").startswith(RELEASED):
        config.model.audio.checkpoint = str(audio)
    if config.model.text.checkpoint.startswith(RELEASED):
        config.model.text.checkpoint = str(text)
    return config


@pytest.fixture(scope="module")
def built_configs(towers):
    """{name: (config, Built)} for every config (building reads the towers, nothing is initialised)."""
    out = {}
    for name in NAMES:
        config = with_towers(get_config(name), towers)
        out[name] = config, build.build(config.model)
    return out


def test_the_paper_configs_are_all_here():
    assert len(NAMES) >= 20 and {"base", "clotho_late", "clotho_mid", "audiocaps_late", "wavcaps_tags",
                                 "clotho_late_separate", "demo", "demo_baseline"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_passes_the_checks(name):
    config = get_config(name)
    config_checks.check(config)  # the device-independent checks
    config_checks.check(config, num_devices=jax.device_count(), process_count=1)  # 8 devices here


@pytest.mark.parametrize("name", NAMES)
def test_paper_rows_state_their_audio_tokens_and_pooling_layers(name):
    """Each paper row says in its docstring which audio tokens and how many pooling layers it uses,
    as its code sets them (the paper's "multiple" layers: at least 2)."""
    module = importlib.import_module(f"configs.{name}")
    if "Paper:" not in (module.__doc__ or ""):
        return
    config = module.get_config()
    stated = re.search(r'Model: "(\w+)" audio tokens .*? and (\d+) pooling', " ".join(module.__doc__.split()))
    assert stated, f"configs/{name}.py does not state its audio tokens and pooling layers"
    assert (config.model.audio.tokens, config.model.pooling.num_layers) == (stated[1], int(stated[2]))
    assert config.model.pooling.num_layers >= 2


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_from_its_checkpoints(name, built_configs, towers):
    config, built = built_configs[name]
    original = get_config(name).model
    model, mel = built.model, built.model.audio.mel
    assert model.fusion == original.fusion.mode and model.embed_dim == original.fusion.embed_dim
    assert model.separate_metadata_encoder == original.text.separate_metadata_encoder
    assert model.text_trainable == original.text.trainable
    # SpecAugment comes from the config in both branches of build.
    assert (mel.freq_mask_bins, mel.time_mask_frames) == (original.audio.freq_mask_bins,
                                                          original.audio.time_mask_frames)
    uses_checkpoint = bool(original.audio.checkpoint) and original.fusion.mode != "metadata_only"
    if uses_checkpoint:
        # The checkpoint branch: width and mel front end from the converted tower, not the config.
        _, saved = weights.load(towers[0])
        saved_mel = frontend.MelConfig(**saved["mel"])
        assert built.audio_variables is not None
        assert model.audio.width_mult == saved["width_mult"] == 0.4 != original.audio.width_mult
        assert mel.n_mels == 64 != original.audio.n_mels
        for key in ("hop_length", "n_fft", "win_length", "sample_rate", "fmin"):
            assert getattr(mel, key) == getattr(saved_mel, key), key
        assert mel.fmax == saved_mel.fmax_hz
    else:
        assert built.audio_variables is None
        assert model.audio.width_mult == original.audio.width_mult and mel.n_mels == original.audio.n_mels
    text_dir = build.text_checkpoint_dir(config.model.text.checkpoint)
    assert built.text_variables is not None and (text_dir / "variables.safetensors").is_file()
    assert model.text.hidden_dropout_prob == original.text.dropout  # the config's dropout wins
    assert built.tokenizer.tokenize(["a dog barks"])["input_ids"].shape == (1, original.text.max_length)


def example_batch(model):
    """One tiny example (0.5 s of audio, padded to a window inside the model) for the shapes."""
    length = 8
    zeros = np.zeros((1, length), np.int32)
    return {"audio": np.zeros((1, 16000), np.int16), "audio_valid": np.ones(1, np.float32),
            "query_ids": zeros + 1, "query_mask": zeros + 1, "query_types": zeros,
            "meta_ids": zeros + 1, "meta_mask": zeros + 1, "meta_types": zeros,
            "meta_present": np.ones(1, bool), "item_id": np.zeros(1, np.int32)}


def flat(tree) -> dict:
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def assert_grafted(variables: dict, converted: dict, where: str) -> int:
    """Every leaf of ``variables`` equals the converted leaf of the same path; returns the count."""
    got, want = flat(variables), flat(converted)
    for path, value in got.items():
        assert path in want, f"{where}/{path} is not in the converted tower"
        np.testing.assert_array_equal(value, want[path], err_msg=f"{where}/{path}")
    return len(got)


@pytest.mark.slow
def test_init_state_grafts_exactly_the_converted_towers(built_configs):
    """One config whose model has every grafted part (CNN params and BN statistics, the query BERT
    and the separate metadata BERT); compiling a paper-size init takes ~2 min on busy CPUs, so the
    other configs, which hold the same grafted modules, are only built above. The random-init
    branch (demo configs) is trained by tests/test_train.py."""
    config, built = built_configs["clotho_late_separate"]
    mesh = sharding.make_mesh(config.mesh.shape)
    tx, _ = optim.make_optimizer(config.optim, steps_per_epoch=10)
    state, _ = init_state(built, tx, example_batch(built.model), config, mesh)
    params = state.params
    for encoder in ("bert", "meta_bert"):
        assert assert_grafted(params[encoder], built.text_variables["params"], encoder) > 10
    tower = {"params": params["audio_tower"]["mobilenet"], "batch_stats": state.batch_stats["audio_tower"]["mobilenet"]}
    count = assert_grafted(tower, built.audio_variables, "audio_tower/mobilenet")
    # Everything but the AudioSet classifier head (not part of the tower) was grafted.
    head = [p for p in flat(built.audio_variables) if p.startswith("params/classifier")]
    assert count == len(flat(built.audio_variables)) - len(head) and head


@pytest.mark.parametrize("key", ["audio", "text"])
def test_a_missing_checkpoint_fails_at_once_naming_its_path(key, tmp_path, towers):
    """Before any data is generated or anything is compiled: the first thing train does."""
    config = demo.get_config()
    config.data.synthetic_dir = str(tmp_path / "raw")
    config.data.data_dir = str(tmp_path / "tfds")
    config.model.audio.checkpoint = str(towers[0])
    missing = tmp_path / "pretrained" / f"{key}_release"
    config.model[key].checkpoint = str(missing)
    with pytest.raises(FileNotFoundError, match=rf"{key} \(config\.model\.{key}\.checkpoint\) checkpoint "
                                                rf"{missing} not found"):
        train.train_and_evaluate(config, tmp_path / "workdir")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "tfds").exists()
