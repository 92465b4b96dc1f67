"""The training-step workload of the speed comparison (issue 7, `performance.md`): late fusion,
mn10 + MiniLM, both fine-tuned, batch 16, 10 s clips. PyTorch original: 8.5 pairs/s on 2 cores.

Benchmark: python -m hybrid_jax.benchmark --config configs/speed_late_mn10.py
It is a benchmark shape, not a Table I row: the released mn10 weights are used when converted
into pretrained/mn10_as, otherwise a random-init mn10 of the same architecture (same speed).
"""
from configs import base


def get_config():
    config = base.get_config()
    config.model.audio.checkpoint = "pretrained/mn10_as"  # EfficientAT mn10 (random init if absent)
    config.model.audio.width_mult = 1.0  # mn10, used when the checkpoint is absent
    config.model.text.checkpoint = "minilm"  # the packaged all-MiniLM-L6-v2 (converted on first use)
    config.model.fusion.mode = "late"  # normalize(audio + keywords)
    config.data.clip_seconds = 10.0  # 10 s clips: one CNN window per item
    config.data.metadata = "keywords"  # metadata through the shared text encoder
    config.train.batch_size = 16  # the batch of the PyTorch reference figure
    return config
