"""Training-step benchmark: compiles a config's real train step and prints throughput, FLOPs, MFU.

Run: python -m hybrid_jax.benchmark --config configs/demo.py [--batch-size 8] [--steps 10]
         [--warmup 2] [--peak-tflops 989] [--json-out FILE] [--config.data.clip_seconds=10]
Compile-only (plan a TPU run on any host; needs requirements-tpu.txt):
     python -m hybrid_jax.benchmark --config configs/clotho_late.py --topology v5p:4x4x4 \
         --batch-size 4096 [--max-batch] [--json-out FILE]
  compiles the same step for that TPU slice without running it (``hybrid_jax.plan``) and prints
  per-chip memory against HBM, FLOPs, the TPU cost model's step time, collectives, compile time.
  ``--topology h100:8`` (or ``h200:2x8``: hosts x GPUs) does the same for NVIDIA GPUs through
  XLA:GPU's deviceless compilation (needs requirements-gpu-plan.txt): memory and collectives,
  no cost model.

The step is the one ``hybrid_jax.train`` runs (``steps.make_train_step`` + ``jit_train_step``, the
state from ``state.init_state``: mesh, FSDP rules, donation) on a synthetic batch of the config's
shapes (``clip_seconds`` of audio, ``text.max_length`` tokens). Converted pretrained towers are
used when present; a missing one is replaced by a randomly initialised tower of the same
architecture (``width_mult`` for the MobileNet, the standard Hugging Face BERT config named in
the checkpoint path), which the output says under "notes". Speed does not depend on the values.

Output (JSON): steady-state step time (median of ``--steps`` timed steps after ``--warmup``,
with min/max/IQR), pairs/s, compile time, FLOPs per step from XLA's cost analysis of the compiled
step, achieved TFLOP/s, MFU against ``--peak-tflops`` (per device), the compiled step's memory
analysis, backend, devices, dtype, batch size, mesh and the machine's load average. On shared
machines quote the load; measure under the same allocator settings (``malloc_tuned``) each time.
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
import statistics
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from hybrid_jax import hlo, optim, plan, schema, sharding, steps
from hybrid_jax.backend import policy as backend_policy
from hybrid_jax.data import pipeline
from hybrid_jax.models import build
from hybrid_jax.models.bert import BertConfig, BertEncoder
from hybrid_jax.state import init_state

MALLOC_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def build_model(model_config: ConfigDict, policy=None) -> tuple[build.Built, list[str]]:
    """``build.build`` with a random-init fallback for missing checkpoints -> (Built, notes)."""
    model_config = copy.deepcopy(model_config)
    notes = plan.drop_missing_audio_checkpoint(model_config)  # random-init CNN of the config's width
    text_ckpt, hf = model_config.text.checkpoint, None
    if text_ckpt != build.MINILM and not pathlib.Path(text_ckpt).expanduser().is_dir():
        hf = plan.released_bert(text_ckpt)
        with model_config.unlocked():
            model_config.text.checkpoint = build.MINILM  # the packaged one, for everything but BERT
    built = build.build(model_config, policy)
    if hf is not None:
        config = BertConfig.from_hf(hf, dropout=model_config.text.dropout)
        ids = np.zeros((1, model_config.text.max_length), np.int32)
        encoder = BertEncoder(config)
        init = jax.jit(lambda: encoder.init(jax.random.PRNGKey(1), ids, ids + 1, ids, train=False))
        text_variables = jax.device_get(init())
        built = build.Built(built.model.clone(text=config), None, built.audio_variables, text_variables)
        notes.append(f"text checkpoint {text_ckpt} missing: random-init BERT with the HF config of "
                     f"{pathlib.Path(text_ckpt).name} (hidden {config.hidden_size}, "
                     f"{config.num_hidden_layers} layers)")
    return built, notes


def synthetic_batch(config: ConfigDict, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A global training batch with the loader's keys, shapes and dtypes (``TrainLoader.batch``)."""
    rng = np.random.default_rng(seed)
    size, length = config.train.batch_size, config.model.text.max_length
    batch = schema.zeros(schema.TRAIN_FIELDS, size, schema.num_samples(config.data.clip_seconds), length)
    batch["audio"][:] = (rng.standard_normal(batch["audio"].shape) * 3000).astype(np.int16)
    batch["audio_valid"][:] = 1.0
    for side in ("query", "meta"):  # full-length random sentences after [CLS]
        batch[f"{side}_ids"][:] = rng.integers(1000, vocab_size, (size, length))
        batch[f"{side}_ids"][:, 0] = 101
        batch[f"{side}_mask"][:] = 1
    batch["meta_present"][:] = True
    batch["item_id"][:] = np.arange(size)
    return batch


