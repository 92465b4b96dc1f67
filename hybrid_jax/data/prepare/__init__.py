"""Dataset preparation: TFDS builders (Clotho, AudioCaps, WavCaps) and the per-dataset readers and report."""
