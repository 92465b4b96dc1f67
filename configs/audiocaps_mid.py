"""Table I, AudioCaps: hybrid, AudioSet labels, mid-level fusion. Paper: 57.40 mAP@10.

Model: "window" audio tokens (one per 10 s window: 1 per AudioCaps clip) and 2 pooling
transformer layers; configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/audiocaps_mid.py --workdir workdirs/audiocaps_mid
"""
from configs import clotho_mid


def get_config():
    config = clotho_mid.get_config()
    config.data.name = "audiocaps"  # prepared with python -m hybrid_jax.prepare audiocaps
    config.data.clip_seconds = 10.0  # one 10 s window
    config.data.metadata = "labels"  # AudioSet display names
    return config
