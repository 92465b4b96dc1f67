"""Flax Linen BERT laid out like Hugging Face ``BertModel``, so weight conversion is a rename.

Parameter tree (HF key ``encoder.layer.0.attention.self.query.weight`` ->
``encoder/layer_0/attention/self/query/kernel``)::

    embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
    embeddings/LayerNorm/{scale,bias}
    encoder/layer_N/attention/self/{query,key,value}/{kernel,bias}
    encoder/layer_N/attention/output/{dense,LayerNorm}/...
    encoder/layer_N/{intermediate,output}/dense/..., encoder/layer_N/output/LayerNorm/...
    pooler/dense/{kernel,bias}                       (only with add_pooling_layer=True)

Mixed precision follows PyTorch autocast: parameters stay float32, matmuls run in ``dtype``, and
LayerNorm, softmax and the residual stream stay float32, so ``last_hidden_state`` is float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# HF's names -> our activation; "gelu" in HF BERT is the exact erf form, "gelu_new" the tanh one.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}

# BERT's init (HF initializer_range): only matters for random-weight models (tests, benchmarks).
_init = nn.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture fields of a Hugging Face BERT ``config.json``."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, dropout: float | None = None) -> BertConfig:
        """Reads a HF ``config.json`` dict; ``dropout`` overrides hidden and attention dropout."""
        # Other BertModel-like families (RoBERTa's offset positions, relative position embeddings)
        # would load without error and compute something else, so refuse them here.
        model_type = hf.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"model_type={model_type!r}: only BERT configs are supported")
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"position_embedding_type={position_type!r}: only 'absolute' is supported"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in hf.items() if k in fields})
        if dropout is not None:
            config = dataclasses.replace(
                config, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
            )
        return config

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, kernel_init=_init, name=name)


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    # dtype float32 whatever the compute dtype: the normalisation statistics need it.
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32, name=name)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, *, train: bool) -> Array:
        """input_ids, token_type_ids [B, L] int -> [B, L, H] float32."""
        cfg = self.config

        def embed(count: int, name: str) -> nn.Embed:
            return nn.Embed(count, cfg.hidden_size, embedding_init=_init, name=name)

        positions = jnp.arange(input_ids.shape[1])[None, :]
        hidden = (
            embed(cfg.vocab_size, "word_embeddings")(input_ids)
            + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
            + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
        )
        hidden = _layer_norm(cfg, "LayerNorm")(hidden)
        return nn.Dropout(cfg.hidden_dropout_prob, deterministic=not train)(hidden)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention over the unpadded keys (HF ``attention.self``)."""

    config: BertConfig
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, hidden: Array, mask: Array, *, train: bool) -> Array:
        """hidden [B, L, H], mask [B, 1, 1, L] bool (True = attend) -> context [B, L, H]."""
        cfg = self.config
        batch, length, _ = hidden.shape
        heads = (batch, length, cfg.num_attention_heads, cfg.head_dim)

        # Plain [H, H] kernels reshaped to heads (a free reshape) rather than DenseGeneral, so HF
        # weights convert with one transpose and no head split.
        def project(name: str) -> Array:
            return _dense(cfg.hidden_size, self.dtype, name)(hidden).reshape(heads)

        query, key, value = project("query"), project("key"), project("value")
        if train and cfg.attention_probs_dropout_prob > 0:
            rate, rng = cfg.attention_probs_dropout_prob, self.make_rng("dropout")
            context = attention_with_dropout(query, key, value, mask, rate=rate, rng=rng)
        else:
            # jax.nn.dot_product_attention can use a fused kernel on accelerators, but it has no
            # dropout on the attention probabilities, hence the explicit path above for training.
            context = jax.nn.dot_product_attention(
                query, key, value, mask=mask, implementation=self.implementation
            )
        return context.reshape(batch, length, cfg.hidden_size)


def attention_with_dropout(
    query: Array, key: Array, value: Array, mask: Array, *, rate: float, rng: Array
) -> Array:
    """``jax.nn.dot_product_attention`` with dropout on the probabilities, as HF trains BERT.

    query, key, value [B, L, N, Dh]; mask [B, 1, 1, L] bool (True = attend) -> [B, L, N, Dh].
    """
    scale = 1.0 / jnp.sqrt(jnp.float32(query.shape[-1]))
    logits = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=jnp.float32) * scale
    # A large finite negative (not -inf) as in jax.nn.dot_product_attention and HF's finfo.min.
    probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
    if rate > 0:
        keep = jax.random.bernoulli(rng, 1.0 - rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - rate), 0.0)
    return jnp.einsum("bnts,bsnh->btnh", probs.astype(value.dtype), value)


