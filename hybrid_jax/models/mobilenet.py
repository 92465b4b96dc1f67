"""EfficientAT's MobileNetV3 (``mn01`` ... ``mn40``, mlp head) as a Flax Linen module (NHWC, H = time).

Submodule names mirror the PyTorch state-dict segments (``features.4.block.2`` becomes
``features_4/block_2``; the ``0``/``1`` of a conv+BN pair become ``conv``/``bn``), so converting a
checkpoint is a rename plus layout transposes (see ``convert_efficientat.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hybrid_jax.backend import depthwise as depthwise_conv
from hybrid_jax.backend import policy as backend_policy
from hybrid_jax.backend import pointwise

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # Flax convention; PyTorch's momentum 0.01
HEAD_HIDDEN = 1280
SE_REDUCTION = 4
LAST_CONV_EXPANSION = 6


class BlockSpec(NamedTuple):
    """One inverted-residual block at width 1.0; its input width is the previous block's output."""

    kernel: int
    expanded: int
    out: int
    use_se: bool
    activation: str  # "relu" or "hardswish"
    stride: int


STEM_CHANNELS = 16
BLOCK_SPECS = (
    BlockSpec(3, 16, 16, False, "relu", 1),
    BlockSpec(3, 64, 24, False, "relu", 2),
    BlockSpec(3, 72, 24, False, "relu", 1),
    BlockSpec(5, 72, 40, True, "relu", 2),
    BlockSpec(5, 120, 40, True, "relu", 1),
    BlockSpec(5, 120, 40, True, "relu", 1),
    BlockSpec(3, 240, 80, False, "hardswish", 2),
    BlockSpec(3, 200, 80, False, "hardswish", 1),
    BlockSpec(3, 184, 80, False, "hardswish", 1),
    BlockSpec(3, 184, 80, False, "hardswish", 1),
    BlockSpec(3, 480, 112, True, "hardswish", 1),
    BlockSpec(3, 672, 112, True, "hardswish", 1),
    BlockSpec(5, 672, 160, True, "hardswish", 2),
    BlockSpec(5, 960, 160, True, "hardswish", 1),
    BlockSpec(5, 960, 160, True, "hardswish", 1),
)

ACTIVATIONS = {"relu": nn.relu, "hardswish": jax.nn.hard_swish}


def make_divisible(value: float, divisor: int = 8) -> int:
    """TensorFlow MobileNet rounding: nearest multiple of ``divisor``, never more than 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """A block's rounded channels; ``layers`` names its sub-layers in state-dict order."""

    spec: BlockSpec
    inp: int
    expanded: int
    out: int
    squeeze: int  # SE bottleneck width, 0 without SE

    @property
    def layers(self) -> tuple[str, ...]:
        # PyTorch numbers only the sub-layers that exist, so a missing expansion shifts the rest.
        present = {"expand": self.expanded != self.inp, "depthwise": True, "se": self.spec.use_se,
                   "project": True}
        return tuple(name for name, exists in present.items() if exists)

    @property
    def residual(self) -> bool:
        return self.spec.stride == 1 and self.inp == self.out


@dataclasses.dataclass(frozen=True)
class ChannelPlan:
    """Rounded channels of the whole network at one width."""

    stem: int
    blocks: tuple[BlockPlan, ...]
    last_conv: int
    head_hidden: int


