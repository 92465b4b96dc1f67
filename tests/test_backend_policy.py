"""The backend policy: every CPU-vs-accelerator choice follows the target devices, not the host."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from hybrid_jax import sharding
from hybrid_jax.backend import policy
from hybrid_jax.models import build, mobilenet


def test_choices_per_platform():
    cpu, tpu, gpu = policy.Policy("cpu"), policy.Policy("tpu"), policy.Policy("gpu")
    assert (cpu.kernels(), cpu.dtype(), cpu.init_rng_impl, cpu.replica_parallel_save, cpu.eval_chunk()) == (
        "shifted", jnp.float32, "rbg", False, 1)
    for accelerator in (tpu, gpu):
        assert (accelerator.dtype(), accelerator.init_rng_impl,
                accelerator.replica_parallel_save, accelerator.eval_chunk()) == (
            jnp.bfloat16, "threefry2x32", True, 0)
    # Fused shifted-sum depthwise convs on TPU (XLA:TPU's grouped convs copied activations
    # between layouts); XLA's convolutions for cuDNN on GPU.
    assert (tpu.kernels(), gpu.kernels()) == ("fused", "native")
    # Explicit choices win everywhere.
    assert tpu.kernels("shifted") == "shifted" and cpu.dtype("bfloat16") == jnp.bfloat16
    assert tpu.eval_chunk(3) == 3
    # The STFT as a DFT matmul only on TPU (cuFFT and XLA:CPU's FFT beat the dense DFT).
    assert (cpu.stft, gpu.stft, tpu.stft) == ("fft", "fft", "matmul")
    with pytest.raises(ValueError, match="depthwise"):
        cpu.kernels("grouped")
    with pytest.raises(ValueError, match="platform"):
        policy.Policy("metal")


def test_policy_of_a_mesh_is_its_devices_platform():
    mesh = sharding.make_mesh((("data", -1), ("fsdp", 2)))
    assert policy.of_mesh(mesh) == policy.Policy("cpu") == policy.local()

    class FakeDevice:  # Device.platform as the CUDA plugin spells it
        platform = "cuda"

    assert policy.of_devices([FakeDevice()]).platform == "gpu"
    with pytest.raises(ValueError, match="one platform"):
        policy.platform_of(list(mesh.devices.flat)[:1] + [FakeDevice()])


def test_model_built_for_a_tpu_on_this_cpu_host_is_the_tpu_model():
    """The model's kernels and dtype come from the target, whatever the host's default backend."""
    config = demo.get_config()
    assert jax.default_backend() == "cpu"
    on_tpu = build.architecture(config.model, policy.Policy("tpu"))
    on_cpu = build.architecture(config.model, policy.Policy("cpu"))
    assert (on_tpu.audio.depthwise, on_tpu.audio.stft, on_tpu.dtype) == ("fused", "matmul", jnp.bfloat16)
    assert (on_cpu.audio.depthwise, on_cpu.audio.stft, on_cpu.dtype) == ("shifted", "fft", jnp.float32)
    # The same towers: only backend choices differ.
    assert on_tpu.text == on_cpu.text and on_tpu.audio.width_mult == on_cpu.audio.width_mult
    # Forced values pass through unchanged.
    config.model.audio.depthwise, config.model.dtype = "shifted", "float32"
    forced = build.architecture(config.model, policy.Policy("tpu"))
    assert (forced.audio.depthwise, forced.dtype) == ("shifted", jnp.float32)


def test_module_auto_resolves_from_local_devices():
    assert mobilenet.resolve_depthwise("auto") == "shifted"
    assert mobilenet.resolve_depthwise("auto", policy.Policy("tpu")) == "fused"
    assert mobilenet.resolve_depthwise("auto", policy.Policy("gpu")) == "native"
    assert mobilenet.resolve_depthwise("native") == "native"


def test_init_rng_follows_the_policy(monkeypatch):
    """init_state draws with the policy's RNG implementation (rbg here, on CPU)."""
    from hybrid_jax import state

    used = []
    real_key = jax.random.key
    monkeypatch.setattr(jax.random, "key", lambda seed, impl=None: used.append(impl) or real_key(seed, impl=impl))
    init = state._initializer(None, 0, policy.Policy("cpu"))
    assert used == ["rbg"] * 3 and callable(init)
    used.clear()
    state._initializer(None, 0, policy.Policy("tpu"))
    assert used == ["threefry2x32"] * 3
    assert np.asarray(jax.random.key_data(real_key(0, impl="threefry2x32"))).shape == (2,)


def test_abstract_state_is_the_initialised_state():
    """state.abstract_state (what the compile-only planner compiles) has the shapes, dtypes and
    shardings of the state init_state really makes, on an 8-device mesh with FSDP."""
    from hybrid_jax import optim, schema, state

    config = demo.get_config()
    config.model.audio.width_mult, config.model.audio.window_seconds = 0.1, 1.0
    config.model.pooling.dim, config.model.pooling.num_heads, config.model.pooling.mlp_dim = 32, 2, 64
    config.model.fusion.embed_dim = 32
    config.mesh.shape = (("data", 4), ("fsdp", 2))
    mesh = sharding.make_mesh(config.mesh.shape)
    built = build.build(config.model, policy.of_mesh(mesh))
    batch = schema.zeros(schema.TRAIN_FIELDS, 8, schema.num_samples(1.0), config.model.text.max_length)
    tx, _ = optim.make_optimizer(config.optim, steps_per_epoch=10)
    concrete, concrete_shardings = state.init_state(built, tx, batch, config, mesh)
    abstract, abstract_shardings = state.abstract_state(built.model, tx, batch, config, mesh)
    got, want = jax.tree.leaves(abstract), jax.tree.leaves(concrete)
    assert len(got) == len(want) > 50
    for a, c in zip(got, want):
        assert (a.shape, a.dtype) == (c.shape, c.dtype)
        assert a.sharding.is_equivalent_to(c.sharding, len(c.shape))
    assert jax.tree.structure(abstract_shardings) == jax.tree.structure(concrete_shardings)
