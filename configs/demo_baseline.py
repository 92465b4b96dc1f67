"""The offline demo's content-only baseline (same model and data, no metadata).

Run: python -m hybrid_jax.train --config configs/demo_baseline.py --workdir workdirs/demo_baseline
"""
from configs import demo


def get_config():
    config = demo.get_config()
    config.model.fusion.mode = "none"  # audio only
    config.data.metadata = "none"  # no keywords are read
    return config
