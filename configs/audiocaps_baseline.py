"""Table I, AudioCaps: content-only baseline. Paper: 54.14 mAP@10.

Model: "window" audio tokens (one per 10 s window: 1 per AudioCaps clip) and 2 pooling
transformer layers; configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/audiocaps_baseline.py --workdir workdirs/audiocaps_baseline
"""
from configs import clotho_baseline


def get_config():
    config = clotho_baseline.get_config()
    config.data.name = "audiocaps"  # prepared with python -m hybrid_jax.prepare audiocaps
    config.data.clip_seconds = 10.0  # AudioCaps clips are 10 s: one window
    return config
