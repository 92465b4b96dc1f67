"""Train-step throughput of the Table I configs on a GPU, written into docs/benchmarks.md.

Run (on a machine with an NVIDIA GPU and jax[cuda]):
    python tools/gpu_benchmarks.py [--configs configs/clotho_late.py,...] \\
        [--batch-sizes 32,64,128,256,512] [--peak-tflops 989] [--doc docs/benchmarks.md]

For every config and global batch it runs ``hybrid_jax.benchmark.benchmark`` (the real jitted
train step: the config's mesh, FSDP rules, GradCache, ring loss, remat, donation) in bfloat16 and
records pairs/s, MFU against ``--peak-tflops`` per device (H100/H200 SXM bf16 dense: 989) and
the compiled step's per-device memory. A batch that runs out of device memory is recorded as
such and larger ones are skipped. The table replaces the block between the markers
``<!-- gpu-benchmarks:start -->`` and ``<!-- gpu-benchmarks:end -->`` of ``--doc`` (appended
if absent), with the command, the device and the date. Without a GPU it refuses to run unless
``--allow-cpu`` (to test the script itself on a tiny config).
"""
from __future__ import annotations

import ast
import datetime
import json
import pathlib
import shlex
import sys

from absl import app, flags

START, END = "<!-- gpu-benchmarks:start -->", "<!-- gpu-benchmarks:end -->"
TABLE_I = ("configs/clotho_late.py", "configs/clotho_large_late.py", "configs/audiocaps_late.py")


def load_config(path: str, overrides: list[str]):
    """A config file's ``get_config()`` plus ``key=value`` overrides (values as Python literals,
    else strings; ConfigDict checks their types)."""
    from hybrid_jax import cli

    config = cli.load_config_file(path)
    for override in overrides:
        key, _, text = override.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        node, *parents = config, *key.split(".")[:-1]
        for name in parents:
            node = node[name]
        node[key.split(".")[-1]] = value
    return config


def out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def run(configs: list[str], batch_sizes: list[int], overrides: list[str], peak_tflops: float,
        steps: int, warmup: int, log=print) -> list[dict]:
    """One benchmark report per (config, batch) in bfloat16; {"oom": True} rows past the memory."""
    from hybrid_jax import benchmark

    rows = []
    for path in configs:
        config = load_config(path, ["model.dtype=bfloat16", *overrides])
        for size in batch_sizes:
            log(f"{path} batch {size} ...")
            try:
                report = benchmark.benchmark(config, batch_size=size, num_steps=steps,
                                             warmup=warmup, peak_tflops=peak_tflops)
            except Exception as error:  # noqa: BLE001 - only device OOM is expected
                if not out_of_memory(error):
                    raise
                rows.append({"config": path, "batch_size": size, "oom": True})
                log("  out of device memory: larger batches skipped")
                break
            report["config"] = path
            rows.append(report)
            log(f"  {report['pairs_per_s']:.1f} pairs/s, MFU {100 * (report['mfu'] or 0):.1f} %")
    return rows


def table(rows: list[dict], command: str) -> str:
    """The markdown block (between the markers) for ``rows``."""
    first = next((r for r in rows if not r.get("oom")), {})
    lines = [START, "", f"Train step in bfloat16 on {first.get('num_devices', '?')} x "
             f"{first.get('device_kind', '?')} ({first.get('backend', '?')}), "
             f"{datetime.date.today().isoformat()}; command: `{command}`.", "",
             ("MFU: of the compiled program's FLOPs (XLA's cost analysis) / of the model's own "
              "(`hybrid_jax.flops`, no recomputation)."), "",
             ("| config | batch | pairs/s | step (median, IQR %) | TFLOP/s | MFU (compiled / model) | "
              "peak memory per device | notes |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r.get("oom"):
            lines.append(f"| {r['config']} | {r['batch_size']} | out of memory | | | | | |")
            continue
        step = r["step_time_s"]
        memory = r["memory_per_device"].get("peak_bytes_estimate", 0) / 2**30
        mfu = (f"{100 * r['mfu']:.1f} % / {100 * r['mfu_analytic']:.1f} %"
               if r.get("mfu") is not None else "-")
        lines.append(f"| {r['config']} | {r['batch_size']} | {r['pairs_per_s']:.1f} | "
                     f"{1e3 * step['median']:.1f} ms ({step['spread_pct']:.0f} %) | "
                     f"{r['achieved_tflops']:.1f} | {mfu} | {memory:.2f} GiB | "
                     f"{'; '.join(r.get('notes', []))} |")
    return "\n".join(lines + ["", END])


def write_doc(doc: pathlib.Path, block: str) -> None:
    """Replaces the marked block of ``doc`` (appends it if there is none)."""
    text = doc.read_text() if doc.exists() else ""
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Train step on GPU (tools/gpu_benchmarks.py)\n\n" + block + "\n"
    doc.write_text(text)


def main(argv):
    del argv
    import jax

    f = flags.FLAGS
    if jax.default_backend() != "gpu" and not f["allow-cpu"].value:
        raise SystemExit(f"no GPU (backend {jax.default_backend()!r}); --allow-cpu to test the script")
    rows = run(f.configs, [int(b) for b in f["batch-sizes"].value], f.override,
               f["peak-tflops"].value, f.steps, f.warmup)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if f["json-out"].value:
        pathlib.Path(f["json-out"].value).write_text(json.dumps(rows, indent=2) + "\n")
    write_doc(pathlib.Path(f.doc), table(rows, command))
    print(table(rows, command))


if __name__ == "__main__":
    flags.DEFINE_list("configs", list(TABLE_I), "Config files.")
    flags.DEFINE_list("batch-sizes", ["32", "64", "128", "256", "512"], "Global batches.")
    flags.DEFINE_multi_string("override", [], "Config overrides key=value (e.g. data.clip_seconds=10).")
    flags.DEFINE_float("peak-tflops", 989.0, "Peak bf16 dense TFLOP/s of one device (H100/H200: 989).")
    flags.DEFINE_integer("steps", 10, "Timed steps per batch.")
    flags.DEFINE_integer("warmup", 2, "Untimed steps per batch.")
    flags.DEFINE_string("doc", "docs/benchmarks.md", "Markdown file to write the table into.")
    flags.DEFINE_string("json-out", None, "Also write every report here.")
    flags.DEFINE_bool("allow-cpu", False, "Run without a GPU (to test this script).")
    app.run(main)
