"""Table I, ClothoV2: content-only baseline (mn40_as_ext + bert-base, no metadata). Paper: 26.80 mAP@10.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/clotho_baseline.py --workdir workdirs/clotho_baseline
"""
from configs import base


def get_config():
    config = base.get_config()
    config.model.fusion.mode = "none"  # audio only
    config.data.metadata = "none"  # no metadata is read
    return config
