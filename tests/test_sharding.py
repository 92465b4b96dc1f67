"""Sharding: one global batch gives the same step on 1 device, on data (8, 1) and on data x fsdp
(4, 2) meshes, and a checkpoint written on one mesh restores bit-identically onto another."""
import dataclasses

import jax
import numpy as np
import optax
import pytest
from test_model import tiny_model

from configs import base
from hybrid_jax import sharding, steps
from hybrid_jax.checkpointing import Checkpoints
from hybrid_jax.state import TrainState

B, L, SR = 8, 8, 32000
LR = 1e-4
RULES = [tuple(rule) for rule in base.get_config().mesh.rules]  # the real FSDP rules


def global_batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ids = lambda: rng.integers(1, 50, (B, L)).astype(np.int32)  # noqa: E731
    ones, zeros = np.ones((B, L), np.int32), np.zeros((B, L), np.int32)
    return {
        "audio": (rng.standard_normal((B, SR // 2)) * 3000).astype(np.int16),
        "audio_valid": rng.uniform(0.3, 1.0, B).astype(np.float32),
        "query_ids": ids(), "query_mask": ones, "query_types": zeros,
        "meta_ids": ids(), "meta_mask": ones, "meta_types": zeros,
        "meta_present": rng.random(B) < 0.7,
        "item_id": np.array([0, 1, 1, 2, 3, 4, 5, 5], np.int32),
    }


# XLA:CPU spends most of a compile in LLVM's optimisation of the MobileNet loops (an mn0.1 init:
# ~130 s at the default level on the loaded 2-core machine, ~17 s at 0); numerics are compared
# between meshes compiled alike, so the tests compile at level 0.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def host_state():
    """One initial train state on the host (tiny late-fusion model, SGD + momentum); meshes get copies."""
    # The native grouped depthwise conv: ~2/3 of the shifted-sum's compile time, and the sharding
    # question (a batch and conv channels split over devices) is the same for both.
    model = tiny_model("late")
    model = model.clone(audio=dataclasses.replace(model.audio, depthwise="native"))
    key = jax.random.key(5, impl="rbg")  # threefry init kernels compile far slower on XLA:CPU
    init = jax.jit(lambda: model.init({"params": key}, global_batch(0), train=False),
                   compiler_options=FAST_COMPILE)
    variables = jax.device_get(init())
    # SGD with momentum, not Adam: some gradients are zero in theory (a BN bias feeding straight
    # into another train-mode BN, attention key biases) and reduction-order noise in practice;
    # Adam normalises that noise to +-lr. Float32 reductions split differently over devices give
    # per-leaf gradients that agree to ~3e-5, and this freshly initialised tiny model amplifies
    # relative parameter differences ~70x into the next gradient (gradient norm ~250): a small
    # step keeps the second step's loss within 1e-5. The momenta are still a parameter-shaped
    # optimizer state for the rules to shard.
    tx = optax.sgd(LR, momentum=0.9)
    params, rng = variables["params"], np.asarray(jax.random.PRNGKey(17))
    state = TrainState(step=np.int32(0), params=params, batch_stats=variables["batch_stats"],
                             opt_state=jax.device_get(tx.init(params)), rng=rng)
    return model, tx, state


def mesh_of(shape, count):
    return sharding.make_mesh(shape, jax.devices()[:count])


def state_on(mesh, state):
    """The state placed by the config's rules on ``mesh`` -> (state, its shardings)."""
    shardings = sharding.param_shardings(state, mesh, RULES)  # step, rng: unmatched, replicated
    return jax.device_put(state, shardings), shardings


def run_steps(host_state, mesh, num_steps=2):
    """``num_steps`` jitted steps (shardings + donation from steps.jit_train_step) on ``mesh``."""
    model, tx, state = host_state
    state, state_shardings = state_on(mesh, state)
    step = steps.jit_train_step(steps.make_train_step(model, tx, lambda s: LR), state_shardings, mesh)
    losses, compiled = [], None
    for i in range(num_steps):
        batch = jax.device_put(global_batch(i + 1), sharding.batch_sharding(mesh))
        compiled = compiled or step.lower(state, batch).compile(FAST_COMPILE)
        state, metrics = compiled(state, batch)
        losses.append([float(metrics["train/loss"]), float(metrics["train/grad_norm"])])
    return np.array(losses), state, state_shardings


MESHES = {"1 device": ((("data", 1), ("fsdp", 1)), 1), "data (8, 1)": ((("data", 8), ("fsdp", 1)), 8),
          "data x fsdp (4, 2)": ((("data", 4), ("fsdp", 2)), 8)}


@pytest.fixture(scope="module")
def runs(host_state):
    """Two steps on every mesh, compiled once and shared by the tests below."""
    return {name: run_steps(host_state, mesh_of(*mesh)) for name, mesh in MESHES.items()}


def spec_of(tree, *path):
    for key in path:
        tree = tree[key]
    return tuple(tree.spec)


def test_rules_shard_the_large_kernels_of_the_tiny_model():
    mesh = mesh_of((("data", 4), ("fsdp", 2)), 8)
    model, example = tiny_model("late"), global_batch(0)
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, example, train=False))
    params = sharding.param_shardings(shapes, mesh, RULES)["params"]
    layer = params["bert"]["encoder"]["layer_0"]
    assert spec_of(layer, "intermediate", "dense", "kernel") == ("fsdp",)
    assert spec_of(params, "bert", "embeddings", "word_embeddings", "embedding") == (None, "fsdp")
    assert spec_of(params, "pool", "layer_0", "attn", "out", "kernel") == (None, None, "fsdp")
    mobilenet = params["audio_tower"]["mobilenet"]
    assert spec_of(mobilenet, "features_1", "block_1", "conv", "kernel") == (None, None, "fsdp", None)
    depthwise = spec_of(mobilenet, "features_1", "block_0", "conv", "kernel")  # [3, 3, 1, 8]
    assert depthwise == (None, None, None, None)
    assert spec_of(layer, "intermediate", "dense", "bias") == ()  # unmatched: replicated
    # A dimension the axis does not divide falls back to replication (27 input channels).
    odd = {"mobilenet": {"features_1": {"conv": {"kernel": jax.ShapeDtypeStruct((1, 1, 27, 8), np.float32)}}}}
    odd = sharding.param_shardings(odd, mesh, RULES)["mobilenet"]["features_1"]["conv"]["kernel"]
    assert tuple(odd.spec) == (None, None, None, None)


def assert_same_state(state, ref_state, grad_norm: float, name: str) -> None:
    """Host TrainStates after the same steps on two meshes (or process counts) agree: parameters
    (relative error <= 1e-5 overall, elementwise rtol 1e-5 / atol 1e-7), BN statistics, and the
    momenta, i.e. every leaf's gradients (<= 1e-4 relative, plus a floor of 1e-7 x the gradient
    norm for the gradients that are zero in theory and noise in practice)."""
    paths = [sharding._path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(ref_state.params)[0]]
    got, want = jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)
    total = np.sqrt(sum(np.sum((g - w) ** 2) for g, w in zip(got, want)) / sum(np.sum(w ** 2) for w in want))
    assert total <= 1e-5, f"{name}: relative error of the updated parameters {total:.2e}"
    for path, g, w in zip(paths, got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7, err_msg=f"{name} {path}")
    for g, w in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(ref_state.batch_stats)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=f"{name} batch stats")
    for path, g, w in zip(paths, jax.tree.leaves(state.opt_state), jax.tree.leaves(ref_state.opt_state)):
        err = np.linalg.norm(g - w)
        assert err <= 1e-4 * np.linalg.norm(w) + 1e-7 * grad_norm, f"{name} momentum of {path}: {err:.3g}"


