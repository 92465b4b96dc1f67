"""Plans a run on accelerators this host does not have: the real train step compiled ahead of time.

``compile_step`` builds the training state abstractly (``jax.eval_shape``: no parameter is
allocated, no checkpoint is read; a missing tower is its architecture) and compiles the step
``hybrid_jax.train`` runs (the config's mesh, FSDP rules, GradCache, ring loss, remat, donation)
for a list of target devices, e.g. a TPU slice's or GPU hosts' compile-only devices
(``backend.chips``). Every backend choice comes from those devices (``backend.policy``), so a TPU
compile on a CPU host is the TPU program. ``report`` reads what the compiler says about it:
per-chip memory against the chip's HBM, FLOPs, the cost model's time estimate, collectives.
``max_batch`` searches the largest global batch that fits. ``python -m hybrid_jax.benchmark --topology ...`` is the command.
"""
from __future__ import annotations

import copy
import dataclasses
import pathlib
import re
import time
from typing import Any

import jax
from ml_collections import ConfigDict

from hybrid_jax import flops, hlo, optim, schema, sharding, steps
from hybrid_jax.backend import chips
from hybrid_jax.backend import policy as backend_policy
from hybrid_jax.models import build
from hybrid_jax.models.bert import BertConfig
from hybrid_jax.state import abstract_state

# Architectures of the released BERTs (their config.json), for towers that are not converted here.
_BERT_COMMON = dict(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
                    layer_norm_eps=1e-12, hidden_act="gelu", model_type="bert")
HF_BERT_CONFIGS = {
    "bert-base-uncased": dict(_BERT_COMMON, hidden_size=768, num_hidden_layers=12,
                              num_attention_heads=12, intermediate_size=3072),
    "bert-large-uncased": dict(_BERT_COMMON, hidden_size=1024, num_hidden_layers=24,
                               num_attention_heads=16, intermediate_size=4096),
}
_HBM_OOM = re.compile(r"exceeds available HBM \(([\d.]+)G\)|Ran out of memory|RESOURCE_EXHAUSTED")

START_PER_CHIP = 8  # first batch per chip of a max-batch search (the commands' default)


def released_bert(checkpoint: str) -> dict:
    """The HF config of a released BERT named by a (missing) checkpoint path, e.g.
    "pretrained/bert-base-uncased"; names the known ones otherwise."""
    name = pathlib.Path(checkpoint).name
    for key, hf in HF_BERT_CONFIGS.items():
        if name.startswith(key.rsplit("-", 1)[0]):  # "bert-base-uncased", "bert-base", ...
            return hf
    raise FileNotFoundError(
        f"text checkpoint {checkpoint} is missing and its architecture is unknown "
        f"(known: {sorted(HF_BERT_CONFIGS)}); convert it first or use one of those names")


def drop_missing_audio_checkpoint(model_config: ConfigDict) -> list[str]:
    """Clears ``audio.checkpoint`` (in place) when its directory does not exist, so the CNN is built
    from ``audio.width_mult`` -> the note saying so (none when the checkpoint is there)."""
    audio_ckpt = model_config.audio.checkpoint
    if not audio_ckpt or pathlib.Path(audio_ckpt).expanduser().is_dir():
        return []
    with model_config.unlocked():
        model_config.audio.checkpoint = None
    return [f"audio checkpoint {audio_ckpt} missing: MobileNetV3 width "
            f"{model_config.audio.width_mult} (config.model.audio.width_mult)"]


def model_for(model_config: ConfigDict, policy: backend_policy.Policy, text_config=None):
    """``build.architecture`` where a missing tower becomes its architecture -> (model, notes)."""
    model_config = copy.deepcopy(model_config)
    notes = drop_missing_audio_checkpoint(model_config)
    text_ckpt = model_config.text.checkpoint
    if text_config is None and text_ckpt != build.MINILM and not pathlib.Path(text_ckpt).expanduser().is_dir():
        text_config = BertConfig.from_hf(released_bert(text_ckpt), dropout=model_config.text.dropout)
        notes.append(f"text checkpoint {text_ckpt} missing: BERT with the HF config of "
                     f"{pathlib.Path(text_ckpt).name}")
    return build.architecture(model_config, policy, text_config), notes


def abstract_batch(config: ConfigDict, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The global training batch as ShapeDtypeStructs, split over the mesh's batch axes."""
    shapes = schema.shapes(schema.TRAIN_FIELDS, config.train.batch_size,
                           schema.num_samples(config.data.clip_seconds), config.model.text.max_length)
    placed = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=placed) for k, v in shapes.items()}


