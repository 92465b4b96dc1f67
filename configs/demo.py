"""The offline demo: late-fusion hybrid on the synthetic Clotho-format dataset, on a laptop CPU.

Generates and prepares a small synthetic dataset on first use (data/demo/: 160/64/64 clips of
2.5-5 s), uses the packaged real MiniLM (frozen) as text encoder and a small MobileNetV3 (mn02 on
64 mel bands, trained from scratch: no released weights are needed), trains 6 epochs and prints
test mAP@10 and R@k. Sized to finish within 15 minutes on 2 CPU cores, where XLA:CPU runs the
CNN's backward pass at a few dozen audio-seconds per second.

Run: python -m hybrid_jax.train --config configs/demo.py --workdir workdirs/demo
Baseline (content only): python -m hybrid_jax.train --config configs/demo_baseline.py --workdir workdirs/demo_baseline
"""
from configs import base


def get_config():
    config = base.get_config()
    config.model.audio.checkpoint = None  # train the CNN from scratch (no download needed)
    config.model.audio.width_mult = 0.2  # mn02: ~0.3 M parameters, fast on a CPU
    config.model.audio.window_seconds = 5.0  # one window covers a whole (short) demo clip
    config.model.audio.n_mels = 64  # half the CNN cost (EfficientAT's mels_64 variant); F' = 2
    config.model.audio.bn_momentum = 0.9  # a from-scratch CNN trained for 150 steps: let BN's
    # running statistics follow the fast-changing weights, or eval-mode BN lags behind training
    config.model.audio.freq_mask_bins = 12  # lighter SpecAugment for a small model and few epochs
    config.model.audio.time_mask_frames = 50  # per 5 s window
    config.model.text.checkpoint = "minilm"  # the packaged all-MiniLM-L6-v2 (converted on first use)
    config.model.text.trainable = False  # frozen: keeps the demo within minutes on 2 CPU cores
    config.model.text.dropout = 0.0  # no dropout in a frozen encoder
    config.model.audio.tokens = "frame"  # 16 time steps per 5 s window (window tokens would give 1)
    config.model.pooling.dim = 256  # small pooling transformer
    config.model.pooling.num_layers = 1  # one layer suffices for the small demo (the paper rows use 2)
    config.model.pooling.num_heads = 4  # 64 per head
    config.model.pooling.mlp_dim = 512  # feed-forward width
    config.model.fusion.mode = "late"  # normalize(audio + keywords)
    config.model.fusion.embed_dim = 256  # retrieval space
    config.data.synthetic = True  # generate + prepare data/demo/ on first use
    config.data.synthetic_dir = "data/demo/synthetic_clotho"  # raw Clotho-format files
    config.data.data_dir = "data/demo/tfds"  # prepared dataset
    config.data.clip_seconds = 5.0  # the longest demo clip: nothing is cropped
    config.data.synthetic_clips = {"development": 160, "validation": 64, "evaluation": 64}  # small
    config.data.synthetic_seconds = (2.5, 5.0)  # short scenes keep the CPU demo fast
    config.data.metadata = "keywords"  # the synthetic FreeSound-like keywords
    config.data.cache_in_memory = True  # ~0.05 GB of int16 audio
    config.optim.peak_lr = 1e-3  # from-scratch CNN and fresh projections learn faster than fine-tuning
    config.optim.final_lr = 1e-5  # end of the cosine
    config.optim.decay_end_epoch = 6.0  # decay over the whole run
    config.train.num_epochs = 6  # 25 steps per epoch at batch 32
    config.train.log_every_steps = 10  # metrics.jsonl cadence
    config.eval.batch_size = 32  # embedding batch
    return config