class BertAddNorm(nn.Module):
    """Dense, dropout, residual add and LayerNorm (HF ``attention.output`` and ``output``)."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden: Array, residual: Array, *, train: bool) -> Array:
        """hidden [B, L, *], residual [B, L, H] float32 -> [B, L, H] float32."""
        cfg = self.config
        hidden = _dense(cfg.hidden_size, self.dtype, "dense")(hidden)
        hidden = nn.Dropout(cfg.hidden_dropout_prob, deterministic=not train)(hidden)
        # The add promotes a bf16 branch to the float32 residual stream.
        return _layer_norm(cfg, "LayerNorm")(hidden + residual)


class BertAttention(nn.Module):
    """Self-attention followed by its output projection (HF ``attention``)."""

    config: BertConfig
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, hidden: Array, mask: Array, *, train: bool) -> Array:
        context = BertSelfAttention(self.config, self.dtype, self.implementation, name="self")(
            hidden, mask, train=train
        )
        return BertAddNorm(self.config, self.dtype, name="output")(context, hidden, train=train)


class BertIntermediate(nn.Module):
    """The feed-forward expansion with its activation (HF ``intermediate``)."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        hidden = _dense(self.config.intermediate_size, self.dtype, "dense")(hidden)
        return ACTIVATIONS[self.config.hidden_act](hidden)


class BertLayer(nn.Module):
    """One post-norm transformer layer (HF ``encoder.layer.N``)."""

    config: BertConfig
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, hidden: Array, mask: Array, train: bool) -> Array:
        # ``train`` is positional so nn.remat can mark it static (static_argnums counts self).
        attended = BertAttention(self.config, self.dtype, self.implementation, name="attention")(
            hidden, mask, train=train
        )
        expanded = BertIntermediate(self.config, self.dtype, name="intermediate")(attended)
        return BertAddNorm(self.config, self.dtype, name="output")(expanded, attended, train=train)


class BertLayerStack(nn.Module):
    """The ``num_hidden_layers`` layers (HF ``encoder``); ``remat`` recomputes each in backward."""

    config: BertConfig
    dtype: Any = jnp.float32
    remat: bool = False
    implementation: str | None = None

    @nn.compact
    def __call__(self, hidden: Array, mask: Array, *, train: bool) -> Array:
        layer = nn.remat(BertLayer, static_argnums=(3,)) if self.remat else BertLayer
        for i in range(self.config.num_hidden_layers):
            hidden = layer(self.config, self.dtype, self.implementation, name=f"layer_{i}")(
                hidden, mask, train
            )
        return hidden


class BertPooler(nn.Module):
    """Dense + tanh on the first ([CLS]) token (HF ``pooler``)."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        """hidden [B, L, H] -> [B, H] float32."""
        first = _dense(self.config.hidden_size, self.dtype, "dense")(hidden[:, 0])
        return jnp.tanh(first.astype(jnp.float32))


class BertEncoder(nn.Module):
    """HF ``BertModel``: embeddings, encoder layers and an optional pooler.

    Attributes:
      config: the architecture (``BertConfig.from_hf``).
      dtype: compute dtype of the matmuls (``jnp.bfloat16`` for mixed precision); params float32.
      add_pooling_layer: add HF's pooler (dense + tanh on [CLS]) and return ``pooler_output``.
      remat: rematerialise each layer in the backward pass (less activation memory).
      attention_implementation: passed to ``jax.nn.dot_product_attention`` (None: let JAX pick).
    """

    config: BertConfig
    dtype: Any = jnp.float32
    add_pooling_layer: bool = False
    remat: bool = False
    attention_implementation: str | None = None

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array,
        token_type_ids: Array | None = None,
        *,
        train: bool,
    ) -> dict[str, Array]:
        """input_ids, attention_mask, token_type_ids [B, L] int -> dict of float32 arrays.

        Returns "last_hidden_state" [B, L, H] and, with add_pooling_layer, "pooler_output" [B, H].
        ``train=True`` applies dropout and needs a "dropout" rng.
        """
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        hidden = BertEmbeddings(self.config, name="embeddings")(
            input_ids, token_type_ids, train=train
        )
        mask = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, L] over keys
        hidden = BertLayerStack(
            self.config, self.dtype, self.remat, self.attention_implementation, name="encoder"
        )(hidden, mask, train=train)
        outputs = {"last_hidden_state": hidden}
        if self.add_pooling_layer:
            outputs["pooler_output"] = BertPooler(self.config, self.dtype, name="pooler")(hidden)
        return outputs
