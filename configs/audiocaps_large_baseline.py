"""Table I, AudioCaps: bert-large content-only baseline. Paper: 55.41 mAP@10.

Model: "window" audio tokens (one per 10 s window: 1 per AudioCaps clip) and 2 pooling
transformer layers; configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/audiocaps_large_baseline.py --workdir workdirs/audiocaps_large_baseline
"""
from configs import audiocaps_baseline


def get_config():
    config = audiocaps_baseline.get_config()
    config.model.text.checkpoint = "pretrained/bert-large-uncased"  # tools/convert_bert.py output
    return config
