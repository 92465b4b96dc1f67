"""Transformer pooling of the audio token sequence into one vector via a global token.

Equal, in eval mode, to the authors' code (``AudioRetrievalModel.forward_audio`` of
OptimusPrimus/salsa at 8d97913 with ``norm_first=True``, ``use_first_token=True``,
``init_audio_token_with_mean=True``, ``posencode_init='sinosoidal_fixed'``); proven against
their outputs by ``tests/test_salsa_parity.py``.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from hybrid_jax.models import linear

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default


def sinusoidal_positions(max_len: int, dim: int) -> np.ndarray:
    """Fixed sinusoidal encodings [max_len, dim] (Vaswani et al.), sin on even, cos on odd dims.

    Computed in float32 like the authors' ``PositionalEncoding`` (their ``posencode.pe`` buffer)."""
    position = np.arange(max_len, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, dim, 2, dtype=np.float32) * np.float32(-np.log(10000.0) / dim))
    table = np.zeros((max_len, dim), np.float32)
    table[:, 0::2] = np.sin(position * div)
    table[:, 1::2] = np.cos(position * div[: dim // 2])
    return table


def _layer_norm(name: str) -> nn.LayerNorm:
    # float32 statistics whatever the compute dtype, and the two-pass variance of torch.
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=jnp.float32, use_fast_variance=False, name=name)


class EncoderLayer(nn.Module):
    """``torch.nn.TransformerEncoderLayer(norm_first=True, activation=gelu)``: x [B, T, D] ->
    [B, T, D]; ``mask`` [B, T] bool (True = real) masks keys only (padded queries are computed)."""

    num_heads: int
    mlp_dim: int
    dropout: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, *, train: bool):
        deterministic = not train
        attn_mask = nn.make_attention_mask(jnp.ones(mask.shape, bool), mask)  # keys only
        y = _layer_norm("norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.dropout,
            broadcast_dropout=False,  # torch drops attention weights independently per example
            kernel_init=linear.packed_qkv_kernel, bias_init=nn.initializers.zeros,
            out_kernel_init=linear.linear_kernel, out_bias_init=nn.initializers.zeros, name="attn",
        )(y, y, mask=attn_mask, deterministic=deterministic)
        x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = _layer_norm("norm2")(x)
        y = linear.Linear(self.mlp_dim, dtype=self.dtype, name="mlp_in")(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = linear.Linear(x.shape[-1], dtype=self.dtype, name="mlp_out")(y)
        return x + nn.Dropout(self.dropout)(y, deterministic=deterministic)


class PoolingTransformer(nn.Module):
    """Audio tokens [B, T, C] -> global-token output [B, dim] (and outputs at optional extra tokens).

    As in the authors' code: the tokens are projected to ``dim`` (``in_proj``, a Linear; absent
    when C == dim, where theirs is an Identity); the global token is a learned vector (init
    N(0, 0.04^2)) plus the mean over ALL T projected tokens, padding included, taken before the
    position code; the tokens get a fixed sinusoidal code times one learnable scalar (init 1),
    then dropout ``position_dropout``; the sequence is [global, tokens]; ``num_layers`` pre-norm
    layers follow with a key-padding mask (the global token is always real), and the output is
    the global token of the last layer, with no final LayerNorm.

    Extra tokens (mid-level fusion's metadata token, not in the authors' code) are appended after
    the audio tokens with a learned type vector and no position code.

    ``num_layers=0`` is the authors' no-transformer path: the masked mean of the raw tokens (no
    projection, no global token); extra tokens are not supported there.

    Intermediates (``mutable=["intermediates"]``): ``input`` [B, 1+T(+E), dim] (what the first
    layer receives), ``layers`` (each layer's output), ``global_token`` [B, dim].
    """

    dim: int = 768
    num_layers: int = 2
    num_heads: int = 12
    mlp_dim: int = 2048
    dropout: float = 0.1
    max_len: int = 192
    position_dropout: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, mask, extra=None, extra_mask=None, *, train: bool):
        """tokens [B, T, C], mask [B, T] bool (True = real), extra [B, E, dim] or None,
        extra_mask [B, E] bool. Returns (global_out [B, dim], extra_out [B, E, dim] or None)."""
        batch, length, width = tokens.shape
        if length > self.max_len:
            raise ValueError(f"{length} audio tokens exceed the pooling max_len {self.max_len}")
        if self.num_layers == 0:
            if extra is not None:
                raise ValueError("extra tokens (mid-level fusion) need at least one pooling layer")
            weights = mask.astype(jnp.float32)[..., None]
            pooled = jnp.sum(tokens.astype(jnp.float32) * weights, axis=1)
            return pooled / jnp.maximum(jnp.sum(weights, axis=1), 1.0), None
        x = tokens
        if width != self.dim:
            x = linear.Linear(self.dim, dtype=self.dtype, name="in_proj")(x)  # [B, T, D]
        mean = jnp.mean(x, axis=1)  # over ALL tokens, padding included (the authors' code)
        scale = self.param("position_scale", nn.initializers.ones, ())
        positions = jnp.asarray(sinusoidal_positions(self.max_len, self.dim)[:length])
        x = x + (scale * positions).astype(x.dtype)[None]
        x = nn.Dropout(self.position_dropout)(x, deterministic=not train)
        global_vec = self.param("global_token", nn.initializers.normal(0.04), (self.dim,))
        parts = [(global_vec + mean).astype(x.dtype)[:, None, :], x]
        masks = [jnp.ones((batch, 1), bool), mask]
        if extra is not None:
            type_vec = self.param("extra_type", nn.initializers.normal(0.04), (self.dim,))
            parts.append((extra + type_vec).astype(x.dtype))
            masks.append(extra_mask)
        x = jnp.concatenate(parts, axis=1)
        full_mask = jnp.concatenate(masks, axis=1)
        self.sow("intermediates", "input", x)
        for i in range(self.num_layers):
            x = EncoderLayer(self.num_heads, self.mlp_dim, self.dropout, self.dtype, name=f"layer_{i}")(
                x, full_mask, train=train
            )
            self.sow("intermediates", "layers", x)
        self.sow("intermediates", "global_token", x[:, 0])
        extra_out = x[:, 1 + length :] if extra is not None else None
        return x[:, 0], extra_out
