"""hybrid_jax: JAX/Flax hybrid audio + metadata language-based audio retrieval.

The public API (everything else is importable but may change):

* ``load_audio_encoder(directory)``: a converted EfficientAT MobileNetV3 (``tools/convert_efficientat.py``)
  -> ``AudioEncoder`` (log-mel, AudioSet logits, embeddings of waveforms and files).
* ``load_text_encoder(directory)``: a converted BERT (``tools/convert_bert.py``) -> ``TextEncoder``
  (the paper's text preprocessing, WordPiece, last hidden state).

Commands: ``python -m hybrid_jax.{train,evaluate,search,prepare,benchmark}`` (see the README).
"""
from hybrid_jax.models.pretrained import load_audio_encoder, load_text_encoder

__all__ = ["load_audio_encoder", "load_text_encoder"]
