"""Table I, trained on Clotho + AudioCaps, content-only. Paper: 29.94 (Clotho) / 54.00 (AudioCaps).

Evaluates on Clotho; run evaluate with --config.data.eval_name=audiocaps for the AudioCaps column.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/combined_baseline.py --workdir workdirs/combined_baseline
"""
from configs import clotho_baseline


def get_config():
    config = clotho_baseline.get_config()
    config.data.extra_train = ("audiocaps",)  # AudioCaps train mixed in (zero-padded to 30 s)
    return config
