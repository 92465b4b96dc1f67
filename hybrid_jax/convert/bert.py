"""Hugging Face BERT checkpoints -> ``BertEncoder`` variables: a key map plus named tensor rules.

A HF key is mapped segment by segment (``encoder.layer.3.attention.self.query.weight`` ->
``params/encoder/layer_3/attention/self/query/kernel``); the last two segments pick the tensor rule.
Accepted key styles: plain ``embeddings.*``/``encoder.*``/``pooler.*``, a ``bert.`` prefix
(``BertForPreTraining`` and friends), and the old ``LayerNorm.gamma/beta`` names. Everything
outside the BertModel scopes (``cls.*`` pre-training heads, classifiers) is ignored and reported.
The result is checked against the module's own parameter shapes: every missing, unexpected or
mis-shaped tensor is named in one error.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hybrid_jax.convert import weights
from hybrid_jax.convert.rules import COPY, LINEAR_TO_DENSE, ConversionError, TensorRule
from hybrid_jax.models.bert import BertConfig, BertEncoder

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
MODEL_SCOPES = ("embeddings", "encoder", "pooler")  # BertModel's children; the rest are heads
PREFIX = "bert."  # BertForPreTraining, BertForMaskedLM, ... keep BertModel under ``bert``
SKIPPED = ("embeddings.position_ids",)  # a registered buffer (arange), not a weight
LINEAR_MODULES = ("query", "key", "value", "dense")


# (module kind, HF parameter name) -> (Flax leaf name, tensor rule).
LEAF_RULES: dict[tuple[str, str], tuple[str, TensorRule]] = {
    ("linear", "weight"): ("kernel", LINEAR_TO_DENSE),
    ("linear", "bias"): ("bias", COPY),
    ("layer_norm", "weight"): ("scale", COPY),
    ("layer_norm", "gamma"): ("scale", COPY),  # names from the TF-era conversions
    ("layer_norm", "bias"): ("bias", COPY),
    ("layer_norm", "beta"): ("bias", COPY),
    ("embedding", "weight"): ("embedding", COPY),
}


def _module_kind(name: str) -> str:
    if name == "LayerNorm":
        return "layer_norm"
    if name.endswith("_embeddings"):
        return "embedding"
    if name in LINEAR_MODULES:
        return "linear"
    return name


def map_key(key: str) -> tuple[str, TensorRule]:
    """A BertModel-scope HF key -> (Flax variable path, tensor rule); KeyError if it has none."""
    *modules, param = key.split(".")
    path: list[str] = []
    for name in modules:
        if path and path[-1] == "layer" and name.isdigit():  # nn.ModuleList index -> layer_N
            path[-1] = f"layer_{name}"
        else:
            path.append(name)
    if not modules or (_module_kind(modules[-1]), param) not in LEAF_RULES:
        raise KeyError(key)
    leaf, rule = LEAF_RULES[(_module_kind(modules[-1]), param)]
    return "/".join(["params", *path, leaf]), rule


@dataclasses.dataclass
class Conversion:
    """What ``convert_state_dict`` produced and what it left out."""

    variables: dict[str, Any]  # {"params": ...} for BertEncoder
    has_pooler: bool
    ignored: list[str]  # keys outside BertModel (heads), reported to the user


def expected_shapes(config: BertConfig, add_pooling_layer: bool) -> dict[str, tuple[int, ...]]:
    """Flat ``params/...`` path -> shape of a ``BertEncoder``'s variables (nothing allocated)."""
    module = BertEncoder(config, add_pooling_layer=add_pooling_layer)
    ids = jnp.zeros((1, 2), jnp.int32)
    tree = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, ids, train=False))
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def convert_state_dict(state_dict: Mapping[str, np.ndarray], config: BertConfig) -> Conversion:
    """HF BERT state dict (any accepted key style) -> Flax variables, checked against the module."""
    converted: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    unexpected, ignored = [], []
    for key, tensor in state_dict.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        if name in SKIPPED:
            continue
        if name.split(".")[0] not in MODEL_SCOPES:
            ignored.append(key)
            continue
        try:
            path, rule = map_key(name)
        except KeyError:
            unexpected.append(key)
            continue
        if path in converted:
            unexpected.append(f"{key} (duplicates {sources[path]})")
            continue
        converted[path] = rule.apply(tensor)
        sources[path] = key

    has_pooler = any(p.startswith("params/pooler/") for p in converted)
    shapes = expected_shapes(config, add_pooling_layer=has_pooler)
    problems = [f"missing: {p}" for p in shapes if p not in converted]
    problems += [f"unexpected: {k}" for k in unexpected]
    problems += [f"unexpected: {sources[p]}" for p in converted if p not in shapes]
    problems += [
        f"mis-shaped: {sources[p]} {tuple(state_dict[sources[p]].shape)} -> {p} "
        f"{converted[p].shape}, expected {shapes[p]}"
        for p in converted
        if p in shapes and converted[p].shape != shapes[p]
    ]
    if problems:
        raise ConversionError(
            f"checkpoint does not match the BERT config ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )
    return Conversion(weights.unflatten(converted), has_pooler, sorted(ignored))


def read_checkpoint(directory: pathlib.Path) -> dict[str, np.ndarray]:
    """The first of ``WEIGHT_FILES`` in a HF model folder -> {key: array}, without torch."""
    from hybrid_jax.convert import (
        state_dict,  # the shared safe reader (safetensors and torch files)
    )

    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return state_dict.read_state_dict(directory / name)
    raise FileNotFoundError(
        f"{directory}: none of {WEIGHT_FILES} found (sharded checkpoints are not supported)"
    )


def resolve_source(source: str | pathlib.Path) -> pathlib.Path:
    """A local HF model folder, or a Hub model id downloaded into the HF cache (needs internet)."""
    path = pathlib.Path(source)
    if path.is_dir():
        return path
    if path.exists() or str(source).startswith((".", "/")):
        raise FileNotFoundError(f"{source}: not a Hugging Face model folder")
    import huggingface_hub  # only for Hub ids; a local folder needs no network

    patterns = ["config.json", "model.safetensors", *TOKENIZER_FILES]
    return pathlib.Path(huggingface_hub.snapshot_download(str(source), allow_patterns=patterns))


def convert_checkpoint(
    source: str | pathlib.Path,
    destination: str | pathlib.Path,
    *,
    tokenizer: str | pathlib.Path | None = None,
    max_length: int = 32,
) -> Conversion:
    """HF model folder (or Hub id) -> converted directory loadable by ``text_encoder.load``.

    Writes ``variables.safetensors``, ``config.json`` (the HF config under ``hf_config``) and copies
    the tokenizer files (from ``tokenizer`` if given, else from ``source``), so the directory is
    self-contained.
    """
    source = resolve_source(source)
    tokenizer_dir = resolve_source(tokenizer) if tokenizer is not None else source
    tokenizer_files = [n for n in TOKENIZER_FILES if (tokenizer_dir / n).is_file()]
    if not {"vocab.txt", "tokenizer.json"} & set(tokenizer_files):
        raise FileNotFoundError(
            f"{tokenizer_dir}: no vocab.txt or tokenizer.json to tokenize with (see --tokenizer)"
        )
    hf_config = json.loads((source / "config.json").read_text())
    config = BertConfig.from_hf(hf_config)
    conversion = convert_state_dict(read_checkpoint(source), config)
    weights.save(
        destination,
        conversion.variables,
        {
            "model": "bert",
            "hf_config": hf_config,
            "has_pooler": conversion.has_pooler,
            "max_length": max_length,
            "source": str(source),
        },
    )
    for name in tokenizer_files:
        shutil.copyfile(tokenizer_dir / name, pathlib.Path(destination) / name)
    return conversion
