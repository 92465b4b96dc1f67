"""Table II: trained on the WavCaps FreeSound subset with its tags as metadata (late), tested on ClothoV2. Paper: 27.67.

Model: "window" audio tokens (one per 10 s window) and 2 pooling transformer layers;
configs/base.py says why.

Run: python -m hybrid_jax.train --config configs/wavcaps_tags.py --workdir workdirs/wavcaps_tags
"""
from configs import wavcaps_baseline


def get_config():
    config = wavcaps_baseline.get_config()
    config.model.fusion.mode = "late"  # normalize(audio + tags)
    config.data.metadata = "tags"  # FreeSound tags for WavCaps, keywords for Clotho
    return config
