"""Transformer pooling of the audio token sequence into one vector via a global token."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def sinusoidal_positions(max_len: int, dim: int) -> np.ndarray:
    """Fixed sinusoidal encodings [max_len, dim] (Vaswani et al.), sin on even, cos on odd dims."""
    position = np.arange(max_len)[:, None]
    div = np.exp(np.arange(0, dim, 2) * (-np.log(10000.0) / dim))
    table = np.zeros((max_len, dim), np.float32)
    table[:, 0::2] = np.sin(position * div)
    table[:, 1::2] = np.cos(position * div[: dim // 2])
    return table


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer (self-attention + GELU MLP), key-padding mask."""

    num_heads: int
    mlp_dim: int
    dropout: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, *, train: bool):  # x [B, T, D], mask [B, T] bool
        deterministic = not train
        attn_mask = nn.make_attention_mask(jnp.ones(mask.shape, bool), mask)  # keys only
        y = nn.LayerNorm(dtype=self.dtype, name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.dropout, name="attn"
        )(y, y, mask=attn_mask, deterministic=deterministic)
        x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = nn.LayerNorm(dtype=self.dtype, name="norm2")(x)
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_in")(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = nn.Dense(x.shape[-1], dtype=self.dtype, name="mlp_out")(y)
        return x + nn.Dropout(self.dropout)(y, deterministic=deterministic)


class PoolingTransformer(nn.Module):
    """Audio tokens -> global-token output (and outputs at optional extra tokens).

    The tokens are projected to ``dim``, get a fixed sinusoidal position code times one learnable
    scale, and a global token (a learned vector plus the masked mean of the projected tokens) is put
    in front. Extra tokens (mid-level fusion's metadata token) are appended after the audio tokens
    with a learned type vector and no position code. ``num_layers`` pre-norm layers follow; with 0
    layers the result is the global token itself (the authors' code default).
    """

    dim: int = 768
    num_layers: int = 1
    num_heads: int = 12
    mlp_dim: int = 2048
    dropout: float = 0.1
    max_len: int = 192
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, mask, extra=None, extra_mask=None, *, train: bool):
        """tokens [B, T, C], mask [B, T] bool (True = real), extra [B, E, dim] or None,
        extra_mask [B, E] bool. Returns (global_out [B, dim], extra_out [B, E, dim] or None)."""
        batch, length, _ = tokens.shape
        if length > self.max_len:
            raise ValueError(f"{length} audio tokens exceed the pooling max_len {self.max_len}")
        x = nn.Dense(self.dim, dtype=self.dtype, name="in_proj")(tokens)  # [B, T, D]
        weights = mask.astype(x.dtype)[..., None]
        mean = jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)  # [B, D]
        scale = self.param("position_scale", nn.initializers.ones, ())
        positions = jnp.asarray(sinusoidal_positions(self.max_len, self.dim)[:length])
        x = x + (scale * positions).astype(x.dtype)[None]
        global_vec = self.param("global_token", nn.initializers.normal(0.04), (self.dim,))
        parts = [(global_vec[None, :] + mean)[:, None, :], x]
        masks = [jnp.ones((batch, 1), bool), mask]
        if extra is not None:
            type_vec = self.param("extra_type", nn.initializers.normal(0.04), (self.dim,))
            parts.append(extra.astype(x.dtype) + type_vec)
            masks.append(extra_mask)
        x = jnp.concatenate(parts, axis=1)
        full_mask = jnp.concatenate(masks, axis=1)
        for i in range(self.num_layers):
            x = EncoderLayer(self.num_heads, self.mlp_dim, self.dropout, self.dtype, name=f"layer_{i}")(
                x, full_mask, train=train
            )
        if self.num_layers:
            x = nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)
        extra_out = x[:, 1 + length :] if extra is not None else None
        return x[:, 0], extra_out
