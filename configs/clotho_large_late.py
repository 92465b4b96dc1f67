"""Table I, ClothoV2: bert-large hybrid, keywords, late fusion. Paper: 29.88 mAP@10.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/clotho_large_late.py --workdir workdirs/clotho_large_late
"""
from configs import clotho_late


def get_config():
    config = clotho_late.get_config()
    config.model.text.checkpoint = "pretrained/bert-large-uncased"  # tools/convert_bert.py output
    return config
