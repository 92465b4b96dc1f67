"""Audio-metadata fusion: late fusion, mid-level (MMT-style) experts, and their similarity."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hybrid_jax.models.linear import Linear

FUSION_MODES = ("none", "late", "mid", "metadata_only")


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / ||x|| along the last axis, in float32; a zero vector stays zero (no NaN)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def late_fusion(audio_proj: jax.Array, meta_proj: jax.Array, meta_present: jax.Array) -> jax.Array:
    """normalize(audio + metadata), summed after projection; a missing item contributes nothing.

    audio_proj, meta_proj: [B, D]; meta_present: bool [B]. Returns [B, D] unit vectors."""
    return l2_normalize(audio_proj + meta_proj * meta_present[:, None].astype(meta_proj.dtype))


class GatedEmbeddingUnit(nn.Module):
    """Miech et al. 2018: Linear, then context gating y * sigmoid(W y + b), then L2 norm (PyTorch
    Linear initialisation, like every layer trained from scratch)."""

    dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [B, H] -> [B, dim]
        y = Linear(self.dim, dtype=self.dtype, name="fc")(x)
        gate = Linear(self.dim, dtype=self.dtype, name="gate")(y)
        return l2_normalize(y * jax.nn.sigmoid(gate))


class MidFusionQuery(nn.Module):
    """The query side of mid-level fusion: two gated embedding units and the mixture weights."""

    dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_features):  # [B, H]
        return {
            "audio_query": GatedEmbeddingUnit(self.dim, self.dtype, name="audio_geu")(query_features),
            "meta_query": GatedEmbeddingUnit(self.dim, self.dtype, name="meta_geu")(query_features),
            "mixture": jax.nn.softmax(
                Linear(2, dtype=self.dtype, name="mixture")(query_features).astype(jnp.float32), axis=-1
            ),
        }


def similarity(queries: dict, items: dict) -> jax.Array:
    """Query-item scores [Q, N] for any fusion mode.

    Single-embedding modes (none, late, metadata_only) carry ``queries["embedding"]`` [Q, D] and
    ``items["embedding"]`` [N, D]: the score is their cosine similarity. Mid-level fusion carries two
    experts per side; the score is ``w_a(q)·<q_a, i_a> + w_m(q)·<q_m, i_m>``, and for an item whose
    metadata is missing the audio expert alone decides (its weight renormalises to 1), as the MMT
    does for missing modalities.
    """
    if "embedding" in queries:
        return queries["embedding"] @ items["embedding"].T
    audio_sim = queries["audio_query"] @ items["audio"].T  # [Q, N]
    meta_sim = queries["meta_query"] @ items["meta"].T
    w = queries["mixture"]  # [Q, 2]
    mixed = w[:, :1] * audio_sim + w[:, 1:] * meta_sim
    return jnp.where(items["meta_present"][None, :], mixed, audio_sim)
