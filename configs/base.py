"""Shared defaults: the paper's recipe on ClothoV2 with the content-only baseline.

Not run directly; the per-experiment configs import it and override a few keys.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = model = ml_collections.ConfigDict()
    model.dtype = "auto"  # compute dtype: "auto" = bfloat16 on GPU/TPU, float32 on CPU; params stay float32
    model.audio = audio = ml_collections.ConfigDict()
    audio.checkpoint = "pretrained/mn40_as_ext"  # dir from tools/convert_efficientat.py; None = random init
    audio.width_mult = 4.0  # MobileNetV3 width, used only when checkpoint is None
    audio.n_mels = 128  # mel bands, used only when checkpoint is None (a checkpoint brings its own)
    audio.window_seconds = 10.0  # the CNN sees 10 s windows, hop 10 s (authors: segment_length = hop_length = 10)
    # What the pooling transformer sees. "window": one token per window, the CNN's pooled
    # embedding (the authors' code as configured at 8d97913, return_sequence=False: 3 tokens for
    # 30 s, 1 for AudioCaps); "frame": the frequency-averaged feature map, 32 tokens per 10 s
    # window (their return_sequence=True). The paper does not say; the rows use the configured one.
    audio.tokens = "window"
    audio.depthwise = "auto"  # depthwise conv: "auto" (shifted-sum on CPU, fused on TPU, native on GPU), "shifted", "native", "fused"
    audio.bn_momentum = 0.99  # BN running-average decay (Flax convention; EfficientAT's PyTorch momentum 0.01)
    # SpecAugment (training only): EfficientAT's wrapper defaults; the authors' config at 8d97913
    # passes freqm = timem = 0 (off). 0 here reproduces that.
    audio.freq_mask_bins = 48  # max width of the one frequency mask (of 128 mel bins)
    audio.time_mask_frames = 192  # max width of the one time mask per 10 s window
    audio.jitter_band_edges = True  # training-time random fmin/fmax of the mel bank (EfficientAT)
    audio.remat = False  # recompute each CNN block in the backward (less activation memory, ~1/3 more compute)
    model.text = text = ml_collections.ConfigDict()
    text.checkpoint = "pretrained/bert-base-uncased"  # dir from tools/convert_bert.py, or "minilm" (packaged)
    text.dropout = 0.2  # hidden and attention dropout of BERT (recipe value; overrides config.json)
    text.max_length = 32  # tokens after WordPiece, padded/truncated
    text.trainable = True  # fine-tune BERT (False: frozen, only the projections learn)
    text.separate_metadata_encoder = False  # a second BERT + projection for metadata (ablation)
    text.remat = False  # rematerialise BERT layers in the backward pass
    model.pooling = pooling = ml_collections.ConfigDict()
    pooling.dim = 768  # width of the pooling transformer (authors' default; the tokens get a Linear to it)
    # Pre-norm encoder layers. The paper says "multiple transformer encoder layers" without a
    # number; the authors' code defaults to 0 (= masked mean of the window embeddings, no
    # transformer). 2 is the fewest that is "multiple". 0 reproduces their default.
    pooling.num_layers = 2
    pooling.num_heads = 12  # attention heads (authors' default)
    pooling.mlp_dim = 2048  # feed-forward width (authors' default)
    pooling.dropout = 0.1  # dropout in the layers and on attention weights (authors' default)
    pooling.max_len = 192  # length of the position table (authors: 64 * 3); 30 s = 3 window or 96 frame tokens
    pooling.position_dropout = 0.1  # dropout after adding positions (their PositionalEncoding's fixed default)
    model.fusion = fusion = ml_collections.ConfigDict()
    fusion.mode = "none"  # "none" (content-only), "late", "mid", "metadata_only"
    fusion.embed_dim = 1024  # retrieval space width
    model.temperature = 0.05  # NT-Xent tau (initial value when learned; authors: initial_tau 0.05)
    model.learn_temperature = False  # learn tau (authors at 8d97913: freeze_tau=True; older code: learned, init 0.02)
    model.loss = "nt_xent"  # "nt_xent" (tau above) or "siglip" (sigmoid; learned scale/bias, init 10/-10)

    config.data = data = ml_collections.ConfigDict()
    data.name = "clotho"  # prepared dataset: "clotho", "audiocaps", "wavcaps_freesound"
    data.extra_train = ()  # further datasets mixed into training, e.g. ("audiocaps",)
    data.data_dir = "data/tfds"  # where `python -m hybrid_jax.prepare` wrote the datasets
    data.train_split = "train"  # split used for training
    data.val_split = "validation"  # split for model selection (mAP@10 every epoch)
    data.test_split = "test"  # split reported at the end with the best checkpoint
    data.eval_name = ""  # dataset for validation/test if not data.name (WavCaps rows test on Clotho)
    data.clip_seconds = 30.0  # crop (random) / zero-pad every clip to this length (Clotho 30, AudioCaps 10)
    data.metadata = "keywords"  # "keywords" (OS tags), "labels" (AudioSet names), "caption" (FS), "none"
    data.metadata_dropout = 0.0  # training: drop an item's metadata with this probability
    data.worker_count = 0  # Grain worker processes (0 = in-process; faster on 2 cores)
    data.cache_in_memory = False  # hold the training split's int16 audio in RAM (fast; Clotho dev ~5.5 GB)
    data.synthetic = False  # generate + prepare the offline synthetic Clotho-format set if missing
    data.synthetic_dir = "data/synthetic_clotho"  # where the synthetic raw files go (if synthetic)
    data.synthetic_seed = 0  # seed of the synthetic dataset
    data.synthetic_clips = {"development": 400, "validation": 64, "evaluation": 64}  # its size
    data.synthetic_seconds = (5.0, 30.0)  # shortest and longest synthetic clip

    config.optim = optim = ml_collections.ConfigDict()
    optim.peak_lr = 2e-5  # after the warm-up
    optim.final_lr = 1e-7  # reached at decay_end_epoch, then constant
    optim.warmup_epochs = 1.0  # linear warm-up from 0
    optim.decay_end_epoch = 20.0  # end of the cosine decay
    optim.b1 = 0.9  # Adam beta1
    optim.b2 = 0.999  # Adam beta2
    optim.eps = 1e-8  # Adam epsilon
    optim.clip_grad_norm = 0.0  # global-norm clipping (0 = off, as in the recipe)

    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 32  # global batch (pairs) across all devices and hosts
    train.num_epochs = 25  # training length
    train.max_steps = 0  # stop after this many steps (0 = num_epochs); for smoke tests and resume tests
    train.seed = 0  # parameter init, augmentation and data order
    train.log_every_steps = 10  # metrics.jsonl / TensorBoard cadence
    train.checkpoint_every_steps = 0  # extra "latest" checkpoints (0 = at each epoch end only)
    train.microbatch_size = 0  # pairs per sub-batch (global); 0 = the whole batch in one pass
    train.accumulation = "gradcache"  # sub-batches: "gradcache" (exact full-batch loss) or "naive" (loss per sub-batch)
    train.loss_impl = "plain"  # "plain" (global logits) or "ring" (ppermute ring, no B x B on a device; mid: plain)

    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.shape = (("data", -1), ("fsdp", 1))  # axis sizes; -1 fills with the remaining devices
    # FSDP rules: (regex searched in the leaf path, PartitionSpec axes); the first match wins,
    # unmatched leaves (biases, norms, BN statistics, scalars) are replicated, and an axis whose
    # size does not divide a dimension falls back to replication there, so one rule set serves
    # mn04..mn40 and MiniLM..bert-large. With fsdp=1 (the default) every rule is a no-op. The
    # regexes are unanchored because the same rules shard Adam's mu/nu ("0/mu/bert/...").
    mesh.rules = (
        # SE Dense kernels [C, C/4] (mn40: up to 3840 x 960): the input width.
        (r"conc_se_layers_\d+/fc\d/kernel$", ("fsdp", None)),
        # HWIO conv kernels: input channels (multiples of 8 at every mn* width). Depthwise (and
        # stem) kernels [k, k, 1, C] thus stay replicated: they are small, and a channel-split
        # grouped-conv gradient makes XLA's SPMD partitioner replicate it involuntarily.
        (r"mobilenet/.*/conv/kernel$", (None, None, "fsdp", None)),
        # BERT tables [V, H]: the hidden width (vocab 30522 = 2 * 15261 splits only in two).
        (r"embeddings/\w+_embeddings/embedding$", (None, "fsdp")),
        # Pooling attention output [heads, head_dim, D]: D.
        (r"pool/layer_\d+/attn/out/kernel$", (None, None, "fsdp")),
        # Every other Dense kernel [in, out] or [in, heads, head_dim] (BERT, pooling, projections).
        (r"/kernel$", ("fsdp",)),
    )

    config.eval = ev = ml_collections.ConfigDict()
    ev.batch_size = 32  # items / queries per embedding batch
    ev.every_epochs = 1  # validation cadence
    ev.missing_metadata = 0.0  # fraction of evaluation items whose metadata is removed
    return config
