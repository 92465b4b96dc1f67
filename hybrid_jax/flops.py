"""Analytic FLOPs of a training pair: the model's arithmetic counted from its shapes alone.

The compiler's cost analysis counts what the compiled program does (including recomputation
under remat or memory pressure, and implementation choices such as the STFT as a DFT matmul);
this counts what the model needs, so that the two can be set side by side and "model FLOPs
utilisation" means model FLOPs. Conventions:

* A multiply-accumulate (MAC) is 2 FLOPs. Convolutions and linear layers count their weights and
  biases, as EfficientAT's own counter does (``helpers/flop_count.py``: a conv's MACs are
  ``C_out x (k_h k_w C_in / groups + bias) x H_out x W_out``; a linear's, its parameters per
  row); for ``mn40_as_ext`` on one 10 s window that gives the 8 027 637 831 MACs its README
  reports (a test checks it). Batch norm, activations, pooling, layer norm and softmax are not
  counted; attention's two products (Q K^T and A V) are.
* Training = forward + backward, the backward counted as twice the forward (input and weight
  gradients) for every trained part. A frozen BERT (``text_trainable=False``: the gradient stops
  at its output) is counted once. The mel front end has no parameters and nothing upstream to
  differentiate, so it too is counted once.
* The front end is counted as implemented: the STFT as a DFT matmul (``stft="matmul"``, the TPU
  choice) costs ``frames x win x 2K`` MACs, the FFT ``2.5 n_fft log2 n_fft`` FLOPs per frame
  (the split-radix count); then the mel bank's ``frames x K x n_mels`` MACs.
* The NT-Xent logits cost ``B x D`` MACs per pair (one row of the [B, B] product), so the count
  depends on the global batch; at Clotho's sizes it is negligible.
"""
from __future__ import annotations

import dataclasses
import math

from hybrid_jax.backend import policy as backend_policy
from hybrid_jax.models import frontend
from hybrid_jax.models.bert import BertConfig
from hybrid_jax.models.mobilenet import channel_plan

AUDIOSET_CLASSES = 527  # the classifier EfficientAT's README counts in its MACs
TRAINING_FACTOR = 3  # forward + backward (twice the forward)


def _same_out(size: int, kernel: int, stride: int) -> int:
    """Output length of a conv with PyTorch's padding (k - 1) // 2, as MobileNetV3 uses."""
    pad = (kernel - 1) // 2
    return (size + 2 * pad - kernel) // stride + 1


def linear_macs(rows: int, fan_in: int, fan_out: int, bias: bool = True) -> int:
    """A Dense layer applied to ``rows`` vectors."""
    return rows * fan_out * (fan_in + int(bias))


def _block_maps(plan, n_mels: int, frames: int):
    """(block, input map (F, T), output map (F, T)) of each inverted-residual block, after the
    stride-2 stem."""
    f, t = _same_out(n_mels, 3, 2), _same_out(frames, 3, 2)
    for block in plan.blocks:
        k, s = block.spec.kernel, block.spec.stride
        out_f, out_t = _same_out(f, k, s), _same_out(t, k, s)
        yield block, (f, t), (out_f, out_t)
        f, t = out_f, out_t


def mobilenet_macs(width_mult: float, n_mels: int, frames: int, num_classes: int = 0,
                   bias: bool = True) -> int:
    """MACs of EfficientAT's MobileNetV3 on one [n_mels, frames] mel window: stem, the 15
    inverted-residual blocks (expansion, depthwise, SE, projection), the last 1x1 conv, and the
    mlp classifier when ``num_classes`` (the retrieval model has none). Convs carry no bias (batch
    norm follows); the SE and classifier linears do (``bias=False`` leaves their biases out)."""
    plan = channel_plan(width_mult)
    macs = 3 * 3 * plan.stem * _same_out(n_mels, 3, 2) * _same_out(frames, 3, 2)  # stem: 1 channel in
    area = 0
    for block, inp, out in _block_maps(plan, n_mels, frames):
        area = out[0] * out[1]
        if block.expanded != block.inp:
            macs += block.inp * block.expanded * inp[0] * inp[1]
        macs += block.spec.kernel ** 2 * block.expanded * area  # depthwise: one input channel per output
        if block.squeeze:  # on the pooled [C] vector: one row each
            macs += (linear_macs(1, block.expanded, block.squeeze, bias)
                     + linear_macs(1, block.squeeze, block.expanded, bias))
        macs += block.expanded * block.out * area
    macs += plan.blocks[-1].out * plan.last_conv * area
    if num_classes:
        macs += (linear_macs(1, plan.last_conv, plan.head_hidden, bias)
                 + linear_macs(1, plan.head_hidden, num_classes, bias))
    return macs


def frontend_flops(mel: frontend.MelConfig, samples: int, stft: str) -> float:
    """FLOPs of the log-mel front end on one window of ``samples`` (counted as implemented)."""
    frames = mel.num_frames(samples)
    bins = mel.n_fft // 2 + 1
    if stft == "matmul":
        per_frame = 2 * mel.win_length * 2 * bins
    else:
        per_frame = 2.5 * mel.n_fft * math.log2(mel.n_fft)
    return float(frames * (per_frame + 2 * bins * mel.n_mels))


