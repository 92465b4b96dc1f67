"""Batch-size scaling sweep: train + evaluate + benchmark one config at several global batch sizes.

Run: python tools/scaling_sweep.py --config configs/clotho_late.py --batch-sizes 32,64,128,256
         [--max-steps 2000 | --num-epochs 25] [--microbatch-size 64] [--bench-steps 5]
         [--out workdirs/sweep] [--config.x=y ...]
Quick CPU check: python tools/scaling_sweep.py --config configs/demo.py --batch-sizes 8,16,32
         --max-steps 3 --bench-steps 3 --out workdirs/sweep_demo

For each batch size B it runs ``train_and_evaluate`` in ``OUT/bs{B}`` (resumable: a finished
size is re-read, not retrained) and ``hybrid_jax.benchmark.benchmark`` on the same step, then
writes ``OUT/scaling.csv``, ``OUT/scaling.md`` and ``OUT/scaling.png`` (test mAP@10 and R@k,
pairs/s and compiled peak memory per device against B). Budget: ``--max-steps`` trains the same
number of steps at every size (more data for larger B), ``--num-epochs`` the same number of epochs.
The learning rate is not rescaled. ``--microbatch-size`` sets ``config.train.microbatch_size``
(GradCache) for the sizes above it, where the config has that key. XLA's persistent compilation
cache (``OUT/xla_cache``) lets the benchmark reuse the training run's compiled step.
"""
from __future__ import annotations

import copy
import csv
import json
import pathlib

import jax
from absl import app, flags, logging

from hybrid_jax import benchmark, cli, train

METRICS = ("mAP@10", "R@1", "R@5", "R@10")
FLAGS = flags.FLAGS


def define_flags() -> None:
    cli.define_config_flag()
    flags.DEFINE_list("batch-sizes", ["8", "16", "32"], "Global batch sizes to sweep.")
    flags.DEFINE_integer("max-steps", 0, "Training steps per size (0: the config's epochs).")
    flags.DEFINE_integer("num-epochs", None, "Override config.train.num_epochs (same epochs per size).")
    flags.DEFINE_integer("microbatch-size", 0, "GradCache sub-batch for sizes above it (0: off).")
    flags.DEFINE_integer("bench-steps", 5, "Timed benchmark steps per size (0: no benchmark).")
    flags.DEFINE_integer("bench-warmup", 1, "Untimed benchmark steps after compilation.")
    flags.DEFINE_string("out", "workdirs/scaling_sweep", "Output directory.")
    cli.define_multihost_flags()


def sized_config(config, batch_size: int, max_steps: int, num_epochs, microbatch_size: int):
    config = copy.deepcopy(config)
    with config.unlocked():
        config.train.batch_size = batch_size
        if max_steps:
            config.train.max_steps = max_steps
        if num_epochs is not None:
            config.train.num_epochs = num_epochs
        if microbatch_size and batch_size > microbatch_size:
            if "microbatch_size" not in config.train:
                raise ValueError("--microbatch-size needs config.train.microbatch_size (GradCache)")
            config.train.microbatch_size = microbatch_size
    return config


def steps_per_epoch(workdir: pathlib.Path) -> int | None:
    """From the run's training log (epoch = step / steps_per_epoch), so that the benchmark compiles
    the very program training did (same schedule constants: a compilation-cache hit)."""
    log = workdir / "metrics.jsonl"
    if not log.is_file():
        return None
    for line in reversed(log.read_text().splitlines()):
        row = json.loads(line)
        if row.get("epoch"):
            return max(1, round(row["step"] / row["epoch"]))
    return None


def run_size(config, batch_size: int, out: pathlib.Path) -> dict:
    workdir = out / f"bs{batch_size}"
    result_file = workdir / "sweep_result.json"
    if result_file.is_file():
        logging.info("batch %d: already done (%s)", batch_size, result_file)
        return json.loads(result_file.read_text())
    test = train.train_and_evaluate(config, workdir)
    row = {"batch_size": batch_size, "steps": config.train.max_steps or None}
    row.update({f"test_{k}": test.get(k) for k in METRICS})
    if FLAGS["bench-steps"].value:
        report = benchmark.benchmark(config, num_steps=FLAGS["bench-steps"].value,
                                     warmup=FLAGS["bench-warmup"].value,
                                     steps_per_epoch=steps_per_epoch(workdir))
        (workdir / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
        memory = report["memory_per_device"]
        row.update({
            "pairs_per_s": report["pairs_per_s"],
            "step_time_s": report["step_time_s"]["median"],
            "step_spread_pct": report["step_time_s"]["spread_pct"],
            "pairs_per_s_q1": batch_size / report["step_time_s"]["q3"],  # interquartile range
            "pairs_per_s_q3": batch_size / report["step_time_s"]["q1"],
            "compile_s": report["compile_s"],
            "tflops": report["achieved_tflops"],
            "peak_memory_mb": memory.get("peak_bytes_estimate", 0) / 2**20,
            "devices": report["num_devices"],
            "load_average": report["load_average_after"][0],
        })
    result_file.write_text(json.dumps(row, indent=2) + "\n")
    return row


def write_tables(rows: list[dict], out: pathlib.Path) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "scaling.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(cell(row.get(k)) for k in keys) + " |" for row in rows]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], out: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on training machines
    import matplotlib.pyplot as plt

    sizes = [row["batch_size"] for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for key in METRICS:
        axes[0].plot(sizes, [100 * (row.get(f"test_{key}") or 0) for row in rows], "o-", label=key)
    axes[0].set(title="test retrieval", ylabel="%")
    axes[0].legend(loc="lower right", ncols=2, fontsize="small")
    axes[0].set_ylim(bottom=0)
    if "pairs_per_s" in rows[0]:
        rate = [row["pairs_per_s"] for row in rows]
        spread = [[r - row.get("pairs_per_s_q1", r) for r, row in zip(rate, rows)],
                  [row.get("pairs_per_s_q3", r) - r for r, row in zip(rate, rows)]]
        axes[1].errorbar(sizes, rate, yerr=spread, fmt="o-", color="tab:green", capsize=4)
        axes[2].plot(sizes, [row["peak_memory_mb"] for row in rows], "o-", color="tab:red")
    axes[1].set(title="train-step throughput (median, IQR)", ylabel="pairs / s")
    axes[2].set(title="compiled peak memory per device", ylabel="MiB")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("global batch size")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    cli.quiet_terminal()
    cli.initialize_distributed()
    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    cli.log_to_file(out / "logs" / f"scaling_sweep.{jax.process_index()}.log")
    # Training and the benchmark compile the same step: the second compile becomes a cache read.
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str((out / "xla_cache").absolute()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    rows = []
    for size in sorted(int(s) for s in FLAGS["batch-sizes"].value):
        config = sized_config(FLAGS.config, size, FLAGS["max-steps"].value, FLAGS["num-epochs"].value,
                              FLAGS["microbatch-size"].value)
        rows.append(run_size(config, size, out))
        write_tables(rows, out)  # partial results survive an interrupted sweep
    if jax.process_index() == 0:
        from ml_collections import config_flags

        epochs = FLAGS["num-epochs"].value or FLAGS.config.train.num_epochs
        budget = f"{FLAGS['max-steps'].value} steps" if FLAGS["max-steps"].value else f"{epochs} epochs"
        plot(rows, out, f"{config_flags.get_config_filename(FLAGS['config'])}: batch-size sweep ({budget}, "
                        f"{jax.device_count()} x {jax.devices()[0].device_kind})")
        print((out / "scaling.md").read_text())


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("config")
    app.run(main)
