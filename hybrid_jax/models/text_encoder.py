"""A converted BERT ready to use: tokenizer + jitted eval-mode encoder (``load_text_encoder``)."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_jax.convert import weights
from hybrid_jax.models.bert import BertConfig, BertEncoder
from hybrid_jax.models.text import MAX_LENGTH, Tokenizer


class TextEncoder:
    """Tokenizes with the paper's preprocessing and returns BERT's last hidden state (eval mode).

    ``module``, ``variables``, ``config`` and ``tokenizer`` are public so the retrieval model can
    reuse the same BERT (e.g. as the initial parameters of its text tower).
    """

    def __init__(self, module: BertEncoder, variables: dict[str, Any], tokenizer: Tokenizer):
        self.module = module
        self.variables = variables
        self.config: BertConfig = module.config
        self.tokenizer = tokenizer

        def forward(variables, input_ids, attention_mask, token_type_ids):
            out = module.apply(variables, input_ids, attention_mask, token_type_ids, train=False)
            return {k: v.astype(jnp.float32) for k, v in out.items()}

        # The variables are an argument, not a closure: closed-over arrays become HLO constants.
        self._forward = jax.jit(forward)

    def tokenize(self, sentences: list[str]) -> dict[str, np.ndarray]:
        """Raw sentences -> int32 [B, max_length] input_ids, attention_mask, token_type_ids."""
        return self.tokenizer.tokenize(sentences)

    def __call__(self, input_ids, attention_mask, token_type_ids=None) -> dict[str, jax.Array]:
        """Every output: "last_hidden_state" [B, L, H], "pooler_output" [B, H] if pooling."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        return self._forward(
            self.variables,
            input_ids,
            jnp.asarray(attention_mask, jnp.int32),
            jnp.asarray(token_type_ids, jnp.int32),
        )

    def encode(self, input_ids, attention_mask, token_type_ids=None) -> jax.Array:
        """[B, L] int arrays -> last hidden state [B, L, H] float32 (eval mode, no dropout)."""
        return self(input_ids, attention_mask, token_type_ids)["last_hidden_state"]

    def encode_text(self, sentences: list[str]) -> jax.Array:
        """Raw sentences -> [CLS] embeddings [B, H] float32 (the recipe's sentence embedding)."""
        batch = self.tokenize(sentences)
        return self.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])[
            :, 0
        ]


def load(
    directory: str | pathlib.Path,
    *,
    dtype: Any = jnp.float32,
    add_pooling_layer: bool = False,
    max_length: int | None = None,
    dropout: float | None = None,
) -> TextEncoder:
    """Reads a directory written by ``tools/convert_bert.py``.

    Args:
      dtype: compute dtype; ``jnp.bfloat16`` for the faster mixed-precision path (params float32).
      add_pooling_layer: keep HF's pooler (needs a checkpoint that had one); the recipe uses the
        [CLS] hidden state without it, so by default its weights are dropped.
      max_length: tokens per sentence; default: the value stored at conversion (32).
      dropout: overrides hidden and attention dropout in ``config`` (for training the module).
    """
    variables, saved = weights.load(directory)
    if saved.get("model") != "bert":
        raise ValueError(
            f"{directory}: not a converted BERT (config.json model={saved.get('model')!r})"
        )
    if add_pooling_layer and not saved["has_pooler"]:
        raise ValueError(f"{directory}: the checkpoint has no pooler weights")
    if not add_pooling_layer:
        variables["params"].pop("pooler", None)
    config = BertConfig.from_hf(saved["hf_config"], dropout=dropout)
    module = BertEncoder(config, dtype=dtype, add_pooling_layer=add_pooling_layer)
    tokenizer = Tokenizer.from_pretrained(
        directory, max_length or saved.get("max_length", MAX_LENGTH)
    )
    variables = jax.tree.map(jnp.asarray, variables)
    return TextEncoder(module, variables, tokenizer)
