"""tools/gpu_benchmarks.py without a GPU: config overrides, the table and its block in the doc."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("gpu_benchmarks", ROOT / "tools" / "gpu_benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(config, batch, pairs_per_s):
    return {"config": config, "batch_size": batch, "pairs_per_s": pairs_per_s, "num_devices": 1,
            "device_kind": "NVIDIA H100 80GB HBM3", "backend": "gpu", "mfu": 0.3, "mfu_analytic": 0.28,
            "achieved_tflops": 296.7, "step_time_s": {"median": batch / pairs_per_s, "spread_pct": 2.0},
            "memory_per_device": {"peak_bytes_estimate": 3 << 30}, "notes": []}


def test_config_overrides(tool):
    config = tool.load_config(str(ROOT / "configs" / "demo.py"),
                              ["model.dtype=bfloat16", "data.clip_seconds=1.0", "train.batch_size=16"])
    assert (config.model.dtype, config.data.clip_seconds, config.train.batch_size) == ("bfloat16", 1.0, 16)
    with pytest.raises(FileNotFoundError):
        tool.load_config("configs/nope.py", [])


def test_table_replaces_only_its_block(tool, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nCPU figures stay.\n")
    rows = [report("configs/clotho_late.py", 32, 400.0),
            {"config": "configs/clotho_late.py", "batch_size": 64, "oom": True}]
    tool.write_doc(doc, tool.table(rows, "python tools/gpu_benchmarks.py"))
    first = doc.read_text()
    assert first.startswith("# Benchmarks\n\nCPU figures stay.\n")
    assert "| configs/clotho_late.py | 32 | 400.0 | 80.0 ms (2 %) | 296.7 | 30.0 % / 28.0 % | 3.00 GiB |" in first
    assert "| configs/clotho_late.py | 64 | out of memory |" in first
    tool.write_doc(doc, tool.table([report("configs/audiocaps_late.py", 32, 900.0)], "cmd"))
    second = doc.read_text()
    assert second.count(tool.START) == 1 and "clotho_late" not in second and "audiocaps_late" in second
    assert second.startswith("# Benchmarks\n\nCPU figures stay.\n")
