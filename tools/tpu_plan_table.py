"""The planning table: largest batch per chip of the Table I configs on v4/v5e/v5p/v6e slices and
on hosts of 8 H100s or H200s (compile-only; GPUs through XLA:GPU's deviceless compilation).

Run: nice python tools/tpu_plan_table.py --out workdirs/tpu_plan [--configs clotho_late,...]
         [--topologies v5p:2x2x1,...] [--variants base,remat,...] [--max-compiles 6]
     nice python tools/tpu_plan_table.py ... --start-per-chip 32 --max-compiles 3  (a search
         that starts near the HBM limit: fewer compiles per cell)
     nice python tools/tpu_plan_table.py --out workdirs/tpu_efficiency --per-chip 8,16,32,64 ...
         (the efficiency table of issue 16: fixed batches per chip, with the compiled HLO kept
         for tools/hlo_breakdown.py)

Each cell is one run of the compile-only benchmark (``python -m hybrid_jax.benchmark --topology T
--max-batch``), whose JSON lands in ``OUT/<config>__<topology>__<variant>.json`` and its command
in the ``.command`` file next to it; cells with a JSON are not recompiled, so an interrupted run
continues where it stopped. The markdown table is rewritten from whatever JSON exists, every row
with the command that produced it; cells not run say so. Compiles of the full-size models take minutes of CPU each: run it with ``nice``.
"""
from __future__ import annotations

import json
import pathlib
import shlex
import subprocess
import sys
import time

from absl import app, flags

# The benchmark's default first batch per chip of a --max-batch search.
from hybrid_jax.plan import START_PER_CHIP

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLOTHO_TRAIN_PAIRS = 3839 * 5  # ClothoV2.1 development split: clips x captions
AUDIOCAPS_TRAIN_PAIRS = 49_838  # AudioCaps v1 train: one caption per clip
CONFIGS = {  # Table I late-fusion rows: name -> (config file, training pairs per epoch)
    "clotho_late": ("configs/clotho_late.py", CLOTHO_TRAIN_PAIRS),
    "clotho_large_late": ("configs/clotho_large_late.py", CLOTHO_TRAIN_PAIRS),
    "audiocaps_late": ("configs/audiocaps_late.py", AUDIOCAPS_TRAIN_PAIRS),
}
# Config overrides per memory option (the config's defaults are "base": no remat, one pass over
# the batch, the plain loss). GradCache sub-batches are 8 pairs per chip.
VARIANTS = {
    "base": [],
    "remat": ["--config.model.audio.remat=True", "--config.model.text.remat=True"],
    "ring": ["--config.train.loss_impl=ring"],
    "remat+ring": ["--config.model.audio.remat=True", "--config.model.text.remat=True",
                   "--config.train.loss_impl=ring"],
    "gradcache+ring": ["--config.train.microbatch_size={micro}", "--config.train.loss_impl=ring"],
    # Parameters and Adam's moments split over every chip at rest (gathered for each step):
    # the replicated arguments of bert-large are 4.7 GiB per chip otherwise.
    "fsdp+gradcache+ring": ['--config.mesh.shape=(("data",1),("fsdp",-1))',
                            "--config.train.microbatch_size={micro}", "--config.train.loss_impl=ring"],
}
# TPU slices of 4 chips, and one host of 8 GPUs (XLA:GPU's deviceless compile: memory only).
TOPOLOGIES = ("v4:2x2x1", "v5e:2x2", "v5p:2x2x1", "v6e:2x2", "h100:8", "h200:8")
PLANNED_MFU = 0.35


def num_chips(topology: str) -> int:
    from hybrid_jax.backend import chips

    _, shape = chips.parse_topology(topology)
    count = 1
    for s in shape:
        count *= s
    return count


