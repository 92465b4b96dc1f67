"""Compile-only TPU planning on this CPU host: the real train step of a tiny config compiled for a
v5e:2x2 slice (libtpu's ahead-of-time compiler, no TPU), its report, and the HLO audit.

One compilation of the whole step, shared by the module (about 1-3 CPU-minutes: the TPU compiler
is slow even for tiny widths); the audit's own checks are shown to fail on small programs that
break them. Skipped where libtpu is not installed (CI installs requirements-tpu.txt).
"""
import importlib.util
import re

import jax
import jax.numpy as jnp
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu not installed (pip install -r requirements-tpu.txt)")

from model_files import tiny_demo_config  # noqa: E402
from hybrid_jax import hlo, losses, plan, sharding, steps  # noqa: E402
from hybrid_jax.backend import chips, depthwise  # noqa: E402
from hybrid_jax.models import mobilenet  # noqa: E402
from hybrid_jax.models.bert import BertConfig  # noqa: E402

TOPOLOGY = "v5e:2x2"
GLOBAL_BATCH = 40  # 10 per chip; no layer of the tiny model is 40 wide, so [40, 40] means logits
TINY_BERT = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=128)


def tiny_config():
    c = tiny_demo_config()
    c.model.text.trainable = True
    c.data.clip_seconds = 2.0
    c.train.batch_size = GLOBAL_BATCH
    c.train.loss_impl = "ring"
    c.mesh.shape = (("data", 2), ("fsdp", 2))
    return c


@pytest.fixture(scope="module")
def target():
    return plan.target(TOPOLOGY)


@pytest.fixture(scope="module")
def compiled_step(target):
    devices, _ = target
    return plan.compile_step(tiny_config(), devices, text_config=TINY_BERT)


@pytest.fixture(scope="module")
def program(compiled_step):
    return compiled_step.compiled.as_text()


def test_topology_names_of_every_generation():
    for name, count, kind in [("v4:2x2x1", 4, "TPU v4"), ("v5e:2x2", 4, "TPU v5 lite"),
                              ("v5p:2x2x2", 8, "TPU v5"), ("v6e:4x4", 16, "TPU v6 lite")]:
        devices = chips.topology_devices(name)
        assert len(devices) == count and {d.device_kind for d in devices} == {kind}
        assert {d.platform for d in devices} == {"tpu"}
    with pytest.raises(ValueError, match="v5p slices have 3"):
        chips.parse_topology("v5p:4x4")
    with pytest.raises(ValueError, match="expected <chip>"):
        chips.parse_topology("v5litepod-16")


def test_the_step_is_the_tpu_program(compiled_step):
    """Backend choices come from the target devices, although this host's backend is CPU."""
    assert jax.default_backend() == "cpu"
    model = compiled_step.model
    assert (model.audio.depthwise, model.dtype) == ("fused", jnp.bfloat16)
    assert {d.platform for d in compiled_step.mesh.devices.flat} == {"tpu"}


