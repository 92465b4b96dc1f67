"""A trained model you can take away: ``load_model(MODEL_DIR)`` -> text and audio embeddings and
their similarity, with nothing but the model directory (no config, data or optimizer state).

    model = hybrid_jax.load_model("models/demo")
    queries = model.embed_text(["a dog barks while rain falls on a roof"])  # [1, D]
    items = model.embed_audio(["dog.wav", (waveform, 48000)], metadata=["dog bark garden", ""])
    scores = model.similarity(queries, items)  # [1, 2], the model's fusion rule

Embeddings are packed rows (``hybrid_jax.packed``): [N, D] unit vectors for late fusion and the
content-only or metadata-only models; the two experts (and mixture weights) side by side for mid
fusion. Every jitted call has one fixed shape (``batch_size`` rows, unused rows zero), so each
function compiles once and a recording or sentence gives the same bits in every call, whatever
else is in the batch. Long recordings are embedded over their whole length (``hybrid_jax.segments``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_jax import model_dir, packed, segments, sharding, steps
from hybrid_jax.data import audio_io
from hybrid_jax.data.audio_io import AudioError
from hybrid_jax.models.retrieval import RetrievalModel
from hybrid_jax.schema import SAMPLE_RATE

Audio = str | os.PathLike | tuple[np.ndarray, int]  # a file, or (waveform, sample rate)


@dataclasses.dataclass(frozen=True)
class Items:
    """Embedded recordings: packed rows (``hybrid_jax.packed``) and the seconds of audio in each."""

    vectors: np.ndarray  # float32 [N, item_width]
    seconds: np.ndarray  # float64 [N]
    fusion: str

    def __len__(self) -> int:
        return len(self.vectors)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The ``RetrievalModel.embed_items`` dict (``embedding``, or mid fusion's experts)."""
        return packed.unpack_items(self.fusion, self.vectors)