def command(config: str, topology: str, variant: str, out: pathlib.Path, max_compiles: int,
            per_chip: int | None = None, start_per_chip: int = START_PER_CHIP) -> list[str]:
    """The benchmark command of one cell: a --max-batch search (from ``start_per_chip`` pairs per
    chip), or one batch of ``per_chip``."""
    extra = [a.format(micro=8 * num_chips(topology)) for a in VARIANTS[variant]]
    start = [f"--start-per-chip={start_per_chip}"] if start_per_chip != START_PER_CHIP else []
    search = (["--batch-size", str(per_chip * num_chips(topology)), "--hlo-out", str(out.with_suffix(".hlo"))]
              if per_chip else ["--max-batch", f"--max-compiles={max_compiles}", *start])
    return [sys.executable, "-m", "hybrid_jax.benchmark", "--config", CONFIGS[config][0],
            "--topology", topology, *search, "--json-out", str(out), *extra]


def analytic_flops(config: str, result: dict) -> float:
    """The model's own FLOPs per training pair (``hybrid_jax.flops``) of a cell: from its JSON, or,
    for cells computed before the benchmark reported them, counted from the config's architecture
    at the cell's batch (no compilation)."""
    if "analytic_flops_per_pair" in result:
        return result["analytic_flops_per_pair"]
    from hybrid_jax import cli, plan
    from hybrid_jax.backend.policy import Policy

    cfg = cli.load_config_file(ROOT / CONFIGS[config][0])
    cfg.train.batch_size = result["batch_size"]
    model, _ = plan.model_for(cfg.model, Policy("tpu"))
    return plan.analytic_flops(cfg, model).training


def cell_path(out: pathlib.Path, config: str, topology: str, variant: str,
              per_chip: int | None = None) -> pathlib.Path:
    suffix = f"__{per_chip}per_chip" if per_chip else ""
    return out / f"{config}__{topology.replace(':', '_')}__{variant}{suffix}.json"


def estimate(result: dict, key: str, scale: float, unit: str) -> str:
    """A cost-model figure, or why there is none (XLA reports no step time for some chips, e.g.
    v5e with libtpu 0.0.50.1: then the report has no estimated time or MFU)."""
    return f"{scale * result[key]:.1f} {unit}" if key in result else "no cost-model time"


def efficiency_row(config: str, topology: str, variant: str, per_chip: int, result: dict | None,
                   cmd: list[str]) -> str:
    shown = "python " + " ".join(shlex.quote(a) for a in cmd[1:])
    if result is None:
        return f"| {config} | {topology} | {variant} | {per_chip} | not run | | | | | `{shown}` |"
    if "memory_per_chip" not in result:
        return f"| {config} | {topology} | {variant} | {per_chip} | does not fit | | | | | `{shown}` |"
    return (f"| {config} | {topology} | {variant} | {per_chip} | "
            f"{estimate(result, 'estimated_step_s', 1e3, 'ms')} | {result['flops_per_chip_step'] / 1e12:.2f} | "
            f"{result['bytes_accessed_per_chip_step'] / 1e9:.1f} | "
            f"{result['memory_per_chip']['peak_bytes_estimate'] / 2**30:.1f} GiB | "
            f"{estimate(result, 'estimated_mfu', 100, '%')} | `{shown}` |")


def cell_command(path: pathlib.Path, cmd: list[str]) -> list[str]:
    """The command that computed the cell at ``path`` (recorded next to its JSON when it ran);
    ``cmd`` (this invocation's) for a cell that has no record. A table rewritten with other
    flags (``--table-only``, another ``--max-compiles``) must not show them as the cell's."""
    record = path.with_suffix(".command")
    return json.loads(record.read_text()) if record.exists() else cmd


