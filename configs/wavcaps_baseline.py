"""Table II: trained on the WavCaps FreeSound subset, no metadata, tested on ClothoV2. Paper: 30.35.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/wavcaps_baseline.py --workdir workdirs/wavcaps_baseline
"""
from configs import clotho_baseline


def get_config():
    config = clotho_baseline.get_config()
    config.data.name = "wavcaps_freesound"  # prepared with python -m hybrid_jax.prepare wavcaps_freesound
    config.data.eval_name = "clotho"  # validation and test on ClothoV2
    config.data.val_split = "validation"  # of Clotho
    return config
