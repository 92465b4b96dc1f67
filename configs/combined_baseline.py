"""Table I, trained on Clotho + AudioCaps, content-only. Paper: 29.94 (Clotho) / 54.00 (AudioCaps).

Evaluates on Clotho; run evaluate with --config.data.eval_name=audiocaps for the AudioCaps column.

Run: python -m hybrid_jax.train --config configs/combined_baseline.py --workdir workdirs/combined_baseline
"""
from configs import clotho_baseline


def get_config():
    config = clotho_baseline.get_config()
    config.data.extra_train = ("audiocaps",)  # AudioCaps train mixed in (zero-padded to 30 s)
    return config