def channel_plan(width_mult: float) -> ChannelPlan:
    """Rounded channel counts of every layer for a width multiplier (``mn_width_table.tsv``)."""
    stem = make_divisible(STEM_CHANNELS * width_mult)
    blocks, inp = [], stem
    for spec in BLOCK_SPECS:
        expanded = make_divisible(spec.expanded * width_mult)
        out = make_divisible(spec.out * width_mult)
        squeeze = make_divisible(expanded // SE_REDUCTION) if spec.use_se else 0
        blocks.append(BlockPlan(spec, inp, expanded, out, squeeze))
        inp = out
    last_conv, head_hidden = LAST_CONV_EXPANSION * inp, make_divisible(HEAD_HIDDEN * width_mult)
    return ChannelPlan(stem, tuple(blocks), last_conv, head_hidden)


def resolve_depthwise(depthwise: str, policy: backend_policy.Policy | None = None) -> str:
    """"shifted"/"native"/"fused" as given; "auto" by ``policy`` (default: this process's devices).

    The training, evaluation and planning paths resolve "auto" from their mesh at build time
    (``build``), so a module reaching here with "auto" is a standalone one (an ``AudioEncoder``).
    """
    return (policy or backend_policy.local()).kernels(depthwise)


def spatial_conv(x, kernel, stride: int, depthwise: bool, impl: str, precision=None):
    """k x k conv, NHWC x [k, k, I, O] with PyTorch's symmetric (k - 1) // 2 padding (never SAME).

    ``impl="shifted"`` writes it as a sum of k*k strided slices times per-channel weights, which
    XLA fuses into one loop, with a hand-written backward (``depthwise.shifted_conv``); it covers
    depthwise kernels and single-input-channel ones (the stem). ``impl="fused"`` (TPU) takes its
    accelerator form (``depthwise.fused_conv``) for stride-1 depthwise convs and the stem, and
    XLA's convolution for the strided depthwise ones (see ``hybrid_jax.backend.depthwise``).
    """
    k = kernel.shape[0]
    pad = (k - 1) // 2
    stem = kernel.shape[2] == 1 and not depthwise
    if impl == "fused" and ((depthwise and stride == 1) or stem):
        return depthwise_conv.fused_conv(x, kernel, stride)
    if impl in ("native", "fused") or not (depthwise or kernel.shape[2] == 1):
        return jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1] if depthwise else 1,
            precision=precision,
        )
    return depthwise_conv.shifted_conv(x, kernel, stride)


def pointwise_conv(x, kernel, gate=None, precision=None, impl: str = "native"):
    """1x1 conv as a GEMM, optionally after an SE ``gate`` [B, I] on the input channels.

    The gate scales whichever is smaller: the expanded activation (B*H*W*I values) or per-example
    copies of the weights (B*I*O). Early blocks have big maps and few channels, the last blocks
    the reverse (mn40 block 14: 0.5 M activations per example against 2.5 M weights).
    ``impl="shifted"`` (the CPU choice) sums the kernel gradient per example
    (``pointwise.matmul``); both give the same values.
    """
    weights = kernel.reshape(kernel.shape[2], kernel.shape[3])
    if gate is not None and x.shape[1] * x.shape[2] > weights.shape[1]:
        return jnp.einsum("bhwi,bio->bhwo", x, gate[:, :, None] * weights, precision=precision)
    if gate is not None:
        x = x * gate[:, None, None, :]
    if impl == "shifted" and precision is None:
        return pointwise.matmul(x, weights)
    return jnp.einsum("bhwi,io->bhwo", x, weights, precision=precision)


class BatchNorm(nn.Module):
    """BatchNorm with PyTorch's semantics (eps 1e-3, unbiased running variance) that can fold."""

    features: int
    momentum: float = BN_MOMENTUM  # running-average decay (Flax convention: 1 - PyTorch momentum)

    def setup(self):
        self.scale = self.param("scale", nn.initializers.ones, (self.features,))
        self.bias = self.param("bias", nn.initializers.zeros, (self.features,))
        self.mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,))
        self.var = self.variable("batch_stats", "var", jnp.ones, (self.features,))

    def fold(self):
        """Eval-mode BN as y * multiplier + shift, each [C] float32."""
        multiplier = self.scale * jax.lax.rsqrt(self.var.value + BN_EPSILON)
        return multiplier, self.bias - self.mean.value * multiplier

    def __call__(self, y, *, train: bool):
        if train:
            # Both statistics in one pass over y (E[d], E[d^2]), so that XLA computes them in
            # the fusion that writes y: the two-pass form read every activation once more
            # (TPU cost model, clotho_late on v5p at 32 pairs per chip: 220.7 -> 206.2 GB
            # accessed, 97.7 -> 91.5 ms per step; docs/tpu_efficiency.md). Centring on the
            # running mean (a constant here) keeps E[d^2] - E[d]^2 from cancelling when
            # |mean| >> std.
            shift = jax.lax.stop_gradient(self.mean.value)
            d = y.astype(jnp.float32) - shift
            mean_d = d.mean(axis=(0, 1, 2))
            var = jnp.maximum(jnp.square(d).mean(axis=(0, 1, 2)) - jnp.square(mean_d), 0.0)
            mean = mean_d + shift
            if not self.is_initializing():
                count = y.size // y.shape[-1]
                unbiased = var * count / max(count - 1, 1)  # PyTorch tracks the unbiased variance
                self.mean.value = self.momentum * self.mean.value + (1 - self.momentum) * mean
                self.var.value = self.momentum * self.var.value + (1 - self.momentum) * unbiased
            multiplier = self.scale * jax.lax.rsqrt(var + BN_EPSILON)
            shift = self.bias - mean * multiplier
        else:
            multiplier, shift = self.fold()
        return y * multiplier.astype(y.dtype) + shift.astype(y.dtype)