def step_options(config: ConfigDict, mesh) -> dict:
    """``make_train_step`` keywords the config sets (GradCache micro-batches, loss implementation)."""
    return steps.config_options(config.train, mesh)


def benchmark(config: ConfigDict, *, batch_size: int | None = None, num_steps: int = 10,
              warmup: int = 2, peak_tflops: float | None = None, seed: int = 0,
              steps_per_epoch: int | None = None) -> dict:
    """Compiles and times the training step of ``config``; returns the JSON-able report.

    ``steps_per_epoch`` only shapes the learning-rate schedule (speed does not depend on it); pass
    a training run's value to compile exactly its program (a compilation-cache hit)."""
    config = copy.deepcopy(config)
    with config.unlocked():
        if batch_size:
            config.train.batch_size = batch_size
    size = config.train.batch_size
    load_before = os.getloadavg()
    mesh = sharding.make_mesh(config.mesh.shape)
    policy = backend_policy.of_mesh(mesh)
    built, notes = build_model(config.model, policy)
    model = built.model
    batch = synthetic_batch(config, model.text.vocab_size, seed)
    rows = size // jax.process_count()  # this process's rows of the global batch
    local = {k: v[jax.process_index() * rows:(jax.process_index() + 1) * rows] for k, v in batch.items()}
    tx, schedule = optim.make_optimizer(config.optim, steps_per_epoch=steps_per_epoch or 1000)
    state, state_shardings = init_state(built, tx, local, config, mesh)
    train_step = steps.make_train_step(model, tx, schedule, **step_options(config, mesh))
    jitted = steps.jit_train_step(train_step, state_shardings, mesh)
    global_batch = pipeline.to_global(local, mesh, sharding.batch_sharding(mesh).spec)

    start = time.perf_counter()
    lowered = jitted.lower(state, global_batch)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s

    times = []
    for i in range(warmup + num_steps):
        start = time.perf_counter()
        state, metrics = compiled(state, global_batch)
        loss = float(metrics["train/loss"])  # waits for the step, as train.py does every step
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if not np.isfinite(loss):
        notes.append(f"non-finite loss {loss} on the synthetic batch")

    cost = hlo.cost(compiled)
    flops_device = float(cost.get("flops", 0.0))
    median = statistics.median(times)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (median, median, median)
    devices = jax.devices()
    # The compiled SPMD program is one device's share; the step's work is that times the devices
    # (an upper bound where replicated computations are repeated on every device).
    flops_step = flops_device * len(devices)
    achieved = flops_step / median / 1e12
    # The model's own FLOPs (hybrid_jax.flops): no recomputation, no implementation overhead, and
    # independent of what the backend's cost analysis sees (e.g. inside library custom calls).
    analytic = plan.analytic_flops(config, model).training
    model_tflops = analytic * size / median / 1e12
    whole_step = plan.sub_batches(config) == 1
    if not whole_step:
        notes.append(plan.LOOP_CAVEAT.format(n=plan.sub_batches(config)))
    report = {
        "config": None,  # main() fills in the file name
        "backend": policy.platform,
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "num_processes": jax.process_count(),
        "mesh": dict(mesh.shape),
        "dtype": np.dtype(model.dtype).name,
        "depthwise": model.audio.depthwise,
        "batch_size": size,
        "clip_seconds": config.data.clip_seconds,
        "text_max_length": config.model.text.max_length,
        "text_trainable": model.text_trainable,
        "audio_width_mult": model.audio.width_mult,
        "text_hidden_size": model.text.hidden_size,
        "text_layers": model.text.num_hidden_layers,
        "fusion": model.fusion,
        "step_options": {k: v for k, v in step_options(config, mesh).items() if k != "mesh"},
        "num_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
        "lower_s": round(lower_s, 2),
        "compile_s": round(compile_s, 2),
        "warmup_steps": warmup,
        "timed_steps": len(times),
        "step_time_s": {"median": median, "min": min(times), "max": max(times), "q1": q1, "q3": q3,
                        "spread_pct": 100.0 * (q3 - q1) / median},
        "pairs_per_s": size / median,
        "flops_per_step": flops_step,
        "flops_per_device_step": flops_device,
        "bytes_accessed_per_device_step": float(cost.get("bytes accessed", 0.0)),
        "achieved_tflops": achieved,
        "peak_tflops_per_device": peak_tflops,
        "mfu": achieved / (peak_tflops * len(devices)) if peak_tflops and whole_step else None,
        "analytic_flops_per_pair": analytic,
        "model_tflops": model_tflops,
        "mfu_analytic": model_tflops / (peak_tflops * len(devices)) if peak_tflops else None,
        "memory_per_device": hlo.memory(compiled),
        "final_loss": loss,
        "malloc_tuned": all(k in os.environ for k in MALLOC_SETTINGS),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "notes": notes,
    }
    return report


