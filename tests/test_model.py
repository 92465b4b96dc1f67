"""The retrieval model in every fusion mode: shapes, finite gradients that reach the right towers,
and missing metadata."""
import dataclasses
import math

import jax
import numpy as np
import pytest

from hybrid_jax.models import frontend, fusion
from hybrid_jax.models.bert import BertConfig
from hybrid_jax.models.frontend import MelConfig
from hybrid_jax.models.mobilenet import MobileNetV3, random_variables
from hybrid_jax.models.retrieval import AudioSettings, AudioTower, PoolingSettings, RetrievalModel
from hybrid_jax.steps import loss_and_updates

B, L, SR = 4, 8, 32000
TINY_BERT = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=16)


def tiny_model(mode, tokens="window", **kw):
    return RetrievalModel(
        audio=AudioSettings(width_mult=0.1, window_seconds=0.5, mel=MelConfig(freq_mask_bins=8, time_mask_frames=10),
                            tokens=tokens),
        text=TINY_BERT,
        pooling=PoolingSettings(dim=16, num_layers=1, num_heads=2, mlp_dim=32, dropout=0.1, max_len=16),
        fusion=mode, embed_dim=12, **kw)


def tiny_batch(seed=0, clip_seconds=1.0):
    rng = np.random.default_rng(seed)
    ids = lambda: rng.integers(1, 50, (B, L)).astype(np.int32)  # noqa: E731
    return {
        "audio": (rng.standard_normal((B, int(clip_seconds * SR))) * 3000).astype(np.int16),
        "audio_valid": np.array([1.0, 0.5, 1.0, 0.3], np.float32),
        "query_ids": ids(), "query_mask": np.ones((B, L), np.int32), "query_types": np.zeros((B, L), np.int32),
        "meta_ids": ids(), "meta_mask": np.ones((B, L), np.int32), "meta_types": np.zeros((B, L), np.int32),
        "meta_present": np.array([True, True, False, True]),
        "item_id": np.array([0, 1, 1, 2], np.int32),
    }


def init(model, batch):
    return model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1),
                       "augment": jax.random.PRNGKey(2)}, batch, train=False)


@pytest.mark.parametrize("mode,tokens", [(m, "window") for m in fusion.FUSION_MODES] + [("mid", "frame")])
def test_fusion_mode_shapes_and_gradients(mode, tokens):
    model, batch = tiny_model(mode, tokens), tiny_batch()
    variables = init(model, batch)
    queries, items, tau = model.apply(variables, batch, train=False)
    sim = fusion.similarity(queries, items)
    assert sim.shape == (B, B) and np.isfinite(sim).all()
    assert float(tau) == pytest.approx(0.05)
    grad_fn = jax.grad(lambda p: loss_and_updates(model, p, variables.get("batch_stats", {}), batch,
                                                  jax.random.PRNGKey(3))[0])
    grads = grad_fn(variables["params"])
    # Every parameter group the mode uses gets a non-zero, finite gradient in every one of its
    # leaves (per sub-module, e.g. both gated units of the mid-fusion query), and only those
    # groups exist; the temperature is not learned here, so its gradient is exactly zero.
    assert set(grads) == EXPECTED_GROUPS[mode] | {"log_temperature"}
    assert float(grads.pop("log_temperature")) == 0.0
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        leaf = np.asarray(leaf)
        assert np.isfinite(leaf).all() and np.abs(leaf).max() > 0, jax.tree_util.keystr(path)


TOWERS = {"audio_tower", "pool", "audio_proj", "bert"}
EXPECTED_GROUPS = {
    "none": TOWERS | {"text_proj"},
    "late": TOWERS | {"text_proj"},  # metadata through the query BERT and projection
    "mid": TOWERS | {"meta_token", "meta_expert_proj", "query_experts"},  # no text_proj
    "metadata_only": {"bert", "text_proj"},
}


def test_missing_metadata_late_fusion_equals_audio_only_embedding():
    batch = tiny_batch()
    late, base = tiny_model("late"), tiny_model("none")
    variables = init(late, batch)
    items = late.apply(variables, batch, train=False, method=RetrievalModel.embed_items)
    base_vars = {"params": {k: v for k, v in variables["params"].items() if k in init(base, batch)["params"]},
                 "batch_stats": variables["batch_stats"]}
    audio_only = base.apply(base_vars, batch, train=False, method=RetrievalModel.embed_items)
    np.testing.assert_allclose(items["embedding"][2], audio_only["embedding"][2], atol=1e-6)
    assert np.abs(items["embedding"][0] - audio_only["embedding"][0]).max() > 1e-3


def test_separate_metadata_encoder_has_its_own_bert():
    model, batch = tiny_model("late", separate_metadata_encoder=True), tiny_batch()
    params = init(model, batch)["params"]
    assert "meta_bert" in params and "meta_proj" in params


def test_window_and_frame_tokens_and_their_masks():
    """Window tokens are the CNN's pooled embedding per window, frame tokens its frequency-averaged
    feature map, both clip-major in time order; the first ceil(valid x T) tokens are real."""
    batch = tiny_batch()  # 1 s clips: two 0.5 s windows
    settings = dataclasses.replace(tiny_model("none").audio, depthwise="native")  # fewer ops to compile
    towers = {t: AudioTower(dataclasses.replace(settings, tokens=t)) for t in ("window", "frame")}
    cnn = MobileNetV3(width_mult=settings.width_mult, num_classes=0, depthwise="native")
    cnn_variables = random_variables(cnn)  # NumPy draws: no init program to compile
    variables = {k: {"mobilenet": v} for k, v in cnn_variables.items()}
    windows = (batch["audio"].astype(np.float32) / 32768.0).reshape(B * 2, -1)

    @jax.jit  # one program: op by op, the CNN takes minutes on 2 cores
    def run(audio, valid):
        out = {t: tower.apply(variables, audio, valid, train=False) for t, tower in towers.items()}
        return out, cnn.apply(cnn_variables, frontend.log_mel(windows, settings.mel), train=False)

    out, ref = run(batch["audio"], batch["audio_valid"])
    per_window = ref["sequence"].shape[1]
    frame_tokens, frame_mask = out["frame"]
    window_tokens, window_mask = out["window"]
    np.testing.assert_allclose(frame_tokens, ref["sequence"].reshape(B, 2 * per_window, -1), atol=1e-5)
    np.testing.assert_allclose(window_tokens, ref["features"].reshape(B, 2, -1), atol=1e-5)
    for mask, count in ((frame_mask, 2 * per_window), (window_mask, 2)):
        valid = np.round(batch["audio_valid"] * SR).astype(int)  # valid samples of the 1 s clips
        expected = [np.arange(count) < -(-v * count // SR) for v in valid]
        np.testing.assert_array_equal(mask, np.array(expected))


def test_token_thresholds_equal_the_authors_float64_ceil():
    from hybrid_jax.models.retrieval import valid_token_thresholds

    samples = 48_000
    valid = np.arange(samples + 1)
    for tokens in (1, 3, 32, 96):
        counts = (valid[:, None] >= valid_token_thresholds(tokens, samples)[None, :]).sum(axis=1)
        expected = [math.ceil((v / samples) * tokens) for v in valid]
        np.testing.assert_array_equal(counts, expected, err_msg=f"{tokens} tokens")
