"""The hybrid retrieval model: audio tower + pooling, text tower, fusion, retrieval space."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from hybrid_jax.models import frontend, fusion
from hybrid_jax.models.bert import BertConfig, BertEncoder
from hybrid_jax.models.mobilenet import MobileNetV3
from hybrid_jax.models.pooling import PoolingTransformer

# One MobileNetV3 token covers 32 mel frames of 320 samples (efficientat.md, section 2.7).
SAMPLES_PER_TOKEN = 32 * 320


@dataclasses.dataclass(frozen=True)
class AudioSettings:
    """Audio tower settings (hashable, so the Flax module can hold them)."""

    width_mult: float = 4.0
    window_seconds: float = 10.0
    mel: frontend.MelConfig = frontend.MelConfig()
    depthwise: str = "auto"
    bn_momentum: float = 0.99  # BN running-average decay (EfficientAT: PyTorch momentum 0.01)
    remat: bool = False  # recompute each CNN block in the backward (keeps only block inputs)


@dataclasses.dataclass(frozen=True)
class PoolingSettings:
    dim: int = 768
    num_layers: int = 1
    num_heads: int = 12
    mlp_dim: int = 2048
    dropout: float = 0.1
    max_len: int = 192


class AudioTower(nn.Module):
    """int16/float waveform [B, S] -> token sequence [B, T, C] and its padding mask [B, T].

    The clip is cut into ``window_seconds`` windows (hop = window), each window goes through the mel
    front end and the CNN, and the windows' frequency-averaged tokens are concatenated in time.
    """

    settings: AudioSettings
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, audio, valid_fraction, *, train: bool):
        s = self.settings
        wave = audio.astype(jnp.float32)
        if audio.dtype == jnp.int16:
            wave = wave / 32768.0
        window = int(round(s.window_seconds * s.mel.sample_rate))
        batch, length = wave.shape
        num_windows = -(-length // window)
        wave = jnp.pad(wave, ((0, 0), (0, num_windows * window - length)))
        windows = wave.reshape(batch * num_windows, window)
        rng = self.make_rng("augment") if train else None
        mel = frontend.log_mel(windows, s.mel, rng=rng)  # [B*W, F, T]
        cnn = MobileNetV3(width_mult=s.width_mult, num_classes=0, depthwise=s.depthwise,
                          bn_momentum=s.bn_momentum, dtype=self.dtype, remat=s.remat,
                          name="mobilenet")
        tokens = cnn(mel, train=train)["sequence"]  # [B*W, T', C]
        per_window = tokens.shape[1]
        tokens = tokens.reshape(batch, num_windows * per_window, tokens.shape[-1])
        # A token is real when its first sample lies inside the valid (non-padded) part of the clip.
        valid_samples = valid_fraction.astype(jnp.float32) * length
        starts = jnp.arange(num_windows * per_window)
        starts = (starts // per_window) * window + (starts % per_window) * SAMPLES_PER_TOKEN
        mask = starts[None, :] < jnp.maximum(valid_samples[:, None], 1.0)
        return tokens, mask


class RetrievalModel(nn.Module):
    """Hybrid (audio + metadata) text-to-audio retrieval model.

    ``fusion``: "none" (content-only baseline), "late" (sum of projected audio and metadata
    embeddings, then normalise), "mid" (metadata token in the pooling transformer, gated query
    experts), or "metadata_only". Queries and metadata share one BERT and one text projection unless
    ``separate_metadata_encoder`` is set (the paper's ablation). Items whose metadata is missing
    (``meta_present`` False) are embedded from audio alone in every mode.
    """

    audio: AudioSettings
    text: BertConfig
    pooling: PoolingSettings = PoolingSettings()
    fusion: str = "late"
    embed_dim: int = 1024
    separate_metadata_encoder: bool = False
    text_trainable: bool = True
    text_remat: bool = False
    learn_temperature: bool = False
    initial_temperature: float = 0.05
    loss: str = "nt_xent"  # "nt_xent" or "siglip" (adds the learnable SigLIP scale and bias)
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        if self.fusion not in fusion.FUSION_MODES:
            raise ValueError(f"fusion must be one of {fusion.FUSION_MODES}, got {self.fusion!r}")
        self.audio_tower = AudioTower(self.audio, dtype=self.dtype)
        self.pool = PoolingTransformer(**dataclasses.asdict(self.pooling), dtype=self.dtype)
        self.bert = BertEncoder(self.text, dtype=self.dtype, remat=self.text_remat)
        if self.separate_metadata_encoder:
            self.meta_bert = BertEncoder(self.text, dtype=self.dtype, remat=self.text_remat)
            self.meta_proj = nn.Dense(self.embed_dim)
        self.text_proj = nn.Dense(self.embed_dim)
        self.audio_proj = nn.Dense(self.embed_dim)
        if self.fusion == "mid":
            self.meta_token = nn.Dense(self.pooling.dim)
            self.meta_expert_proj = nn.Dense(self.embed_dim)
            self.query_experts = fusion.MidFusionQuery(self.embed_dim, dtype=self.dtype)
        self.log_temperature = self.param(
            "log_temperature", lambda _: jnp.log(jnp.asarray(self.initial_temperature, jnp.float32))
        )
        if self.loss == "siglip":  # SigLIP paper init: t' = log 10 (scale = exp t'), bias = -10
            self.siglip_log_scale = self.param("siglip_log_scale", lambda _: jnp.log(jnp.float32(10.0)))
            self.siglip_bias = self.param("siglip_bias", lambda _: jnp.float32(-10.0))

    def temperature(self):
        t = jnp.exp(self.log_temperature)
        return t if self.learn_temperature else jax.lax.stop_gradient(t)

    def logit_params(self) -> dict:
        """The loss's scalars: {"temperature"} for NT-Xent, {"scale", "bias"} (learned) for SigLIP."""
        if self.loss == "siglip":
            return {"scale": jnp.exp(self.siglip_log_scale), "bias": self.siglip_bias}
        return {"temperature": self.temperature()}

    def _cls(self, encoder, ids, mask, types, train):
        hidden = encoder(ids, mask, types, train=train)["last_hidden_state"]
        cls = hidden[:, 0].astype(jnp.float32)  # [B, H]
        return cls if self.text_trainable else jax.lax.stop_gradient(cls)

    def embed_queries(self, batch, *, train: bool):
        """Query tokens (``query_ids``/``query_mask``/``query_types`` [B, L]) -> query dict."""
        cls = self._cls(self.bert, batch["query_ids"], batch["query_mask"], batch.get("query_types"), train)
        if self.fusion == "mid":
            return self.query_experts(cls)
        return {"embedding": fusion.l2_normalize(self.text_proj(cls))}

    def _metadata(self, batch, train):
        encoder = self.meta_bert if self.separate_metadata_encoder else self.bert
        proj = self.meta_proj if self.separate_metadata_encoder else self.text_proj
        cls = self._cls(encoder, batch["meta_ids"], batch["meta_mask"], batch.get("meta_types"), train)
        return cls, proj

    def embed_items(self, batch, *, train: bool):
        """Items (``audio`` [B, S], ``audio_valid`` [B], metadata tokens, ``meta_present`` [B])."""
        present = batch["meta_present"].astype(bool)
        if self.fusion == "metadata_only":
            cls, proj = self._metadata(batch, train)
            return {"embedding": fusion.l2_normalize(proj(cls) * present[:, None])}
        tokens, mask = self.audio_tower(batch["audio"], batch["audio_valid"], train=train)
        if self.fusion == "mid":
            cls, _ = self._metadata(batch, train)
            meta_token = self.meta_token(cls)[:, None, :]  # [B, 1, dim]
            pooled, extra = self.pool(tokens, mask, meta_token, present[:, None], train=train)
            return {
                "audio": fusion.l2_normalize(self.audio_proj(pooled)),
                "meta": fusion.l2_normalize(self.meta_expert_proj(extra[:, 0])),
                "meta_present": present,
            }
        pooled, _ = self.pool(tokens, mask, train=train)
        audio_proj = self.audio_proj(pooled)
        if self.fusion == "none":
            return {"embedding": fusion.l2_normalize(audio_proj)}
        cls, proj = self._metadata(batch, train)
        return {"embedding": fusion.late_fusion(audio_proj, proj(cls), present)}

    def __call__(self, batch, *, train: bool):
        """Both sides of a training batch -> (queries, items, temperature)."""
        return self.embed_queries(batch, train=train), self.embed_items(batch, train=train), self.temperature()
