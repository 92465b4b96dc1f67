"""The hybrid retrieval model: audio tower + pooling, text tower, fusion, retrieval space."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hybrid_jax.backend import policy as backend_policy
from hybrid_jax.models import frontend, fusion
from hybrid_jax.models.bert import BertConfig, BertEncoder
from hybrid_jax.models.linear import Linear
from hybrid_jax.models.mobilenet import MobileNetV3
from hybrid_jax.models.pooling import PoolingTransformer

# What becomes an audio token: the CNN's pooled embedding of each window ("window", the authors'
# return_sequence=False) or its frequency-averaged feature map, one token per time step ("frame",
# their return_sequence=True).
TOKEN_MODES = ("window", "frame")


@dataclasses.dataclass(frozen=True)
class AudioSettings:
    """Audio tower settings (hashable, so the Flax module can hold them)."""

    width_mult: float = 4.0
    window_seconds: float = 10.0
    mel: frontend.MelConfig = frontend.MelConfig()
    depthwise: str = "auto"
    stft: str = "auto"  # "fft" / "matmul" (frontend.STFT_IMPLS); "auto": this process's policy
    bn_momentum: float = 0.99  # BN running-average decay (EfficientAT: PyTorch momentum 0.01)
    remat: bool = False  # recompute each CNN block in the backward (keeps only block inputs)
    tokens: str = "window"  # TOKEN_MODES: one token per window, or one per CNN time step


@dataclasses.dataclass(frozen=True)
class PoolingSettings:
    """PoolingTransformer settings (see its docstring)."""

    dim: int = 768
    num_layers: int = 2
    num_heads: int = 12
    mlp_dim: int = 2048
    dropout: float = 0.1
    max_len: int = 192
    position_dropout: float = 0.1


def valid_token_thresholds(num_tokens: int, num_samples: int) -> np.ndarray:
    """int32 [T]: token t is real iff the clip's valid samples v >= thresholds[t].

    The authors' mask keeps the first ceil(v / S * T) of the T tokens (S = samples the tokens
    cover). Written as v > t * S / T, i.e. v >= floor(t * S / T) + 1, it is exact integer
    arithmetic, equal to their float64 ``math.ceil`` for every v in [0, S] (checked for the clip
    and token counts in use), where float32 would be off at the boundaries."""
    t = np.arange(num_tokens, dtype=np.int64)
    return ((t * num_samples) // num_tokens + 1).astype(np.int32)


class AudioTower(nn.Module):
    """int16/float waveform [B, S] -> token sequence [B, T, C] and its padding mask [B, T].

    The clip is cut into ``window_seconds`` windows (hop = window; the last one zero-padded, where
    the authors' ``unfold`` would drop a partial window: their clips are always whole windows),
    each window goes through the mel front end and the CNN. ``tokens="window"``: one token per
    window, the CNN's pooled embedding (T = windows); ``"frame"``: the frequency-averaged feature
    map, T' tokens per window concatenated in time (T = windows x T', T' set by the front end's
    hop and the CNN's strides). The mask keeps the first ceil(valid_fraction x T) tokens, as the
    authors' ``forward_audio`` does (the CNN itself encodes padded windows like any audio).

    Intermediates: ``mel`` [B*W, F, frames], ``tokens`` [B, T, C], ``mask`` [B, T].
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
        stft = backend_policy.local().stft if s.stft == "auto" else s.stft  # build resolves it
        mel = frontend.log_mel(windows, s.mel, rng=rng, stft=stft)  # [B*W, F, T]
        self.sow("intermediates", "mel", mel)
        cnn = MobileNetV3(width_mult=s.width_mult, num_classes=0, depthwise=s.depthwise,
                          bn_momentum=s.bn_momentum, dtype=self.dtype, remat=s.remat,
                          name="mobilenet")
        out = cnn(mel, train=train)
        if s.tokens == "window":
            tokens = out["features"][:, None, :]  # [B*W, 1, C]
        elif s.tokens == "frame":
            tokens = out["sequence"]  # [B*W, T', C]
        else:
            raise ValueError(f"audio tokens must be one of {TOKEN_MODES}, got {s.tokens!r}")
        tokens = tokens.reshape(batch, num_windows * tokens.shape[1], tokens.shape[-1])
        # Valid samples as an integer (exact for clips under ~2 min at float32), then the mask.
        valid_samples = jnp.round(valid_fraction.astype(jnp.float32) * length).astype(jnp.int32)
        thresholds = valid_token_thresholds(tokens.shape[1], num_windows * window)
        mask = valid_samples[:, None] >= jnp.asarray(thresholds)[None, :]
        self.sow("intermediates", "tokens", tokens)
        self.sow("intermediates", "mask", mask)
        return tokens, mask


class RetrievalModel(nn.Module):
    """Hybrid (audio + metadata) text-to-audio retrieval model.

    ``fusion``: "none" (content-only baseline), "late" (sum of projected audio and metadata
    embeddings, then normalise), "mid" (metadata token in the pooling transformer, gated query
    experts), or "metadata_only". Queries and metadata share one BERT and one text projection unless
    ``separate_metadata_encoder`` is set (the paper's ablation). Items whose metadata is missing
    (``meta_present`` False) are embedded from audio alone in every mode. The layers trained from
    scratch (projections, pooling, fusion heads) get PyTorch's initialisation (``linear``).

    Intermediates (``mutable=["intermediates"]``): the audio tower's and the pooling's (see
    there), and ``query_embedding``, ``audio_embedding``, ``metadata_embedding`` (the projections
    before fusion and normalisation).
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
        if self.fusion == "mid" and self.pooling.num_layers == 0:
            raise ValueError("mid-level fusion needs at least one pooling layer (pooling.num_layers)")
        self.pool = PoolingTransformer(**dataclasses.asdict(self.pooling), dtype=self.dtype)
        self.bert = BertEncoder(self.text, dtype=self.dtype, remat=self.text_remat)
        if self.separate_metadata_encoder:
            self.meta_bert = BertEncoder(self.text, dtype=self.dtype, remat=self.text_remat)
            self.meta_proj = Linear(self.embed_dim)
        self.text_proj = Linear(self.embed_dim)
        self.audio_proj = Linear(self.embed_dim)
        if self.fusion == "mid":
            self.meta_token = Linear(self.pooling.dim)
            self.meta_expert_proj = Linear(self.embed_dim)
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
        embedding = self.text_proj(cls)
        self.sow("intermediates", "query_embedding", embedding)
        return {"embedding": fusion.l2_normalize(embedding)}

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
        self.sow("intermediates", "audio_embedding", audio_proj)
        if self.fusion == "none":
            return {"embedding": fusion.l2_normalize(audio_proj)}
        cls, proj = self._metadata(batch, train)
        meta_proj = proj(cls)
        self.sow("intermediates", "metadata_embedding", meta_proj)
        return {"embedding": fusion.late_fusion(audio_proj, meta_proj, present)}

    def __call__(self, batch, *, train: bool):
        """Both sides of a training batch -> (queries, items, temperature)."""
        return self.embed_queries(batch, train=train), self.embed_items(batch, train=train), self.temperature()
