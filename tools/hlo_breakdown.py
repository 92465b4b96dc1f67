"""Where a compiled step's time goes: a roofline per model part, from the compiled HLO text.

Run: python -m hybrid_jax.benchmark --config configs/clotho_late.py --topology v5p:2x2x1 \\
         --batch-size 32 --hlo-out step.hlo --json-out step.json
     python tools/hlo_breakdown.py step.hlo --chip v5p [--depth 3] [--top 30] [--report step.json]

Every scheduled op (a fusion, a convolution, a collective, ...) costs max(FLOPs / peak,
bytes / HBM bandwidth) of the chip (``hybrid_jax.backend.chips``); the ops are summed by model part
(their JAX op path, ``--depth`` levels deep, forward and backward apart). This is our roofline,
not XLA's cost model (whose per-op figures are not exposed): it ignores overlap, on-chip reuse
between ops and MXU padding, so compare parts with each other, and the total with the cost
model's ``estimated_step_s`` from ``--report``.
"""
from __future__ import annotations

import json
import pathlib

from absl import app, flags

from hybrid_jax import hlo
from hybrid_jax.backend import chips


def main(argv):
    if len(argv) != 2:
        raise SystemExit("usage: tools/hlo_breakdown.py STEP.hlo --chip v5p")
    f = flags.FLAGS
    chip = chips.CHIPS[f.chip]
    text = pathlib.Path(argv[1]).read_text()
    rows = hlo.breakdown(text, chip.peak_bf16_tflops * 1e12, chip.hbm_gbps * 1e9, f.depth)
    total = sum(r["roofline_s"] for r in rows)
    flops = sum(r["flops"] for r in rows)
    print(f"{argv[1]} on {chip.name}: roofline {1e3 * total:.2f} ms per step, "
          f"{flops / 1e12:.3f} TFLOP (dots/convolutions), {sum(r['ops'] for r in rows)} ops")
    if f.report:
        result = json.loads(pathlib.Path(f.report).read_text())
        if "estimated_step_s" in result:
            print(f"XLA cost model: {1e3 * result['estimated_step_s']:.2f} ms, "
                  f"{result['flops_per_chip_step'] / 1e12:.3f} TFLOP, MFU {100 * result['estimated_mfu']:.1f} %")
    print(f"{'part':<64} {'ops':>5} {'GFLOP':>9} {'MB':>9} {'ms':>8} {'share':>6} bound")
    for r in rows[:f.top]:
        print(f"{r['part'][:64]:<64} {r['ops']:>5} {r['flops'] / 1e9:>9.2f} {r['bytes'] / 1e6:>9.1f} "
              f"{1e3 * r['roofline_s']:>8.3f} {100 * r['roofline_s'] / total:>5.1f}% {r['bound']}")


if __name__ == "__main__":
    flags.DEFINE_enum("chip", "v5p", [c for c, s in chips.CHIPS.items() if s.dims], "TPU generation.")
    flags.DEFINE_integer("depth", 3, "Levels of the op path that name a model part.")
    flags.DEFINE_integer("top", 30, "Rows to print.")
    flags.DEFINE_string("report", None, "The benchmark's --json-out of the same compile.")
    app.run(main)
