"""hybrid_jax: JAX/Flax hybrid audio + metadata language-based audio retrieval.

The public API (everything else is importable but may change):

* ``load_audio_encoder(directory)``: a converted EfficientAT MobileNetV3 (``tools/convert_efficientat.py``)
  -> ``AudioEncoder`` (log-mel, AudioSet logits, embeddings of waveforms and files).
* ``load_text_encoder(directory)``: a converted BERT (``tools/convert_bert.py``) -> ``TextEncoder``
  (the paper's text preprocessing, WordPiece, last hidden state).
* ``load_model(directory)``: a trained retrieval model (``python -m hybrid_jax.export``) -> ``Model``
  (``embed_text``, ``embed_audio`` of files or waveforms of any length, ``similarity``).

Commands: ``python -m hybrid_jax.{train,evaluate,export,search,serve,prepare,benchmark}`` (see the README).
"""
from hybrid_jax.models.pretrained import load_audio_encoder, load_text_encoder


def load_model(directory, **options):
    """``hybrid_jax.inference.load_model``: a model directory -> ``Model`` (imported on first use)."""
    from hybrid_jax.inference import load_model as load

    return load(directory, **options)


__all__ = ["load_audio_encoder", "load_model", "load_text_encoder"]