@dataclasses.dataclass
class CompiledStep:
    """A train step compiled for target devices, with what it was compiled from."""

    compiled: Any  # jax.stages.Compiled
    config: ConfigDict
    mesh: jax.sharding.Mesh
    model: Any  # RetrievalModel
    state: Any  # abstract TrainState (ShapeDtypeStructs with shardings)
    lower_s: float
    compile_s: float
    notes: list


def compile_step(config: ConfigDict, devices, *, batch_size: int | None = None,
                 text_config: BertConfig | None = None) -> CompiledStep:
    """Compiles ``config``'s train step for ``devices`` without allocating anything.

    Raises ``jax.errors.JaxRuntimeError`` (RESOURCE_EXHAUSTED) when the TPU compiler finds that
    the step does not fit in HBM (see ``fits``)."""
    config = copy.deepcopy(config)
    if batch_size:
        with config.unlocked():
            config.train.batch_size = batch_size
    mesh = sharding.make_mesh(config.mesh.shape, devices)
    policy = backend_policy.of_mesh(mesh)
    model, notes = model_for(config.model, policy, text_config)
    tx, schedule = optim.make_optimizer(config.optim, steps_per_epoch=1000)
    batch = abstract_batch(config, mesh)
    state, state_shardings = abstract_state(model, tx, batch, config, mesh)
    train_step = steps.make_train_step(model, tx, schedule, **steps.config_options(config.train, mesh))
    jitted = steps.jit_train_step(train_step, state_shardings, mesh)
    start = time.perf_counter()
    lowered = jitted.lower(state, batch)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    return CompiledStep(compiled, config, mesh, model, state, lower_s,
                        time.perf_counter() - start - lower_s, notes)


def analytic_flops(config: ConfigDict, model) -> flops.PairFlops:
    """The model's own FLOPs per training pair (``hybrid_jax.flops``) at the config's clip length,
    text length and global batch."""
    return flops.pair_flops(model, schema.num_samples(config.data.clip_seconds),
                            config.model.text.max_length, config.train.batch_size)


def sub_batches(config: ConfigDict) -> int:
    """How many GradCache sub-batches the step loops over (1: one pass over the batch)."""
    micro = config.train.get("microbatch_size", 0) or 0
    return config.train.batch_size // micro if 0 < micro < config.train.batch_size else 1


# XLA's cost analysis counts a while loop's body once, whatever its trip count.
LOOP_CAVEAT = ("the step loops over {n} GradCache sub-batches and XLA's cost analysis counts a loop "
               "body once: its FLOPs, bytes and time cover about one sub-batch, not the step, so no "
               "MFU is derived from them")


def out_of_memory(error: Exception) -> str | None:
    """The compiler's out-of-HBM message, or None if ``error`` is something else."""
    text = str(error)
    return text.splitlines()[0][:400] if _HBM_OOM.search(text) else None


def report(step: CompiledStep, chip: chips.Chip | None, topology: str | None = None,
           hlo_out: str | None = None) -> dict:
    """What the compiler says about the step, per chip, as a JSON-able dict. ``hlo_out``: also
    write the optimised HLO text there (for ``tools/hlo_breakdown.py``)."""
    compiled, config, mesh = step.compiled, step.config, step.mesh
    devices = list(mesh.devices.flat)
    size = config.train.batch_size
    memory = hlo.memory(compiled)
    cost = hlo.cost(compiled)
    text = compiled.as_text()
    if hlo_out:
        pathlib.Path(hlo_out).write_text(text)
    # XLA:GPU's deviceless compile reports no cost analysis: then no FLOPs rather than zero.
    compiled_flops = float(cost["flops"]) if cost.get("flops") else None
    analytic = analytic_flops(config, step.model)
    loops = sub_batches(config)
    seconds = float(cost.get("optimal_seconds", 0.0) or 0.0)
    out = {
        "config": None,
        "topology": topology,
        "chips": len(devices),
        "chip": chip.name if chip else None,
        "device_kind": devices[0].device_kind,
        "platform": backend_policy.platform_of(devices),
        "mesh": dict(mesh.shape),
        "batch_size": size,
        "batch_per_chip": size / len(devices),
        "dtype": jax.numpy.dtype(step.model.dtype).name,
        "kernels": step.model.audio.depthwise,
        "remat": {"audio": step.model.audio.remat, "text": step.model.text_remat},
        "step_options": {k: v for k, v in steps.config_options(config.train, mesh).items() if k != "mesh"},
        "clip_seconds": config.data.clip_seconds,
        "num_params": sum(int(x.size) for x in jax.tree.leaves(step.state.params)),
        "memory_per_chip": memory,
        "flops_per_chip_step": compiled_flops,
        "flops_per_pair": compiled_flops * len(devices) / size if compiled_flops else None,
        "analytic_flops_per_pair": analytic.training,
        "analytic_flops": analytic.as_dict(),
        "bytes_accessed_per_chip_step": float(cost.get("bytes accessed", 0.0)),
        "collectives": hlo.collectives(text),
        "while_loops": hlo.while_loops(text),
        "lower_s": round(step.lower_s, 2),
        "compile_s": round(step.compile_s, 2),
        "sub_batches": loops,
        "notes": step.notes + ([LOOP_CAVEAT.format(n=loops)] if loops > 1 else []),
    }
    if chip:
        peak = memory["peak_bytes_estimate"]
        out.update(hbm_bytes_per_chip=chip.hbm_bytes, fits=peak <= chip.hbm_bytes,
                   hbm_margin_bytes=chip.hbm_bytes - peak,
                   hbm_used_fraction=peak / chip.hbm_bytes,
                   peak_bf16_tflops_per_chip=chip.peak_bf16_tflops)
    if seconds > 0 and loops == 1 and compiled_flops:  # XLA's TPU cost model; absent on others
        out["estimated_step_s"] = seconds
        out["estimated_pairs_per_s"] = size / seconds
        if chip:  # of the compiled program's FLOPs (recomputation included), and of the model's
            peak = chip.peak_bf16_tflops * 1e12
            out["estimated_mfu"] = compiled_flops / seconds / peak
            out["estimated_mfu_analytic"] = analytic.training * size / len(devices) / seconds / peak
    return out


