"""Public entry points for converted pretrained towers (audio: EfficientAT, text: BERT)."""
from __future__ import annotations

import pathlib


def load_audio_encoder(directory: str | pathlib.Path, **options):
    """Loads a directory written by ``tools/convert_efficientat.py`` -> ``AudioEncoder``.
    ``options`` go to ``hybrid_jax.models.audio_encoder.load`` (e.g. ``depthwise="native"``)."""
    from hybrid_jax.models import audio_encoder

    return audio_encoder.load(directory, **options)


def load_text_encoder(directory: str | pathlib.Path, **options):
    """Loads a directory written by ``tools/convert_bert.py`` -> ``TextEncoder``.
    ``options`` go to ``hybrid_jax.models.text_encoder.load`` (e.g. ``dtype=jnp.bfloat16``)."""
    from hybrid_jax.models import text_encoder

    return text_encoder.load(directory, **options)