class ConvKernel(nn.Module):
    """Holds one HWIO kernel, so that the conv's parameters sit at ``.../conv/kernel``."""

    shape: tuple[int, ...]

    @nn.compact
    def __call__(self):
        # EfficientAT's init: kaiming normal, fan_out (= O * k * k for HWIO, also when depthwise).
        init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        return self.param("kernel", init, self.shape)


class ConvBN(nn.Module):
    """Conv (no bias) -> BN -> optional activation on (B, T, F, C); eval folds BN into the kernel."""

    kind: str  # "full", "depthwise" or "pointwise"
    in_features: int
    out_features: int
    kernel_size: int = 1
    stride: int = 1
    activation: Optional[str] = None
    depthwise: str = "auto"
    fold_bn: bool = True
    bn_momentum: float = BN_MOMENTUM
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, train: bool, gate=None):
        k = self.kernel_size
        in_per_group = 1 if self.kind == "depthwise" else self.in_features
        kernel = ConvKernel((k, k, in_per_group, self.out_features), name="conv")()
        bn = BatchNorm(self.out_features, self.bn_momentum, name="bn")
        fold = self.fold_bn and not train
        shift = None
        if fold:
            multiplier, shift = bn.fold()
            kernel = kernel * multiplier
        kernel = kernel.astype(self.dtype)
        impl = resolve_depthwise(self.depthwise)
        if self.kind == "pointwise":
            y = pointwise_conv(x, kernel, gate, self.precision, impl)
        else:
            kernel = kernel.transpose(1, 0, 2, 3)  # (frequency, time) -> activations' (time, frequency)
            y = spatial_conv(x, kernel, self.stride, self.kind == "depthwise", impl, self.precision)
        y = y + shift.astype(self.dtype) if fold else bn(y, train=train)
        return ACTIVATIONS[self.activation](y) if self.activation else y


class SqueezeExcitation(nn.Module):
    """Channel SE: mean over F and T -> Linear -> ReLU -> Linear -> true sigmoid; returns the gate."""

    features: int
    squeeze: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        pooled = x.astype(jnp.float32).mean(axis=(1, 2))  # [B, C]
        dense = dict(kernel_init=nn.initializers.lecun_normal(), precision=self.precision)
        hidden = nn.relu(nn.Dense(self.squeeze, name="fc1", **dense)(pooled))
        return nn.sigmoid(nn.Dense(self.features, name="fc2", **dense)(hidden))


class ConcurrentSE(nn.Module):
    """EfficientAT's SE wrapper with its single (channel) branch; max over one branch is identity."""

    features: int
    squeeze: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        return SqueezeExcitation(self.features, self.squeeze, self.precision, name="conc_se_layers_0")(x)


class InvertedResidual(nn.Module):
    """expand 1x1 (if widened) -> depthwise k x k -> SE gate (fused into project) -> project 1x1."""

    plan: BlockPlan
    depthwise: str = "auto"
    fold_bn: bool = True
    bn_momentum: float = BN_MOMENTUM
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, train: bool):
        # ``train`` is positional so that nn.remat can mark it static (MobileNetV3.remat).
        plan, spec = self.plan, self.plan.spec
        common = dict(depthwise=self.depthwise, fold_bn=self.fold_bn, bn_momentum=self.bn_momentum,
                      dtype=self.dtype, precision=self.precision)
        names = {layer: f"block_{j}" for j, layer in enumerate(plan.layers)}
        y, gate = x, None
        if "expand" in names:
            y = ConvBN("pointwise", plan.inp, plan.expanded, activation=spec.activation,
                       name=names["expand"], **common)(y, train=train)
        y = ConvBN("depthwise", plan.expanded, plan.expanded, spec.kernel, spec.stride,
                   spec.activation, name=names["depthwise"], **common)(y, train=train)
        if "se" in names:
            gate = ConcurrentSE(plan.expanded, plan.squeeze, self.precision, name=names["se"])(y)
            gate = gate.astype(self.dtype)
        y = ConvBN("pointwise", plan.expanded, plan.out, name=names["project"], **common)(
            y, train=train, gate=gate)
        return y + x if plan.residual else y


