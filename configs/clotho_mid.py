"""Table I, ClothoV2: hybrid, open-set keywords, mid-level fusion. Paper: 28.25 mAP@10.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/clotho_mid.py --workdir workdirs/clotho_mid
"""
from configs import base


def get_config():
    config = base.get_config()
    config.model.fusion.mode = "mid"  # metadata token in the pooling transformer, gated experts
    config.data.metadata = "keywords"  # Clotho FreeSound keywords
    return config
