"""Section V-E ablation: late fusion with separate text encoders for query and metadata. Paper: 28.05.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/clotho_late_separate.py --workdir workdirs/clotho_late_separate
"""
from configs import clotho_late


def get_config():
    config = clotho_late.get_config()
    config.model.text.separate_metadata_encoder = True  # second BERT + projection for metadata
    return config