def did_not_fit(devices, chip, topology: str, batch_size: int, message: str) -> dict:
    """The report of a batch the compiler refused for lack of HBM."""
    return {"config": None, "topology": topology, "chips": len(devices),
            "chip": chip.name if chip else None, "batch_size": batch_size,
            "batch_per_chip": batch_size / len(devices), "fits": False,
            "hbm_bytes_per_chip": chip.hbm_bytes if chip else None, "compiler_message": message}


def try_batch(config: ConfigDict, devices, chip, topology: str, batch_size: int,
              text_config: BertConfig | None = None, hlo_out: str | None = None) -> dict:
    """``report`` of one global batch, or ``did_not_fit`` if the compiler ran out of HBM."""
    try:
        step = compile_step(config, devices, batch_size=batch_size, text_config=text_config)
    except jax.errors.JaxRuntimeError as error:
        message = out_of_memory(error)
        if message is None:
            raise
        return did_not_fit(devices, chip, topology, batch_size, message)
    return report(step, chip, topology, hlo_out)


def batch_granularity(config: ConfigDict, devices) -> int:
    """Global batches must split over the batch devices (and into GradCache sub-batches)."""
    mesh = sharding.make_mesh(config.mesh.shape, devices)
    split = 1
    for axis in sharding.BATCH_AXES:
        split *= mesh.shape.get(axis, 1)
    micro = config.train.get("microbatch_size", 0) or 0
    if micro:
        split = max(split, micro)  # B = k * microbatch_size; microbatch_size splits over devices
    return split


