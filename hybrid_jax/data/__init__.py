"""Dataset preparation (TFDS builders for Clotho, AudioCaps, WavCaps) and Grain input pipelines."""
