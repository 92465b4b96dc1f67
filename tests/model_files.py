"""Small model directories and sound files for the inference, search and serve tests.

``save_tiny_model`` writes a randomly initialised (not trained) model directory with
``model_dir.save``: the real format, loaded by the real ``load_model``. It is sized so that every
test module compiling it costs seconds: mn01 width, 32 mel bands from a 256-point FFT, 1 s CNN
windows (4 tokens each), 2 s segments, a 1-layer 16-wide BERT. The same settings everywhere let
XLA's persistent compilation cache (tests/conftest.py) share the compiled programs between
modules and with the subprocesses the CLI tests start.
"""
from __future__ import annotations

import functools
import pathlib

import jax
import numpy as np
import soundfile as sf
from test_model import TINY_BERT

from hybrid_jax import model_dir
from hybrid_jax.models.frontend import MelConfig
from hybrid_jax.models.mobilenet import BN_MOMENTUM
from hybrid_jax.models.retrieval import AudioSettings, PoolingSettings, RetrievalModel

BATCH_SIZE = 8  # segments per jitted call in the tests (one row per emulated device)
SEGMENT_SECONDS = 2.0
WORDS = ("dog bark barks rain falls on a the roof bird birds sing sings car engine water wind door "
         "knock knocks footsteps people talk talking music piano bell church thunder storm sea waves "
         "train horn siren city traffic leaves fire crackles field recording").split()


def tiny_model(mode: str = "late") -> RetrievalModel:
    return RetrievalModel(
        audio=AudioSettings(width_mult=0.1, window_seconds=1.0, mel=MelConfig(n_mels=32, n_fft=256, win_length=200)),
        text=TINY_BERT,
        pooling=PoolingSettings(dim=16, num_layers=1, num_heads=2, mlp_dim=32, dropout=0.1, max_len=16),
        fusion=mode, embed_dim=12)


def write_vocab(folder: pathlib.Path) -> pathlib.Path:
    """A WordPiece vocabulary of TINY_BERT's 50 entries."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    assert len(tokens) <= TINY_BERT.vocab_size, len(tokens)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return folder


def calibrate_batch_norm(model: RetrievalModel, variables: dict, seed: int = 0) -> dict:
    """The CNN's running statistics set to those of one batch of noise, as training leaves them.

    EfficientAT's init (kaiming, fan-out) shrinks the activations by about 1/sqrt(C) per depthwise
    layer; in eval mode the initial statistics (mean 0, var 1) do not undo that, so an untrained
    CNN's tokens are ~1e-7 and every recording embeds alike. One train-mode step moves each
    running value by (1 - momentum) towards the batch's; solving for the batch's gives them exactly.
    """
    audio = (np.random.default_rng(seed).standard_normal((4, 32000)) * 3000).astype(np.int16)

    def tower(module, audio, valid, train):
        return module.audio_tower(audio, valid, train=train)

    keys = {k: jax.random.key(seed + 10 + i, impl="rbg") for i, k in enumerate(("dropout", "augment"))}
    _, updated = jax.jit(functools.partial(model.apply, train=True, method=tower, mutable=["batch_stats"]))(
        variables, audio, np.ones(4, np.float32), rngs=keys)
    m = BN_MOMENTUM

    def solve(old, new):
        return (np.asarray(new) - m * np.asarray(old)) / (1 - m)

    stats = jax.tree.map(solve, variables["batch_stats"], jax.device_get(updated["batch_stats"]))
    return {**variables, "batch_stats": stats}


def save_tiny_model(directory: pathlib.Path, mode: str = "late", seed: int = 0) -> pathlib.Path:
    model = tiny_model(mode)
    batch = {"audio": np.zeros((1, 32000), np.int16), "audio_valid": np.ones(1, np.float32),
             **{k: np.ones((1, 8), np.int32) for k in ("query_ids", "query_mask", "meta_ids", "meta_mask")},
             "query_types": np.zeros((1, 8), np.int32), "meta_types": np.zeros((1, 8), np.int32),
             "meta_present": np.ones(1, bool)}
    # rbg keys: threefry compiles one large kernel per parameter on XLA:CPU (minutes; see state.py).
    keys = {k: jax.random.key(seed + i, impl="rbg") for i, k in enumerate(("params", "dropout", "augment"))}
    # Jitted: eager initialisation dispatches every op on its own (minutes on 8 emulated devices).
    variables = jax.device_get(jax.jit(functools.partial(model.init, train=False))(keys, batch))
    variables = calibrate_batch_norm(model, variables, seed)
    vocab = write_vocab(directory.parent / f"{directory.name}_vocab")
    return model_dir.save(directory, model, variables, vocab, max_length=8, segment_seconds=SEGMENT_SECONDS,
                          card={"training_data": "none: randomly initialised test model"})


def write_sound(path: pathlib.Path, seconds: float, rate: int = 32000, channels: int = 1, seed: int = 0,
                subtype: str = "PCM_16") -> pathlib.Path:
    """Band-limited noise bursts (a different sound per seed), written with soundfile."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    tone = np.sin(2 * np.pi * (200 + 150 * seed) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * (1 + seed % 3) * t))
    wave = 0.3 * tone + 0.05 * rng.standard_normal(n)
    if channels > 1:  # different channels, so a wrong down-mix shows
        wave = np.stack([wave * (1.0 - 0.4 * c) + 0.2 * np.sin(2 * np.pi * 523.0 * (c + 1) * t) for c in range(channels)], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), rate, subtype=subtype)
    return path


def tiny_demo_config():
    """configs/demo.py with a model small enough to train or compile in seconds (the tests that
    run the real training loop or a whole-step TPU compile)."""
    from configs import demo

    c = demo.get_config()
    c.model.audio.width_mult = 0.1
    c.model.audio.window_seconds = 1.0
    c.model.audio.freq_mask_bins, c.model.audio.time_mask_frames = 8, 20
    c.model.pooling.dim, c.model.pooling.num_heads, c.model.pooling.mlp_dim = 32, 2, 64
    c.model.pooling.max_len = 16
    c.model.fusion.embed_dim = 32
    return c
