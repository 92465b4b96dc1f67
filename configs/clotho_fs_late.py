"""Table I, ClothoV2: hybrid, full-sentence metadata (another caption), late fusion. Paper: 35.62.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/clotho_fs_late.py --workdir workdirs/clotho_fs_late
"""
from configs import clotho_late


def get_config():
    config = clotho_late.get_config()
    config.data.metadata = "caption"  # another caption of the same clip, never the query
    return config