def _param_bytes(params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def test_audit_holds(program, compiled_step):
    assert hlo.audit(program, dtype="bfloat16", global_batch=GLOBAL_BATCH, local_batch=GLOBAL_BATCH // 4,
                     param_bytes=_param_bytes(compiled_step.state.params)) == []
    # The ring loss's loop and its blocks are there; the FSDP all-gathers too.
    kinds = {c["kind"] for c in hlo.collectives(program)}
    assert {"all-gather", "collective-permute"} <= kinds
    assert any("shard_map/while" in w for w in hlo.while_loops(program))


def test_parameters_are_sharded_as_the_rules_say(compiled_step):
    state_shardings = compiled_step.compiled.input_shardings[0][0]
    config, mesh = compiled_step.config, compiled_step.mesh
    expected = sharding.param_shardings(compiled_step.state.params, mesh,
                                        [tuple(r) for r in config.mesh.rules])
    leaves = jax.tree_util.tree_leaves_with_path(compiled_step.state.params)
    got = jax.tree.leaves(state_shardings.params)
    want = jax.tree.leaves(expected)
    assert len(got) == len(want) == len(leaves)
    split = 0
    for (path, leaf), g, w in zip(leaves, got, want):
        assert g.shard_shape(leaf.shape) == w.shard_shape(leaf.shape), jax.tree_util.keystr(path)
        split += g.shard_shape(leaf.shape) != leaf.shape
    query = compiled_step.state.params["bert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"]
    index = [jax.tree_util.keystr(p) for p, _ in leaves].index(
        "['bert']['encoder']['layer_0']['attention']['self']['query']['kernel']")
    assert got[index].shard_shape(query.shape)[0] == query.shape[0] // 2  # fsdp = 2
    assert split > 10


def test_report_and_table(compiled_step, target):
    _, chip = target
    result = plan.report(compiled_step, chip, TOPOLOGY)
    assert result["chips"] == 4 and result["chip"] == "v5e" and result["mesh"] == {"data": 2, "fsdp": 2}
    assert result["fits"] and 0 < result["hbm_used_fraction"] < 0.1
    assert result["memory_per_chip"]["peak_bytes_estimate"] > 0
    assert result["flops_per_chip_step"] > 0 and result["estimated_step_s"] > 0
    assert result["flops_per_pair"] == pytest.approx(result["flops_per_chip_step"] * 4 / GLOBAL_BATCH)
    assert 0 < result["estimated_mfu"] < 1
    # The model's own FLOPs next to the compiled program's, and the MFU of each.
    analytic = plan.analytic_flops(compiled_step.config, compiled_step.model).training
    assert result["analytic_flops_per_pair"] == analytic > 0
    assert result["estimated_mfu_analytic"] == pytest.approx(
        result["estimated_mfu"] * analytic / result["flops_per_pair"])
    text = plan.table(result)
    assert "fits in HBM" in text and "collective-permute" in text and "the model's own" in text


# The audit's checks fail where they should, on small programs compiled for the same chips.

def test_tpu_step_computes_the_stft_as_a_matmul(program):
    """The TPU policy's front end: no FFT (XLA:TPU's staged DFTs), the windowed DFT basis instead."""
    assert "jit(fft)" not in program and " fft(" not in program
    assert "btn,nk->btk" in program


def test_tpu_step_has_grouped_convolutions_only_where_strided(program, compiled_step):
    """The TPU policy's "fused" kernels: stride-1 depthwise convs and the stem are fused shifted
    sums; only the stride-2 depthwise convs stay XLA convolutions (forward and both gradients)."""
    strided = {f"features_{i + 1}" for i, block in
               enumerate(mobilenet.channel_plan(compiled_step.model.audio.width_mult).blocks)
               if block.spec.stride > 1}
    grouped = set()
    for ins in hlo.instructions(program):
        groups = re.search(r"(feature|batch)_group_count=(\d+)", ins.line)
        if ins.op == "convolution" and groups and int(groups.group(2)) > 1:
            layer = re.search(r"/(features_\d+)/", ins.op_name or "")
            grouped.add(layer.group(1) if layer else ins.op_name)
    assert grouped and grouped <= strided, grouped - strided
    stem = [ins.op_name for ins in hlo.instructions(program)
            if ins.op == "convolution" and "/features_0/" in (ins.op_name or "")]
    assert stem == []


def _compile(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


def test_audit_finds_the_cpu_kernels(target):
    devices, _ = target
    one = jax.sharding.SingleDeviceSharding(devices[0])
    x = jax.ShapeDtypeStruct((2, 16, 16, 8), jnp.bfloat16, sharding=one)
    w = jax.ShapeDtypeStruct((3, 3, 1, 8), jnp.bfloat16, sharding=one)
    text = _compile(jax.grad(lambda x, w: depthwise.shifted_conv(x, w, 1).astype(jnp.float32).sum(), 1),
                    x, w)
    assert any("cpu_kernel_shifted_depthwise" in p for p in hlo.audit(text, dtype="bfloat16"))


def test_audit_finds_float32_matmuls(target):
    devices, _ = target
    one = jax.sharding.SingleDeviceSharding(devices[0])
    x = jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=one)
    text = _compile(lambda a: jnp.tanh(a @ a.T), x)
    assert any("float32" in p for p in hlo.audit(text, dtype="bfloat16"))
    assert hlo.audit(text, dtype="float32") == []


def test_audit_finds_global_logits_of_the_plain_loss(target):
    devices, _ = target
    mesh = sharding.make_mesh((("data", 4),), devices)
    spec = sharding.batch_sharding(mesh)
    emb = jax.ShapeDtypeStruct((GLOBAL_BATCH, 32), jnp.float32, sharding=spec)
    ids = jax.ShapeDtypeStruct((GLOBAL_BATCH,), jnp.int32, sharding=spec)

    def plain(q, x, i):
        return losses.contrastive_loss({"embedding": q}, {"embedding": x}, i, i,
                                       {"temperature": jnp.float32(0.05)}, impl="plain")

    text = _compile(plain, emb, emb, ids)
    problems = hlo.audit(text, dtype="float32", global_batch=GLOBAL_BATCH, local_batch=GLOBAL_BATCH // 4)
    assert any("logits" in p for p in problems)


def test_audit_finds_activations_gathered_under_fsdp(compiled_step):
    """The tiny step's gradient with the parameters left split over fsdp (no ``sharding.gathered``):
    XLA's partitioner follows the split kernels into the CNN and all-gathers its activations, and
    the audit says so. (The train step gathers the parameters: ``test_audit_holds``.)"""
    config, mesh, state = compiled_step.config, compiled_step.mesh, compiled_step.state
    gradients = steps.make_gradient_fn(compiled_step.model, mesh=mesh)
    text = _compile(gradients, state.params, state.batch_stats, plan.abstract_batch(config, mesh), state.rng)
    problems = hlo.audit(text, dtype="bfloat16", param_bytes=_param_bytes(state.params))
    assert any("activations are gathered" in p for p in problems), problems


def test_out_of_memory_is_recognised(target):
    """A program needing more than a v5e's 16 GiB: the compiler refuses it, ``plan`` says why."""
    devices, _ = target
    one = jax.sharding.SingleDeviceSharding(devices[0])
    big = jax.ShapeDtypeStruct((70_000, 70_000), jnp.float32, sharding=one)
    with pytest.raises(jax.errors.JaxRuntimeError) as error:
        jax.jit(lambda a: (jnp.sin(a) @ jnp.cos(a)).sum()).lower(big).compile()
    assert "HBM" in plan.out_of_memory(error.value)
    assert plan.out_of_memory(ValueError("shapes do not match")) is None


def test_breakdown_counts_matmul_and_conv_flops(target):
    """The per-op roofline's FLOPs: a dot and a grouped convolution, counted from the shapes."""
    devices, chip = target
    one = jax.sharding.SingleDeviceSharding(devices[0])
    a = jax.ShapeDtypeStruct((256, 512), jnp.bfloat16, sharding=one)
    b = jax.ShapeDtypeStruct((512, 384), jnp.bfloat16, sharding=one)
    x = jax.ShapeDtypeStruct((8, 32, 32, 128), jnp.bfloat16, sharding=one)
    w = jax.ShapeDtypeStruct((3, 3, 1, 128), jnp.bfloat16, sharding=one)

    def step(a, b, x, w):
        depthwise_out = jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=128)
        return a @ b, depthwise_out

    text = _compile(step, a, b, x, w)
    rows = hlo.breakdown(text, chip.peak_bf16_tflops * 1e12, chip.hbm_gbps * 1e9)
    expected = 2 * 256 * 512 * 384 + 2 * (8 * 32 * 32 * 128) * 9
    assert sum(r["flops"] for r in rows) == expected
    assert all(r["roofline_s"] > 0 for r in rows)


def test_breakdown_counts_a_base_dilated_batched_dot_once(target):
    """XLA's TPU compiler writes the gradients of a dot with per-example weights (the SE gate folded
    into the projection) as base-dilated convolutions (window 24, lhs_dilate 24): only one tap in 24
    meets real input, so counting the whole window overstated such ops 24-fold (96-fold in mn40)."""
    devices, chip = target
    one = jax.sharding.SingleDeviceSharding(devices[0])
    b, h, w, i, o = 24, 63, 8, 256, 128
    x = jax.ShapeDtypeStruct((b, h, w, i), jnp.bfloat16, sharding=one)
    gate = jax.ShapeDtypeStruct((b, i), jnp.bfloat16, sharding=one)
    kernel = jax.ShapeDtypeStruct((i, o), jnp.bfloat16, sharding=one)

    def loss(x, gate, kernel):
        return jnp.einsum("bhwi,bio->bhwo", x, gate[:, :, None] * kernel).astype(jnp.float32).sum()

    text = _compile(jax.grad(loss, (0, 1, 2)), x, gate, kernel)
    assert "lhs_dilate" in text  # the form this test is about (libtpu as pinned)
    rows = hlo.breakdown(text, chip.peak_bf16_tflops * 1e12, chip.hbm_gbps * 1e9)
    # Two gradient dots (input and per-example weights); the forward product is not needed.
    assert sum(r["flops"] for r in rows) == 2 * (2 * b * h * w * i * o)


def test_breakdown_charges_a_prefetch_once_and_a_copy_twice():
    """A copy-start into on-chip memory (``S(1)``) reads its array from HBM once; one between HBM
    buffers reads and writes it. Its tuple result (destination, source, context) is not traffic."""
    array = "bf16[96,63,8,448]{3,2,1,0:T(8,128)(2,1)%s}"
    size = 96 * 63 * 8 * 448 * 2

    def charged(destination_space):
        text = "\n".join([
            "ENTRY %main () -> f32[] {",
            f"  %p = {array % ''} parameter(0)",
            (f"  %copy-start.1 = ({array % destination_space}, {array % ''}, u32[]{{:S(2)}}) "
             "copy-start(%p), backend_config={}"),
            "}"])
        return [c["bytes"] for c in hlo.op_costs(text)]

    assert charged("S(1)") == [size]
    assert charged("") == [2 * size]


def test_cost_model_probe_runs():
    """``tools/cost_model_probe.py`` as a user runs it (small batch): every probe has a cost-model
    time, and the depthwise probes see the fused kernel read less than the grouped convolution."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "tools/cost_model_probe.py", "--batch=4"], cwd=root, check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)}).stdout
    rows = {line[:40].strip(): line[40:].split() for line in out.splitlines()[1:] if line.strip()}
    assert len(rows) == 9 and all(r[1] == "ms" for r in rows.values()), out
    assert float(rows["fused depthwise, forward"][2]) < float(rows["grouped conv, forward"][2])