def row(config: str, topology: str, variant: str, result: dict | None, cmd: list[str]) -> str:
    shown = "python " + " ".join(shlex.quote(a) for a in cmd[1:])
    if result is None:
        return f"| {config} | {topology} | {variant} | not run | | | | | `{shown}` |"
    tried = result.get("max_batch_search", {}).get("tried", [])
    if not result.get("fits"):
        return (f"| {config} | {topology} | {variant} | none of {[b for b, _, _ in tried]} | | | | | "
                f"`{shown}` |")
    chip_count = result["chips"]
    per_chip = result["batch_size"] / chip_count
    capped = all(ok for _, ok, _ in tried)  # never hit the HBM: the search's limit, not the chip's
    analytic = analytic_flops(config, result)
    micro = result.get("step_options", {}).get("microbatch_size", 0) or 0
    looped = 0 < micro < result["batch_size"]  # XLA's cost analysis counts the loop body once
    compiled = ("loop counted once" if looped else "no cost analysis" if not result["flops_per_pair"]
                else f"{result['flops_per_pair'] / 1e9:.0f}")
    peak = result["peak_bf16_tflops_per_chip"] * 1e12 * chip_count
    # MFU counts the model's FLOPs: recomputation (remat, or XLA's under memory pressure) is
    # part of what lowers it, not work done.
    epoch_s = CONFIGS[config][1] * analytic / (PLANNED_MFU * peak)
    mfu = "GradCache loop counted once" if looped else estimate(result, "estimated_mfu", 100, "%")
    if "estimated_step_s" in result and not looped:
        model_mfu = analytic * result["batch_size"] / result["estimated_step_s"] / peak
        mfu += f" / {100 * model_mfu:.1f} %"
    return (f"| {config} | {topology} | {variant} | {per_chip:g}{'+' if capped else ''} | "
            f"{100 * result['hbm_used_fraction']:.0f} % | {compiled} ({analytic / 1e9:.0f}) | "
            f"{mfu} | {epoch_s:.1f} s | `{shown}` |")


def main(argv):
    del argv
    f = flags.FLAGS
    out = pathlib.Path(f.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    per_chip_list = [int(b) for b in f["per-chip"].value] or [None]
    for config in f.configs:
        for topology in f.topologies:
            for variant in f.variants:
                for per_chip in per_chip_list:
                    path = cell_path(out, config, topology, variant, per_chip)
                    cmd = command(config, topology, variant, path, f["max-compiles"].value, per_chip,
                                  f["start-per-chip"].value)
                    if not path.exists() and not f["table-only"].value:
                        print(f"[{time.strftime('%H:%M:%S')}] {config} {topology} {variant} "
                              f"{per_chip or 'max'}", flush=True)
                        log = path.with_suffix(".log")
                        with open(log, "w") as handle:
                            done = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
                        if done.returncode:
                            print(f"  failed ({done.returncode}): see {log}", flush=True)
                        if path.exists():
                            path.with_suffix(".command").write_text(json.dumps(cmd))
                    result = json.loads(path.read_text()) if path.exists() else None
                    if result is not None:
                        cmd = cell_command(path, cmd)
                    rows.append(efficiency_row(config, topology, variant, per_chip, result, cmd)
                                if per_chip else row(config, topology, variant, result, cmd))
    if per_chip_list != [None]:
        header = ("| config | slice | memory options | pairs per chip | cost-model step | TFLOP per "
                  "chip | GB accessed per chip | peak memory | cost-model MFU | command |\n"
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        table = header + "\n" + "\n".join(rows) + "\n"
        (out / "table.md").write_text(table)
        print(table)
        return
    header = ("| config | slice | memory options | largest batch per chip | HBM used | GFLOP per "
              "pair: compiled (model) | cost-model MFU: compiled / model FLOPs | epoch at 35 % "
              "MFU | command |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    table = header + "\n" + "\n".join(rows) + "\n"
    (out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    flags.DEFINE_string("out", "workdirs/tpu_plan", "Folder of the per-cell JSON and logs.")
    flags.DEFINE_list("configs", list(CONFIGS), f"Of {list(CONFIGS)}.")
    flags.DEFINE_list("topologies", list(TOPOLOGIES), "TPU slices.")
    flags.DEFINE_list("variants", list(VARIANTS), f"Of {list(VARIANTS)}.")
    flags.DEFINE_integer("max-compiles", 6, "Compilations per cell (the max-batch search).")
    flags.DEFINE_integer("start-per-chip", START_PER_CHIP,
                         "First batch per chip of the max-batch search: a start near the limit "
                         "(e.g. 32; a full-size compile takes ~5 min here) saves the small ones.")
    flags.DEFINE_bool("table-only", False, "Only rewrite the table from existing JSON.")
    flags.DEFINE_list("per-chip", [], "Fixed batches per chip instead of the max-batch search "
                      "(the efficiency table; the HLO of each is kept).")
    app.run(main)
