"""Table I, trained on Clotho + AudioCaps, hybrid late fusion (keywords + AudioSet labels). Paper: 31.48 / 57.82.

Clotho items use their keywords and AudioCaps items their AudioSet labels as metadata ("tags").
Evaluates on Clotho; run evaluate with --config.data.eval_name=audiocaps for the AudioCaps column.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/combined_late.py --workdir workdirs/combined_late
"""
from configs import clotho_late


def get_config():
    config = clotho_late.get_config()
    config.data.extra_train = ("audiocaps",)  # AudioCaps train mixed in (zero-padded to 30 s)
    config.data.metadata = "tags"  # keywords for Clotho, AudioSet labels for AudioCaps
    return config