def encoder_layer_macs(length: int, dim: int, mlp_dim: int, bias: bool = True) -> int:
    """One transformer encoder layer on a sequence of ``length``: Q, K, V and output projections,
    the attention products Q K^T and A V (heads together: length^2 x dim each), the MLP."""
    return (linear_macs(length, dim, 3 * dim, bias) + linear_macs(length, dim, dim, bias)
            + 2 * length * length * dim
            + linear_macs(length, dim, mlp_dim, bias) + linear_macs(length, mlp_dim, dim, bias))


def bert_macs(config: BertConfig, length: int, bias: bool = True) -> int:
    """BERT's encoder on one sequence of ``length`` tokens (embedding lookups cost no MACs; the
    retrieval model uses the last hidden state, no pooler)."""
    return config.num_hidden_layers * encoder_layer_macs(length, config.hidden_size, config.intermediate_size, bias)


def audio_tokens(model, num_samples: int) -> tuple[int, int, int, int]:
    """(windows, samples per window, tokens, token width) of the audio tower on a clip."""
    settings = model.audio
    window = round(settings.window_seconds * settings.mel.sample_rate)
    windows = -(-num_samples // window)
    plan = channel_plan(settings.width_mult)
    _, _, (_, time_steps) = list(_block_maps(plan, settings.mel.n_mels, settings.mel.num_frames(window)))[-1]
    per_window = 1 if settings.tokens == "window" else time_steps  # frame tokens: the final map's T'
    return windows, window, windows * per_window, plan.last_conv


@dataclasses.dataclass(frozen=True)
class PairFlops:
    """Forward FLOPs of one training pair by part, and the training total."""

    frontend: float  # mel front end, all windows (no backward)
    cnn: float  # MobileNetV3, all windows
    pooling: float  # token projection + pooling transformer
    text_query: float  # BERT on the caption
    text_metadata: float  # BERT on the metadata (0 without metadata)
    heads: float  # projections to the retrieval space, fusion heads, the logits row
    text_trainable: bool

    @property
    def forward(self) -> float:
        return (self.frontend + self.cnn + self.pooling + self.text_query + self.text_metadata
                + self.heads)

    @property
    def training(self) -> float:
        """Forward + backward of one pair (see the module docstring)."""
        text = self.text_query + self.text_metadata
        trained = self.cnn + self.pooling + self.heads + (text if self.text_trainable else 0.0)
        return self.frontend + (0.0 if self.text_trainable else text) + TRAINING_FACTOR * trained

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "forward": self.forward, "training": self.training}


def pair_flops(model, num_samples: int, text_length: int, global_batch: int,
               bias: bool = True) -> PairFlops:
    """Analytic FLOPs of one training pair of ``model`` (a ``RetrievalModel``) on clips of
    ``num_samples`` and texts of ``text_length`` tokens, in a global batch of ``global_batch``
    (0: without the logits). ``bias=False`` counts the weights' products only, i.e. exactly the
    dots and convolutions of the traced forward (which a test checks)."""
    fusion, dim, embed = model.fusion, model.pooling.dim, model.embed_dim
    hidden = model.text.hidden_size

    def lin(fan_in, fan_out, rows=1):
        return linear_macs(rows, fan_in, fan_out, bias)

    front = cnn = pool = heads = 0.0
    if fusion != "metadata_only":
        settings = model.audio
        windows, window, tokens, width = audio_tokens(model, num_samples)
        frames = settings.mel.num_frames(window)
        stft = backend_policy.local().stft if settings.stft == "auto" else settings.stft  # as AudioTower
        front = windows * frontend_flops(settings.mel, window, stft)
        cnn = 2.0 * windows * mobilenet_macs(settings.width_mult, settings.mel.n_mels, frames, bias=bias)
        if model.pooling.num_layers:
            length = 1 + tokens + (1 if fusion == "mid" else 0)  # global token (+ metadata token)
            pool = 2.0 * ((lin(width, dim, tokens) if width != dim else 0)
                          + model.pooling.num_layers * encoder_layer_macs(length, dim, model.pooling.mlp_dim, bias))
            width = dim  # else the masked mean of the raw tokens
        heads += lin(width, embed)  # audio projection
    query = 2.0 * bert_macs(model.text, text_length, bias)
    metadata = query if fusion != "none" else 0.0
    if fusion == "mid":  # two gated embedding units and the mixture; the metadata token and its expert
        heads += 2 * (lin(hidden, embed) + lin(embed, embed)) + lin(hidden, 2)
        heads += lin(hidden, dim) + lin(dim, embed)
    else:  # the text projection, on the query and (shared or separate) on the metadata
        heads += lin(hidden, embed) * (2 if metadata else 1)
    heads += global_batch * embed * (2 if fusion == "mid" else 1)  # a logits row (mid: two experts)
    return PairFlops(front, cnn, pool, query, metadata, 2.0 * heads, model.text_trainable)
