"""``plan.max_batch``'s search (doubling, bisection, the linear guess, a first batch too large)
against compilers whose peak memory is a known function of the batch.

The search only sees what ``try_batch`` reports (fits, peak bytes), so these tests give it
reports from a memory model instead of the TPU compiler (minutes per compilation on this host);
the real compilations are run by the README's ``--max-batch`` command (test_readme_plans.py).
"""
import jax
import pytest

from configs import base
from hybrid_jax import plan
from hybrid_jax.backend import chips

GIB = chips.GIB


def search(monkeypatch, peak_of_batch, hbm_gib: float, **kwargs):
    """max_batch on 4 CPU devices (mesh data=4: batches in steps of 4) with ``peak_of_batch``
    as the compiler; a batch fits when its peak is within ``hbm_gib``."""
    chip = chips.Chip(name="test chip", device_kind="test", hbm_bytes=int(hbm_gib * GIB), peak_bf16_tflops=100.0,
                      hbm_gbps=1000.0)
    compiled = []

    def try_batch(config, devices, chip_, topology, batch, text_config=None, hlo_out=None):
        compiled.append(batch)
        peak = peak_of_batch(batch)
        if peak > chip_.hbm_bytes:
            return plan.did_not_fit(devices, chip_, topology, batch, f"needs {peak / GIB:.2f}G: exceeds available HBM")
        return {"fits": True, "batch_size": batch, "memory_per_chip": {"peak_bytes_estimate": peak}}

    monkeypatch.setattr(plan, "try_batch", try_batch)
    config = base.get_config()
    config.mesh.shape = (("data", 4), ("fsdp", 1))
    result = plan.max_batch(config, jax.devices()[:4], chip, "test:2x2", log=lambda _: None, **kwargs)
    assert [batch for batch, _, _ in result["tried"]] == compiled
    return result


def linear(base_gib: float, gib_per_pair: float):
    return lambda batch: int((base_gib + gib_per_pair * batch) * GIB)


def test_doubles_then_lands_on_the_largest_batch_by_the_linear_fit(monkeypatch):
    # 1 GiB + 0.1 GiB per pair, 16 GiB of HBM: the largest fitting multiple of 4 is 148.
    result = search(monkeypatch, linear(1.0, 0.1), 16.0, start_per_chip=2)
    tried = [batch for batch, _, _ in result["tried"]]
    assert tried[:6] == [8, 16, 32, 64, 128, 256]  # doubling until 256 does not fit
    assert result["largest"]["batch_size"] == 148 and result["granularity"] == 4
    assert tried[6] == 148 and len(tried) <= 8  # the linear guess is exact for a linear compiler


def test_bisects_when_memory_is_not_linear(monkeypatch):
    # Peak jumps at 100 pairs (a different layout, say): the fit overshoots, bisection finishes.
    peak = lambda batch: int((1.0 + 0.01 * batch + (20.0 if batch >= 100 else 0.0)) * GIB)  # noqa: E731
    result = search(monkeypatch, peak, 16.0, start_per_chip=2, max_compiles=20)
    assert result["largest"]["batch_size"] == 96
    fits = {batch: ok for batch, ok, _ in result["tried"]}
    assert fits[96] and not fits[100]  # the bracket was closed to one step


def test_a_first_batch_too_large_is_halved_until_one_fits(monkeypatch):
    result = search(monkeypatch, linear(1.0, 1.0), 16.0, start_per_chip=8)
    assert [(batch, ok) for batch, ok, _ in result["tried"]][:3] == [(32, False), (16, False), (8, True)]
    assert result["largest"]["batch_size"] == 8


