"""Table I, ClothoV2: hybrid, full-sentence metadata, mid-level fusion. Paper: 33.57 mAP@10.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/clotho_fs_mid.py --workdir workdirs/clotho_fs_mid
"""
from configs import clotho_mid


def get_config():
    config = clotho_mid.get_config()
    config.data.metadata = "caption"  # another caption of the same clip, never the query
    return config
