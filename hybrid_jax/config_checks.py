"""Checks a config before any work starts: contradictory or unknown settings fail at once, in one
message that names every offending key, instead of silently training something else."""
from __future__ import annotations

import math

from ml_collections import ConfigDict

from hybrid_jax.gradcache import ACCUMULATIONS
from hybrid_jax.losses import LOSS_IMPLS, LOSSES
from hybrid_jax.models.fusion import FUSION_MODES
from hybrid_jax.models.retrieval import TOKEN_MODES

# The prepared datasets (hybrid_jax.data.prepare.preparation.BUILDERS; not imported here because
# it loads TFDS: tests/test_config_checks.py keeps the two equal).
DATASETS = ("clotho", "audiocaps", "wavcaps_freesound")
METADATA = ("keywords", "tags", "labels", "caption", "none")  # "tags": each dataset's own
DTYPES = ("auto", "float32", "bfloat16")
DEPTHWISE = ("auto", "shifted", "native", "fused")


class ConfigError(ValueError):
    """The config contradicts itself or names something unknown; the message lists every problem."""


def _choice(problems: list[str], key: str, value, allowed) -> None:
    if value not in allowed:
        problems.append(f"{key} = {value!r} is not one of {list(allowed)}")


def _mesh_problems(config: ConfigDict, num_devices: int | None, process_count: int) -> list[str]:
    problems = []
    sizes = [int(size) for _, size in config.mesh.shape]
    names = [name for name, _ in config.mesh.shape]
    if sizes.count(-1) > 1:
        return [f"mesh.shape = {tuple(config.mesh.shape)}: at most one axis may be -1"]
    if num_devices is None:
        return problems
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if known <= 0 or num_devices % known:
            return [f"mesh.shape = {tuple(config.mesh.shape)} does not divide the {num_devices} devices"]
        sizes[sizes.index(-1)] = num_devices // known
    elif known != num_devices:
        return [f"mesh.shape = {tuple(config.mesh.shape)} needs {known} devices, there are {num_devices}"]
    batch_devices = math.prod(s for n, s in zip(names, sizes) if n in ("data", "fsdp"))
    for key, value in (("train.batch_size", config.train.batch_size), ("eval.batch_size", config.eval.batch_size)):
        if value % batch_devices:
            problems.append(f"{key} = {value} is not a multiple of the {batch_devices} devices the batch is "
                            f"split over (mesh.shape = {tuple(config.mesh.shape)} on {num_devices} devices)")
        if value % process_count:
            problems.append(f"{key} = {value} is not a multiple of the {process_count} processes")
    micro = config.train.get("microbatch_size", 0)
    if micro and micro < config.train.batch_size:
        if config.train.batch_size % micro:
            problems.append(f"train.microbatch_size = {micro} does not divide train.batch_size = "
                            f"{config.train.batch_size}")
        if micro % batch_devices:
            problems.append(f"train.microbatch_size = {micro} is not a multiple of the {batch_devices} "
                            f"devices the batch is split over")
    return problems


def check(config: ConfigDict, *, num_devices: int | None = None, process_count: int = 1) -> None:
    """Raises ``ConfigError`` listing every problem of ``config``; the device-dependent checks
    (mesh, batch divisibility) run when ``num_devices`` is given."""
    problems: list[str] = []
    m, d, t = config.model, config.data, config.train
    mode = m.fusion.mode
    _choice(problems, "model.fusion.mode", mode, FUSION_MODES)
    _choice(problems, "model.dtype", m.dtype, DTYPES)
    _choice(problems, "model.audio.depthwise", m.audio.depthwise, DEPTHWISE)
    _choice(problems, "model.audio.tokens", m.audio.get("tokens", "frame"), TOKEN_MODES)
    _choice(problems, "model.loss", m.loss, LOSSES)
    _choice(problems, "train.loss_impl", t.loss_impl, LOSS_IMPLS)
    _choice(problems, "train.accumulation", t.accumulation, ACCUMULATIONS)
    _choice(problems, "data.metadata", d.metadata, METADATA)
    _choice(problems, "data.name", d.name, DATASETS)
    for i, name in enumerate(d.extra_train):
        _choice(problems, f"data.extra_train[{i}]", name, DATASETS)
    if d.eval_name:
        _choice(problems, "data.eval_name", d.eval_name, DATASETS)
    if mode in ("late", "mid", "metadata_only") and d.metadata == "none":
        problems.append(f"model.fusion.mode = {mode!r} fuses metadata, but data.metadata = 'none' "
                        "gives every item none (use model.fusion.mode = 'none' for a content-only model)")
    if d.metadata == "labels" and "audiocaps" not in (d.name, *d.extra_train):
        problems.append(f"data.metadata = 'labels' (AudioSet labels) needs AudioCaps, but data.name = {d.name!r}")
    if t.loss_impl == "ring" and mode == "mid":
        problems.append("train.loss_impl = 'ring' needs one embedding per side, but model.fusion.mode = 'mid' "
                        "mixes two experts per query (use train.loss_impl = 'plain')")
    if not 0.0 <= d.metadata_dropout <= 1.0:
        problems.append(f"data.metadata_dropout = {d.metadata_dropout} is not a probability")
    if mode == "mid" and m.pooling.num_layers < 1:
        problems.append("model.fusion.mode = 'mid' adds a metadata token to the pooling transformer, but "
                        f"model.pooling.num_layers = {m.pooling.num_layers} (use at least 1)")
    if m.pooling.dim % m.pooling.num_heads:
        problems.append(f"model.pooling.dim = {m.pooling.dim} is not divisible by model.pooling.num_heads = "
                        f"{m.pooling.num_heads}")
    if d.clip_seconds <= 0 or m.audio.window_seconds <= 0:
        problems.append(f"data.clip_seconds = {d.clip_seconds} and model.audio.window_seconds = "
                        f"{m.audio.window_seconds} must be positive")
    if t.batch_size <= 0 or config.eval.batch_size <= 0:
        problems.append("train.batch_size and eval.batch_size must be positive")
    else:
        problems += _mesh_problems(config, num_devices, process_count)
    if problems:
        raise ConfigError(f"the config has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