def test_nothing_fits_and_the_budget_is_kept(monkeypatch):
    result = search(monkeypatch, linear(100.0, 1.0), 16.0, start_per_chip=2)
    assert result["largest"] is None and [ok for _, ok, _ in result["tried"]] == [False, False]
    # what the compiler said about each refused batch is kept: by how much it overflowed
    assert result["refused"] == {8: "needs 108.00G: exceeds available HBM", 4: "needs 104.00G: exceeds available HBM"}
    result = search(monkeypatch, linear(1.0, 0.001), 16.0, start_per_chip=2, max_compiles=3)
    assert len(result["tried"]) == 3 and result["largest"]["batch_size"] == 32  # stopped by the budget


@pytest.mark.parametrize("micro", [0, 32])
def test_granularity_is_the_batch_split_and_the_gradcache_sub_batch(micro):
    config = base.get_config()
    config.mesh.shape = (("data", 4), ("fsdp", 2))
    config.train.microbatch_size = micro
    # the batch splits over data and fsdp (8 devices); GradCache sub-batches of 32 over those 8
    assert plan.batch_granularity(config, jax.devices()[:8]) == (32 if micro else 8)


def plan_table_tool():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "tools" / "tpu_plan_table.py"
    spec = importlib.util.spec_from_file_location("tpu_plan_table", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_plan_table_rows_without_a_cost_model_time():
    """The TPU compiler gives no step time for some chips (v5e with this libtpu: the report then
    has no estimated_step_s / estimated_mfu); the planning table says so instead of crashing. The
    figures are those of the clotho_late v5e:2x2 search in docs/tpu_planning.md."""
    tool = plan_table_tool()
    result = {"chips": 4, "batch_size": 128, "fits": True, "hbm_used_fraction": 0.8786,
              "flops_per_pair": 198.555e9, "peak_bf16_tflops_per_chip": 197.0,
              "flops_per_chip_step": 6.354e12, "bytes_accessed_per_chip_step": 239.35e9,
              "memory_per_chip": {"peak_bytes_estimate": 15094491136},
              "max_batch_search": {"tried": [[32, True, 1], [64, True, 2], [128, True, 3]]}}
    line = tool.row("clotho_late", "v5e:2x2", "base", result, ["python", "-m", "hybrid_jax.benchmark"])
    cells = [c.strip() for c in line.split("|")[1:-1]]
    # 32+ per chip: every batch tried fitted. A JSON from before the benchmark reported the model's
    # own FLOPs: counted from the config (182.6 GFLOP per pair); the epoch is in model FLOPs:
    # 19,195 pairs x 182.6 GFLOP / (0.35 x 4 x 197 TFLOP/s).
    assert cells[3:8] == ["32+", "88 %", "199 (183)", "no cost-model time", "12.7 s"], cells
    reported = tool.row("clotho_late", "v5e:2x2", "base", {**result, "analytic_flops_per_pair": 150e9,
                        "estimated_step_s": 0.1, "estimated_mfu": 0.0806}, ["python", "x"])
    # 150 GFLOP x 128 pairs / 0.1 s / (4 x 197 TFLOP/s) = 24.4 %; AudioCaps epochs are 49,838 pairs.
    assert [c.strip() for c in reported.split("|")[1:-1]][5:7] == ["199 (150)", "8.1 % / 24.4 %"]
    audiocaps = tool.row("audiocaps_late", "v5e:2x2", "base", {**result, "analytic_flops_per_pair": 150e9},
                         ["python", "x"])
    assert [c.strip() for c in audiocaps.split("|")[1:-1]][7] == "27.1 s"
    with_time = {**result, "estimated_step_s": 0.1, "estimated_mfu": 0.0806}
    cells = [c.strip() for c in tool.efficiency_row("clotho_late", "v5e:2x2", "base", 32, with_time,
                                                    ["python", "x"]).split("|")[1:-1]]
    assert cells[4] == "100.0 ms" and cells[8] == "8.1 %", cells
    cells = [c.strip() for c in tool.efficiency_row("clotho_late", "v5e:2x2", "base", 32, result,
                                                    ["python", "x"]).split("|")[1:-1]]
    assert cells[4] == cells[8] == "no cost-model time", cells


def test_plan_table_command_starts_the_search_where_asked(tmp_path):
    """--start-per-chip reaches the benchmark's search; the default leaves the command as the
    cells computed so far show it."""
    tool = plan_table_tool()
    out = tmp_path / "cell.json"
    default = tool.command("clotho_late", "v6e:2x2", "base", out, 3)
    assert "--max-batch" in default and not any(a.startswith("--start-per-chip") for a in default)
    started = tool.command("clotho_late", "v6e:2x2", "base", out, 3, start_per_chip=32)
    assert started[started.index("--max-batch"):][:3] == ["--max-batch", "--max-compiles=3",
                                                           "--start-per-chip=32"]
    fixed = tool.command("clotho_late", "v6e:2x2", "base", out, 3, per_chip=16, start_per_chip=32)
    assert "--batch-size" in fixed and fixed[fixed.index("--batch-size") + 1] == "64"
    assert not any(a.startswith("--start-per-chip") for a in fixed)


def test_plan_table_rows_keep_the_command_that_computed_them(tmp_path):
    """A table rewritten later with other flags (here ``--table-only`` with the default budget)
    shows each cell's own recorded command, not the rewriting invocation's; a cell without a
    record falls back to the invocation's. Run as a user runs the tool."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    tool = plan_table_tool()
    result = {"chips": 4, "batch_size": 512, "fits": True, "hbm_used_fraction": 0.55,
              "flops_per_pair": 193.48e9, "peak_bf16_tflops_per_chip": 459.0,
              "estimated_mfu": 0.2549, "max_batch_search": {"tried": [[256, True, 1], [512, True, 2]]}}
    for topology in ("v5p:2x2x1", "v6e:2x2"):
        path = tool.cell_path(tmp_path, "clotho_late", topology, "base")
        path.write_text(json.dumps({**result, "peak_bf16_tflops_per_chip": 918.0}
                                   if topology == "v6e:2x2" else result))
    ran = tool.command("clotho_late", "v5p:2x2x1", "base",
                       tool.cell_path(tmp_path, "clotho_late", "v5p:2x2x1", "base"), 2, start_per_chip=64)
    tool.cell_path(tmp_path, "clotho_late", "v5p:2x2x1", "base").with_suffix(".command").write_text(
        json.dumps(ran))
    root = pathlib.Path(__file__).parents[1]
    subprocess.run([sys.executable, "tools/tpu_plan_table.py", f"--out={tmp_path}", "--configs=clotho_late",
                    "--topologies=v5p:2x2x1,v6e:2x2", "--variants=base", "--table-only"],
                   cwd=root, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(root)})
    v5p, v6e = [line for line in (tmp_path / "table.md").read_text().splitlines()
                if line.startswith("| clotho_late")]
    assert "--max-compiles=2 --start-per-chip=64" in v5p and "25.5 %" in v5p and "128+" in v5p
    assert "--max-compiles=6" in v6e and "--start-per-chip" not in v6e  # no record: the invocation's


def test_planning_doc_rows_are_the_recorded_cells(tmp_path):
    """docs/tpu_planning.md's rows come from the compilations recorded in docs/tpu_plan: the
    table rewritten from those JSON files (as a user rewrites it, with ``--table-only``) has each
    of its rows in the doc, and every doc row that names a JSON there has it."""
    import os
    import pathlib
    import re
    import shutil
    import subprocess
    import sys

    root = pathlib.Path(__file__).parents[1]
    recorded = root / "docs" / "tpu_plan"
    cells = sorted(recorded.glob("*.json"))
    assert cells, f"no recorded cells in {recorded}"
    for path in cells:
        shutil.copy(path, tmp_path)
        shutil.copy(path.with_suffix(".command"), tmp_path)
    subprocess.run([sys.executable, "tools/tpu_plan_table.py", f"--out={tmp_path}", "--table-only"],
                   cwd=root, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(root)})
    rows = [line for line in (tmp_path / "table.md").read_text().splitlines()
            if line.startswith("| ") and "| not run |" not in line and not line.startswith(("| config", "| ---"))]
    assert len(rows) == len(cells)
    doc = (root / "docs" / "tpu_planning.md").read_text()
    doc_lines = set(doc.splitlines())
    for line in rows:
        assert line in doc_lines, f"docs/tpu_planning.md lacks the recorded row\n{line}"
    for name in re.findall(r"--json-out (docs/tpu_plan/\S+\.json)", doc):
        assert (root / name).exists(), f"docs/tpu_planning.md cites {name}, which is not there"


def test_cost_analysis_counts_a_loop_body_once():
    """Why GradCache cells get no compiled FLOPs or MFU: XLA's cost analysis counts a while loop's
    body once, whatever its trip count (here 8 matmuls in a fori_loop cost what one does)."""
    import jax.numpy as jnp

    from hybrid_jax import hlo

    x = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    once = jax.jit(lambda a: a @ a).lower(x).compile()
    looped = jax.jit(lambda a: jax.lax.fori_loop(0, 8, lambda _, b: b @ a, a)).lower(x).compile()
    assert hlo.cost(once)["flops"] == pytest.approx(2 * 64**3, rel=0.01)
    assert hlo.cost(looped)["flops"] < 2 * hlo.cost(once)["flops"]


def test_gradcache_steps_are_flagged_and_get_no_mfu():
    from ml_collections import ConfigDict

    def config(batch, micro):
        return ConfigDict({"train": {"batch_size": batch, "microbatch_size": micro}})
    assert [plan.sub_batches(config(512, m)) for m in (0, 32, 512, 1024)] == [1, 16, 1, 1]
    tool = plan_table_tool()
    result = {"chips": 4, "batch_size": 512, "fits": True, "hbm_used_fraction": 0.5566,
              "flops_per_pair": 16.35e9, "analytic_flops_per_pair": 182.6e9,
              "peak_bf16_tflops_per_chip": 197.0, "estimated_step_s": 0.01, "estimated_mfu": 0.9,
              "step_options": {"microbatch_size": 32, "accumulation": "gradcache", "loss_impl": "ring"},
              "max_batch_search": {"tried": [[512, True, 1]]}}
    cells = [c.strip() for c in tool.row("clotho_late", "v5e:2x2", "gradcache+ring", result,
                                         ["python", "x"]).split("|")[1:-1]]
    assert cells[3:7] == ["128+", "56 %", "loop counted once (183)", "GradCache loop counted once"], cells


def test_a_compiler_that_never_refuses_is_searched_by_the_peak(monkeypatch):
    """XLA:GPU compiles any batch: the report's peak against the chip's memory decides, and the
    search says so where the TPU compiler's message would be."""
    chip = chips.Chip(name="gpu", device_kind="test", hbm_bytes=16 * GIB, peak_bf16_tflops=100.0, hbm_gbps=1000.0)

    def try_batch(config, devices, chip_, topology, batch, text_config=None, hlo_out=None):
        peak = int((1.0 + 0.1 * batch) * GIB)
        return {"fits": peak <= chip_.hbm_bytes, "batch_size": batch,
                "memory_per_chip": {"peak_bytes_estimate": peak}}

    monkeypatch.setattr(plan, "try_batch", try_batch)
    config = base.get_config()
    config.mesh.shape = (("data", 4), ("fsdp", 1))
    result = plan.max_batch(config, jax.devices()[:4], chip, "gpu:4", start_per_chip=32, max_compiles=2,
                            log=lambda _: None)
    assert result["largest"]["batch_size"] == 128 and [b for b, _, _ in result["tried"]] == [128, 256]
    assert result["refused"] == {256: "peak 26.60 GiB exceeds the 16.00 GiB per chip a JAX process may allocate"}