def max_batch(config: ConfigDict, devices, chip, topology: str, *,
              start_per_chip: int = START_PER_CHIP,
              max_compiles: int = 8, text_config: BertConfig | None = None, log=print) -> dict:
    """The largest global batch whose step fits, in at most ``max_compiles`` compilations.

    Doubles the batch from ``start_per_chip`` pairs per chip until a step does not fit, then
    bisects, taking the batch where the linear fit of peak memory against batch meets the HBM
    as the next guess when it lies inside the bracket. Returns {"largest": report of the largest
    fitting batch (None if none), "tried": [(batch, fits, peak bytes or None), ...], "refused":
    {batch: the compiler's out-of-HBM message}} (the message says by how much it overflowed,
    which a search where nothing fits would otherwise lose)."""
    unit = batch_granularity(config, devices)
    fits, fails, tried, best, refused = None, None, [], None, {}

    def attempt(batch):
        nonlocal fits, fails, best
        result = try_batch(config, devices, chip, topology, batch, text_config)
        peak = result.get("memory_per_chip", {}).get("peak_bytes_estimate")
        tried.append((batch, bool(result["fits"]), peak))
        log(f"  batch {batch} ({batch / len(devices):g}/chip): "
            f"{'fits' if result['fits'] else 'does not fit'}"
            + (f", peak {peak / chips.GIB:.2f} GiB" if peak else ""))
        if result["fits"]:
            fits, best = batch, result
        else:
            fails = batch
            # XLA:TPU refuses the program itself; XLA:GPU compiles it, and the peak says why not.
            refused[batch] = result.get("compiler_message") or (
                f"peak {peak / chips.GIB:.2f} GiB exceeds the {chip.hbm_bytes / chips.GIB:.2f} GiB "
                "per chip a JAX process may allocate")

    batch = max(unit, -(-start_per_chip * len(devices) // unit) * unit)
    while len(tried) < max_compiles and fails is None:
        attempt(batch)
        batch *= 2
    while len(tried) < max_compiles and fails is not None and fits is not None and fails - fits > unit:
        guess = _linear_guess(tried, chip.hbm_bytes, unit) if chip else None
        middle = (fits + fails) // 2 // unit * unit
        batch = guess if guess and fits < guess < fails else middle
        if batch <= fits:
            break
        attempt(batch)
    while fails is not None and fits is None and len(tried) < max_compiles and fails > unit:
        attempt(max(unit, fails // 2 // unit * unit))  # even the first guess was too large
    return {"largest": best, "tried": tried, "granularity": unit, "refused": refused}


def _linear_guess(tried, hbm: int, unit: int) -> int | None:
    points = [(b, p) for b, ok, p in tried if ok and p]
    if len(points) < 2:
        return None
    (b0, p0), (b1, p1) = sorted(points)[-2:]
    if p1 <= p0:
        return None
    slope = (p1 - p0) / (b1 - b0)
    return int((b1 + (hbm - p1) / slope) // unit * unit)


def table(result: dict) -> str:
    """A short human-readable summary of one ``report``."""
    gib = lambda b: f"{b / chips.GIB:.2f} GiB"  # noqa: E731
    rows = [("config", result.get("config")), ("target", f"{result.get('topology')}: "
            f"{result['chips']} x {result.get('device_kind', result.get('chip'))}"),
            ("mesh", result.get("mesh")),
            ("batch", f"{result['batch_size']} ({result['batch_per_chip']:g} per chip)")]
    if "memory_per_chip" not in result:
        rows.append(("fits", f"NO: {result.get('compiler_message')}"))
        return "\n".join(f"{k:<22} {v}" for k, v in rows)
    m = result["memory_per_chip"]
    rows += [("dtype / kernels", f"{result['dtype']} / {result['kernels']}"),
             ("memory per chip", f"args {gib(m['argument_size_in_bytes'])}, temp "
              f"{gib(m['temp_size_in_bytes'])}, out {gib(m['output_size_in_bytes'])} "
              f"(aliased {gib(m['alias_size_in_bytes'])}), peak {gib(m['peak_bytes_estimate'])}")]
    if "hbm_bytes_per_chip" in result:
        rows.append(("fits in HBM", f"{'yes' if result['fits'] else 'NO'}: "
                     f"{100 * result['hbm_used_fraction']:.1f} % of {gib(result['hbm_bytes_per_chip'])}, "
                     f"margin {gib(result['hbm_margin_bytes'])}"))
    model = f"the model's own: {result['analytic_flops_per_pair'] / 1e9:.1f} GFLOP per pair"
    rows.append(("FLOPs", f"{result['flops_per_chip_step'] / 1e12:.3f} TFLOP per chip per step, "
                 f"{result['flops_per_pair'] / 1e9:.1f} GFLOP per pair ({model.removesuffix(' per pair')})"
                 if result["flops_per_chip_step"] else f"no cost analysis for this target ({model})"))
    if result.get("sub_batches", 1) > 1:
        rows.append(("FLOPs caveat", (f"a GradCache loop of {result['sub_batches']} sub-batches, "
                                      "counted once by the cost analysis")))
    if "estimated_step_s" in result:
        mfu = result.get("estimated_mfu")
        rows.append(("cost model", f"{1e3 * result['estimated_step_s']:.1f} ms per step, "
                     f"{result['estimated_pairs_per_s']:.0f} pairs/s"
                     + (f", MFU {100 * mfu:.1f} % (of the model's FLOPs: "
                        f"{100 * result['estimated_mfu_analytic']:.1f} %)" if mfu is not None else "")))
    for c in result["collectives"]:
        rows.append((f"  {c['kind']}", f"{c['count']} ops, {c['bytes'] / 2**20:.1f} MiB"))
    rows.append(("compile", f"{result['compile_s']:.1f} s (lowering {result['lower_s']:.1f} s)"))
    return "\n".join(f"{k:<22} {v}" for k, v in rows)


def target(topology: str) -> tuple[list, chips.Chip]:
    """Compile-only devices and the chip of a topology name (see ``backend.chips``)."""
    return chips.topology_devices(topology), chips.planning_chip(topology)