@pytest.mark.slow  # ~2 min on 2 loaded cores, nearly all compilation (three meshes)
def test_same_step_on_one_device_and_on_sharded_meshes(runs):
    ref_loss, ref_state, _ = runs["1 device"]
    ref_state = jax.device_get(ref_state)
    for name in ("data (8, 1)", "data x fsdp (4, 2)"):
        loss, state, shardings = runs[name]
        if "fsdp" in name:  # the rules really split parameters and momenta
            assert sum("fsdp" in s.spec for s in jax.tree.leaves(shardings.params)) > 20
            assert any("fsdp" in s.spec for s in jax.tree.leaves(shardings.opt_state))
            assert any("fsdp" in p.sharding.spec for p in jax.tree.leaves(state.params))
        np.testing.assert_allclose(loss[:, 0], ref_loss[:, 0], rtol=1e-5)  # the loss of each step
        np.testing.assert_allclose(loss[:, 1], ref_loss[:, 1], rtol=1e-4)  # the gradient norm
        assert_same_state(jax.device_get(state), ref_state, ref_loss[-1, 1], name)


@pytest.mark.slow  # shares the compiled runs above
def test_checkpoint_restores_bit_identically_on_other_meshes(runs, host_state, tmp_path):
    # Saved after two steps on (8, 1), so the momenta and the step counter are not trivial.
    _, state, _ = runs["data (8, 1)"]
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save_latest(2, state, {"epoch": 0.5})
    checkpoints.wait()
    expected = jax.device_get(state)
    for name in ("data x fsdp (4, 2)", "1 device"):
        _, target_shardings = state_on(mesh_of(*MESHES[name]), host_state[2])
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=s),
                              host_state[2], target_shardings)
        restored, meta = checkpoints.restore("latest", target)
        assert meta == {"epoch": 0.5} and int(restored.step) == 2
        for got, want, where in zip(jax.tree.leaves(restored), jax.tree.leaves(expected),
                                    jax.tree.leaves(target_shardings)):
            assert got.sharding == where  # landed in the new mesh's layout
            np.testing.assert_array_equal(np.asarray(got), want)
    checkpoints.close()