class MobileNetV3(nn.Module):
    """EfficientAT ``mn*`` network: mel [B, F, T] -> {"logits", "features", "sequence"}.

    ``num_classes=0`` drops the classifier (and "logits"). ``depthwise`` picks the depthwise conv
    ("auto": shifted-sum on CPU, "fused" on TPU, native grouped conv on GPU); all use the same
    [k, k, 1, C] kernels. ``dtype`` is the compute dtype; parameters stay float32. In eval, BN is folded into
    the preceding conv unless ``fold_bn=False``. Train mode needs ``mutable=["batch_stats"]`` and
    a "dropout" rng. ``__call__`` is ``feature_maps`` -> ``pool`` -> ``classify``.
    """

    width_mult: float
    num_classes: int = 527
    depthwise: str = "auto"
    dtype: Any = jnp.float32
    fold_bn: bool = True
    bn_momentum: float = BN_MOMENTUM
    dropout_rate: float = 0.2
    precision: Any = None
    remat: bool = False  # recompute each inverted-residual block in the backward (saves its input only)

    def setup(self):
        plan = channel_plan(self.width_mult)
        common = dict(depthwise=self.depthwise, fold_bn=self.fold_bn, bn_momentum=self.bn_momentum,
                      dtype=self.dtype, precision=self.precision)
        # static_argnums counts self: argument 2 is ``train``.
        block = nn.remat(InvertedResidual, static_argnums=(2,)) if self.remat else InvertedResidual
        # A list attribute names its entries features_0 ... features_16, as in the state dict.
        self.features = (
            [ConvBN("full", 1, plan.stem, 3, 2, "hardswish", **common)]
            + [block(b, **common) for b in plan.blocks]
            + [ConvBN("pointwise", plan.blocks[-1].out, plan.last_conv, activation="hardswish",
                      **common)]
        )
        if self.num_classes:
            dense = dict(kernel_init=nn.initializers.normal(0.01), precision=self.precision)
            self.classifier_2 = nn.Dense(plan.head_hidden, **dense)
            self.dropout = nn.Dropout(self.dropout_rate)  # EfficientAT's classifier.4
            self.classifier_5 = nn.Dense(self.num_classes, **dense)

    def feature_maps(self, mel, *, train: bool):
        """mel [B, F, T] -> final feature map [B, T', F', C] (after ``features_16``)."""
        # Time-major (B, T, F, C): short F*C rows keep shifted sums in cache (7-12% faster on CPU
        # than (B, F, T, C)). Kernels keep PyTorch's (frequency, time) order; ConvBN swaps them.
        x = jnp.asarray(mel, self.dtype).transpose(0, 2, 1)[..., None]
        for layer in self.features:
            x = layer(x, train)
        return x

    def pool(self, x):
        """Final feature map [B, T', F', C] -> {"features" [B, C], "sequence" [B, T', C]}."""
        sequence = x.astype(jnp.float32).mean(axis=2)
        return {"features": sequence.mean(axis=1), "sequence": sequence}  # mean over F' and T'

    def classify(self, features, *, train: bool):
        """Pooled features [B, C] -> logits [B, num_classes] (the mlp head)."""
        h = jax.nn.hard_swish(self.classifier_2(features))
        return self.classifier_5(self.dropout(h, deterministic=not train))

    def __call__(self, mel, *, train: bool):
        out = self.pool(self.feature_maps(mel, train=train))
        if self.num_classes:
            out["logits"] = self.classify(out["features"], train=train)
        return out


def random_variables(module: MobileNetV3, seed: int = 0) -> dict[str, Any]:
    """Random variables drawn with NumPy from the shapes of ``module.init``.

    He fan-in scales (not EfficientAT's fan-out, which shrinks depthwise outputs) keep activations
    away from denormals, so timings are honest. No ``init`` is compiled: XLA:CPU builds one RNG
    kernel per parameter, which takes minutes at mn40. For benchmarks and tests only.
    """
    rng = np.random.default_rng(seed)
    mel = jax.ShapeDtypeStruct((1, 128, 32), jnp.float32)
    shapes = jax.eval_shape(lambda m: module.init(jax.random.key(0), m, train=False), mel)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel" and len(shape) == 4:  # HWIO conv, fan_in = k * k * I
            return rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[1] * shape[2])), shape)
        if name == "kernel":
            return rng.normal(0.0, np.sqrt(1.0 / shape[0]), shape)
        return np.ones(shape) if name in ("scale", "var") else np.zeros(shape)

    return jax.tree_util.tree_map_with_path(lambda p, l: draw(p, l).astype(np.float32), shapes)
