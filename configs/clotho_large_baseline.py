"""Table I, ClothoV2: bert-large content-only baseline. Paper: 27.98 mAP@10.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/clotho_large_baseline.py --workdir workdirs/clotho_large_baseline
"""
from configs import clotho_baseline


def get_config():
    config = clotho_baseline.get_config()
    config.model.text.checkpoint = "pretrained/bert-large-uncased"  # tools/convert_bert.py output
    return config