class Model:
    """A model directory loaded for inference (eval mode), its batches split over the local devices.

    Attributes: ``fusion``, ``embed_dim``, ``item_width`` / ``query_width`` (packed row widths),
    ``segment_samples`` (32 kHz samples per segment of a long recording), ``batch_size``, ``card``
    (the model card), ``fingerprint``; for lower-level use ``module`` (the ``RetrievalModel``),
    ``variables``, ``mesh``, ``embed_items_fn`` / ``embed_queries_fn`` (jitted: (variables, batch)).
    """

    def __init__(self, loaded: model_dir.Loaded, *, batch_size: int = 16, text_batch_size: int = 8,
                 dtype: str | None = None, devices: Sequence[Any] | None = None, directory: Any = None):
        module = loaded.model if dtype is None else loaded.model.clone(dtype=jnp.dtype(dtype))
        self.module, self.tokenizer, self.card = module, loaded.tokenizer, loaded.card
        self.fingerprint, self.directory = loaded.fingerprint, directory
        self.fusion, self.embed_dim = module.fusion, module.embed_dim
        self.item_width = packed.item_width(self.fusion, self.embed_dim)
        self.query_width = packed.query_width(self.fusion, self.embed_dim)
        self.mesh = sharding.make_mesh((("data", -1),), devices)
        count = self.mesh.devices.size
        self.batch_size = -(-batch_size // count) * count  # whole rows per device
        self.text_batch_size = -(-text_batch_size // count) * count
        replicated = sharding.param_shardings(loaded.variables, self.mesh, [])
        self.variables = jax.device_put(loaded.variables, replicated)
        self.embed_items_fn = steps.jit_embed(module, "embed_items", replicated, self.mesh)
        self.embed_queries_fn = steps.jit_embed(module, "embed_queries", replicated, self.mesh)
        self.segment_samples = segment_samples(module, loaded.variables, loaded.segment_seconds)

    @property
    def segment_seconds(self) -> float:
        return self.segment_samples / SAMPLE_RATE

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Queries (the paper's preprocessing and tokenizer) -> float32 [N, query_width]."""
        if isinstance(texts, str):
            raise TypeError("embed_text takes a list of strings, not one string")
        size, out = self.text_batch_size, []
        for start in range(0, len(texts), size):
            tokens = self.tokenizer.tokenize(list(texts[start : start + size]))
            used = len(tokens["input_ids"])
            batch = {f"query_{k}": np.zeros((size, self.tokenizer.max_length), np.int32)
                     for k in ("ids", "mask", "types")}
            for key, name in (("input_ids", "query_ids"), ("attention_mask", "query_mask"), ("token_type_ids", "query_types")):
                batch[name][:used] = tokens[key]
            embedded = jax.device_get(self.embed_queries_fn(self.variables, batch))
            out.append(packed.pack_queries(self.fusion, embedded)[:used])
        return np.concatenate(out) if out else np.zeros((0, self.query_width), np.float32)

    def embed_item_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One full item batch (``schema.ITEM_FIELDS``, ``batch_size`` rows of ``segment_samples``)
        -> the model's item outputs as numpy."""
        return jax.device_get(self.embed_items_fn(self.variables, batch))

    def embed_audio(self, items: Sequence[Audio], metadata: Sequence[str] | None = None, *,
                    workers: int = 2) -> Items:
        """Recordings (file paths, or ``(waveform, sample_rate)`` with the waveform ``[samples]`` or
        ``[samples, channels]``, any length and rate) and their optional metadata strings (``""`` =
        none; keywords joined by spaces, as in training) -> ``Items`` in input order. Raises
        ``AudioError`` naming every item that failed."""
        metadata = [""] * len(items) if metadata is None else list(metadata)
        if len(metadata) != len(items):
            raise ValueError(f"{len(items)} items but {len(metadata)} metadata strings")
        sources = [segments.Source(i, functools.partial(self._segments, item), text or "")
                   for i, (item, text) in enumerate(zip(items, metadata))]
        results = {r.key: r for r in segments.embed(self, sources, workers=workers)}
        failed = [f"{_name(items[i], i)}: {results[i].error}" for i in range(len(items)) if results[i].error]
        if failed:
            raise AudioError(f"{len(failed)} of {len(items)} items could not be embedded: " + "; ".join(failed))
        vectors = np.stack([results[i].vector for i in range(len(items))]) if items else np.zeros((0, self.item_width), np.float32)
        return Items(vectors, np.array([results[i].seconds for i in range(len(items))]), self.fusion)

    def _segments(self, item: Audio):
        if isinstance(item, tuple):
            wave, rate = item
            return audio_io.stream_waveform(wave, rate, self.segment_samples)
        return audio_io.stream(item, self.segment_samples)

    def similarity(self, queries: np.ndarray | Items, items: Items | np.ndarray) -> np.ndarray:
        """[Q, N] scores. Text queries (``embed_text``) use the model's fusion rule (cosine for late
        fusion and single-tower models, the expert mixture for mid fusion); ``Items`` as queries
        search by example (the cosine of the sounds' audio side and the items' embedding)."""
        rows = items.vectors if isinstance(items, Items) else np.asarray(items, np.float32)
        if isinstance(queries, Items):
            return packed.example_scores(self.fusion, queries.vectors, rows)
        return packed.scores(self.fusion, np.asarray(queries, np.float32), rows)


def segment_samples(module: RetrievalModel, variables: dict, seconds: float | None) -> int:
    """Samples per segment: ``seconds`` (the training clip length) if the pooling transformer takes
    that many tokens, else (or when unknown) the most whole CNN windows it takes."""
    window = int(round(module.audio.window_seconds * SAMPLE_RATE))
    if module.fusion == "metadata_only":
        return window  # the model never reads the audio
    shape = jax.eval_shape(functools.partial(module.apply, train=False, method=_audio_tokens), variables,
                           jax.ShapeDtypeStruct((1, window), jnp.int16), jax.ShapeDtypeStruct((1,), jnp.float32))
    per_window = shape[0].shape[1]
    most = module.pooling.max_len // per_window
    if most < 1:
        raise ValueError(f"one {module.audio.window_seconds} s window gives {per_window} tokens, more than "
                         f"the pooling max_len {module.pooling.max_len}")
    if seconds is None:
        return most * window
    wanted = int(round(seconds * SAMPLE_RATE))
    return wanted if math.ceil(wanted / window) <= most else most * window


def _audio_tokens(module: RetrievalModel, audio, valid, *, train: bool):
    return module.audio_tower(audio, valid, train=train)


def _name(item: Audio, index: int) -> str:
    return f"item {index} (waveform)" if isinstance(item, tuple) else str(item)


def load_model(directory: str | os.PathLike, **options) -> Model:
    """Loads a model directory (``python -m hybrid_jax.export`` or a converter) -> ``Model``.

    Options: ``batch_size`` (segments per jitted call, default 16), ``text_batch_size`` (8: a
    single query pays for that many rows),
    ``dtype`` ("bfloat16" on accelerators; default the stored float32), ``devices``."""
    return Model(model_dir.load(directory), directory=pathlib.Path(directory), **options)
