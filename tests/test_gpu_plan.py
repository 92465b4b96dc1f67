"""Compile-only GPU planning on this CPU host: the real train step of a tiny config compiled for
4 H100s by XLA:GPU's deviceless compilation (JAX's CUDA plugin and XLA's own H100 target config,
no GPU), its report and the program's GPU choices.

One compilation of the whole step, shared by the module (1-2 CPU-minutes). Skipped where the CUDA
plugin is not installed (CI installs requirements-gpu-plan.txt).
"""
import importlib.util

import jax
import jax.numpy as jnp
import pytest

from hybrid_jax.backend import chips, gpu_target

pytestmark = pytest.mark.skipif(
    not any(importlib.util.find_spec("jax_plugins") and importlib.util.find_spec(p)
            for p in gpu_target.PLUGINS),
    reason="JAX's CUDA plugin not installed (pip install -r requirements-gpu-plan.txt)")

from test_tpu_plan import GLOBAL_BATCH, TINY_BERT, tiny_config  # noqa: E402
from hybrid_jax import hlo, plan  # noqa: E402

TOPOLOGY = "h100:4"


@pytest.fixture(scope="module")
def target():
    return plan.target(TOPOLOGY)


@pytest.fixture(scope="module")
def compiled_step(target):
    devices, _ = target
    return plan.compile_step(tiny_config(), devices, text_config=TINY_BERT)


def test_gpu_topology_names():
    assert chips.parse_topology("h100:8") == (chips.CHIPS["h100"], (1, 8))
    assert chips.parse_topology("h200:2x8") == (chips.CHIPS["h200"], (2, 8))
    with pytest.raises(ValueError, match="counts must be positive"):
        chips.parse_topology("h100:0")
    with pytest.raises(ValueError, match=r"<gpu>:\[<hosts>x\]<GPUs per host>"):
        chips.parse_topology("a100:8")


def test_devices_of_each_gpu_from_the_plugins_own_target_config():
    for name, count, kind in [("h100:8", 8, "NVIDIA H100 80GB HBM3"),
                              ("h200:2x8", 16, "NVIDIA H200 141GB HBM3e")]:
        devices = chips.topology_devices(name)
        assert len(devices) == count and {d.device_kind for d in devices} == {kind}
        assert {d.platform for d in devices} == {"gpu"}
        assert chips.chip_of(kind) is chips.parse_topology(name)[0]


def test_planned_memory_is_what_jax_may_allocate(monkeypatch):
    """The target config's memory (H100: 79.1 GiB, not the data sheet's 80) times XLA's allocator
    fraction (JAX's 0.75 unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise)."""
    text = gpu_target.target_config("NVIDIA H100 80GB HBM3")
    assert gpu_target.memory_bytes(text) == 84_942_979_072
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    assert chips.planning_chip("h100:8").hbm_bytes == int(0.75 * 84_942_979_072)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    assert chips.planning_chip("h100:8").hbm_bytes == int(0.9 * 84_942_979_072)
    assert chips.planning_chip("v5e:2x2") is chips.CHIPS["v5e"]


def test_unknown_gpu_and_missing_plugin_say_what_to_do(monkeypatch):
    with pytest.raises(ValueError, match=r"no target config for GPU 'NVIDIA Z9'.*NVIDIA H100 80GB HBM3"):
        gpu_target.target_config("NVIDIA Z9")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("jax_plugins") else real(name, *a))
    with pytest.raises(RuntimeError, match="requirements-gpu-plan.txt"):
        gpu_target.plugin_library()


def test_the_step_is_the_gpu_program(compiled_step):
    """Backend choices come from the target devices: cuDNN convolutions in bfloat16, no per-example
    loops, although this host's backend is CPU."""
    assert jax.default_backend() == "cpu"
    model = compiled_step.model
    assert (model.audio.depthwise, model.dtype) == ("native", jnp.bfloat16)
    program = compiled_step.compiled.as_text()
    convolutions = [line for line in program.splitlines() if "__cudnn$conv" in line]
    assert any("convForward" in c for c in convolutions) and any("BackwardFilter" in c for c in convolutions)
    assert all("bf16[" in c for c in convolutions), [c for c in convolutions if "bf16[" not in c][:2]
    assert hlo.audit(program, dtype="bfloat16", global_batch=GLOBAL_BATCH, local_batch=GLOBAL_BATCH // 4) == []
    # The only loops are the ring loss's (forward and backward).
    assert all("shard_map/while" in w for w in hlo.while_loops(program)), hlo.while_loops(program)


def test_report_and_table(compiled_step, target):
    _, chip = target
    result = plan.report(compiled_step, chip, TOPOLOGY)
    assert result["chips"] == 4 and result["chip"] == "h100" and result["platform"] == "gpu"
    assert result["mesh"] == {"data": 2, "fsdp": 2}
    assert result["fits"] and result["hbm_bytes_per_chip"] == chip.hbm_bytes
    assert 0 < result["memory_per_chip"]["peak_bytes_estimate"] < 0.01 * chip.hbm_bytes
    # XLA:GPU reports no cost analysis: no compiled FLOPs (not zero), no step time; the model's
    # own FLOPs are still there.
    assert result["flops_per_chip_step"] is None and result["flops_per_pair"] is None
    assert "estimated_step_s" not in result and result["analytic_flops_per_pair"] > 0
    text = plan.table(result)
    assert "no cost analysis for this target" in text and "fits in HBM" in text
    assert any(c["kind"] == "all-reduce" for c in result["collectives"])
