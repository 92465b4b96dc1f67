"""Table I, ClothoV2: bert-large hybrid, full-sentence metadata, late fusion. Paper: 37.01.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/clotho_large_fs_late.py --workdir workdirs/clotho_large_fs_late
"""
from configs import clotho_fs_late


def get_config():
    config = clotho_fs_late.get_config()
    config.model.text.checkpoint = "pretrained/bert-large-uncased"  # tools/convert_bert.py output
    return config