def main(argv):
    del argv
    from absl import flags
    from ml_collections import config_flags

    from hybrid_jax import cli

    f = flags.FLAGS
    cli.quiet_terminal()
    if f.topology:
        return compile_only(f, config_flags.get_config_filename(f["config"]))
    cli.initialize_distributed()
    report = benchmark(f.config, batch_size=f["batch-size"].value, num_steps=f.steps,
                       warmup=f.warmup, peak_tflops=f["peak-tflops"].value)
    report["config"] = config_flags.get_config_filename(f["config"])
    text = json.dumps(report, indent=2)
    if jax.process_index() == 0:
        print(text)
        if f["json-out"].value:
            pathlib.Path(f["json-out"].value).write_text(text + "\n")


def compile_only(f, config_name: str) -> None:
    """``--topology``: compile the step for a TPU slice or GPU hosts on this host and print its plan."""
    jax.config.update("jax_platforms", "cpu")  # this host's own devices are not the target
    devices, chip = plan.target(f.topology)
    print(f"compiling {config_name} for {f.topology} ({len(devices)} x {devices[0].device_kind}) "
          f"on this host's CPU ...", flush=True)
    if f["max-batch"].value:
        found = plan.max_batch(f.config, devices, chip, f.topology,
                               start_per_chip=f["start-per-chip"].value,
                               max_compiles=f["max-compiles"].value)
        result = found["largest"] or {"fits": False, "topology": f.topology, "chips": len(devices),
                                      "batch_size": None}
        result = {**result, "max_batch_search": {"tried": found["tried"],
                                                 "granularity": found["granularity"],
                                                 "refused": found["refused"]}}
    else:
        size = f["batch-size"].value or f.config.train.batch_size
        result = plan.try_batch(f.config, devices, chip, f.topology, size, hlo_out=f["hlo-out"].value)
    result["config"] = config_name
    text = json.dumps(result, indent=2)
    print(text)
    if result.get("batch_size"):
        print(plan.table(result))
    if f["json-out"].value:
        pathlib.Path(f["json-out"].value).write_text(text + "\n")


if __name__ == "__main__":
    from absl import app, flags

    from hybrid_jax import cli

    cli.define_config_flag()
    flags.DEFINE_integer("batch-size", None, "Global batch (default: config.train.batch_size).")
    flags.DEFINE_integer("steps", 10, "Timed steps (after the warm-up).")
    flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
    flags.DEFINE_float("peak-tflops", None, "Peak TFLOP/s of one device, for MFU (e.g. H100 bf16 dense: 989).")
    flags.DEFINE_string("json-out", None, "Also write the report to this file.")
    flags.DEFINE_string("topology", None, "Compile only, for this TPU slice (v4:2x2x1, v5e:4x4, "
                        "v5p:4x4x4, v6e:16x16, ...: needs requirements-tpu.txt, no TPU) or these "
                        "GPUs (h100:8, h200:2x8 = hosts x GPUs: needs requirements-gpu-plan.txt, no GPU).")
    flags.DEFINE_bool("max-batch", False, "With --topology: search the largest global batch that fits.")
    flags.DEFINE_integer("start-per-chip", plan.START_PER_CHIP,
                         "With --max-batch: first batch tried, pairs per chip.")
    flags.DEFINE_integer("max-compiles", 8, "With --max-batch: at most this many compilations.")
    flags.DEFINE_string("hlo-out", None, "With --topology: write the compiled HLO text here "
                        "(tools/hlo_breakdown.py reads it).")
    cli.define_multihost_flags()
    flags.mark_flag_as_required("config")
    app.run(main)
