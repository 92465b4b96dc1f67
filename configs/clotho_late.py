"""Table I, ClothoV2: hybrid, open-set keywords, late fusion. Paper: 29.16 mAP@10.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/clotho_late.py --workdir workdirs/clotho_late
"""
from configs import base


def get_config():
    config = base.get_config()
    config.model.fusion.mode = "late"  # normalize(audio + keywords)
    config.data.metadata = "keywords"  # Clotho FreeSound keywords joined by spaces
    return config
