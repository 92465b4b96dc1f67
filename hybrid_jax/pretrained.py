"""Public entry points for converted pretrained towers (audio: EfficientAT, text: BERT)."""
from __future__ import annotations

import pathlib


def load_audio_encoder(directory: str | pathlib.Path):
    """Loads a directory written by ``tools/convert_efficientat.py`` -> ``AudioEncoder``."""
    from hybrid_jax import audio_encoder

    return audio_encoder.load(directory)


def load_text_encoder(directory: str | pathlib.Path):
    """Loads a directory written by ``tools/convert_bert.py`` -> ``TextEncoder``."""
    from hybrid_jax import text_encoder

    return text_encoder.load(directory)
