"""GradCache and naive accumulation: GradCache gives the full-batch loss and gradient, replays the
dropout/SpecAugment randomness exactly, and treats batch norm like sequential sub-batches; the
train step with sub-batches and the ring loss equals the plain step; audio remat changes nothing.

The tests with the audio tower compile the CNN's forward and backward several times (minutes on
busy CPUs), so they are marked slow; the metadata-only tests cover the same code paths fast.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_model import TINY_BERT, tiny_batch, tiny_model

from hybrid_jax import gradcache, sharding, steps
from hybrid_jax.models.retrieval import AudioTower
from hybrid_jax.state import TrainState

K = 2  # sub-batches of the 4-pair tiny batch
INITIAL = {"log_temperature": np.log(0.05), "siglip_log_scale": np.log(10.0), "siglip_bias": -10.0}
NO_DROPOUT = dataclasses.replace(TINY_BERT, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def make_model(mode, **kw):
    model = tiny_model(mode, **kw)
    # Native depthwise convs: the CPU default (shifted sums) takes twice as long to compile.
    return model.clone(audio=dataclasses.replace(model.audio, depthwise="native"))


def random_variables(model, batch, seed=0):
    """Variables drawn with NumPy from the init shapes: XLA:CPU compiles one RNG kernel per
    parameter in ``model.init``, which is slower than every test here."""
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, batch, train=False))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        if name in ("bias", "mean"):
            return np.zeros(leaf.shape, np.float32)
        if name in INITIAL:
            return np.float32(INITIAL[name])
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    return variables["params"], variables.get("batch_stats", {})


def assert_grads_close(got, want, rtol=1e-5, atol_frac=1e-6):
    """Elementwise ``rtol`` plus an atol of ``atol_frac`` times each leaf's largest entry. Float32
    rounding is relative to the terms summed, not to the result: some exact gradients are 0 (a BN
    shift followed by another train-mode BN), and a CNN kernel's gradient sums thousands of
    positions with cancellation, so a few small entries differ by ~2e-6 of the leaf's scale."""
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        b = np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol_frac * max(np.abs(b).max(), 1.0))


def run_gradcache(model, params, batch_stats, batch, rng, microbatch_size=2):  # K = 2 of 4 pairs
    return gradcache.gradcache(
        lambda p, s, b, r: steps.train_embeddings(model, p, s, b, r),
        lambda p, e, b: steps.embedding_loss(model, p, e, b),
        params, batch_stats, batch, rng, microbatch_size)


def reference(model, params, batch_stats, batch, rng):
    """The full-batch loss, differentiated by ordinary backprop through everything at once. Each
    sub-batch is embedded with its own rng (same dropout and SpecAugment masks as GradCache) and
    its own train-mode BN statistics, as GradCache does; the loss then spans the whole batch. So
    the only difference from GradCache is how the gradient is computed."""

    def loss(params):
        def body(stats, xs):
            sub, k = xs
            embeddings, stats = steps.train_embeddings(model, params, stats, sub, gradcache.sub_batch_rng(rng, k))
            return stats, embeddings

        stats, embeddings = jax.lax.scan(body, batch_stats, (gradcache.split(batch, K), jnp.arange(K)))
        return steps.embedding_loss(model, params, gradcache.merge(embeddings), batch)[0], stats

    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, grads, stats


def test_split_merge_rows():
    x = np.arange(12).reshape(6, 2)
    subs = gradcache.split({"x": x}, 3)["x"]
    assert subs.shape == (3, 2, 2)
    np.testing.assert_array_equal(subs[1], x[[1, 4]])  # sub-batch k holds rows k, k + K, ...
    np.testing.assert_array_equal(gradcache.merge(subs), x)
    with pytest.raises(ValueError):
        gradcache.num_sub_batches({"x": x}, 4)


def test_gradcache_replays_dropout_exactly():
    """With dropout, GradCache equals the reference that uses the same per-sub-batch rngs, pass 3
    recomputes pass 1's embeddings, and another step rng gives another loss (the randomness is real,
    so the replay check is not vacuous)."""
    model = make_model("metadata_only")  # BERT dropout 0.1
    batch = tiny_batch()
    params, stats = random_variables(model, batch)
    # "rbg" keys (split/fold_in as usual, bits from one XLA op) compile ~2x faster on CPU than the
    # unrolled threefry; the slow audio tests use the default threefry. Two jits, not one: XLA:CPU
    # compiles the two programs together 1.5x slower than apart.
    key = jax.random.key(3, impl="rbg")
    run = jax.jit(lambda p, rng: run_gradcache(model, p, stats, batch, rng))
    loss, _, grads, _, replay = run(params, key)
    ref_loss, ref_grads, _ = jax.jit(lambda p, rng: reference(model, p, stats, batch, rng))(params, key)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert_grads_close(grads, ref_grads)
    assert float(replay) < 1e-6  # pass 1 and pass 3 are different XLA programs: rounding only
    other_loss = run(params, jax.random.key(4, impl="rbg"))[0]
    assert abs(float(other_loss) - float(loss)) > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["late", "mid"])
def test_gradcache_equals_full_batch_gradient_with_audio(mode):
    """Audio tower with SpecAugment (and band jitter), pooling and BERT dropout, and train-mode BN.
    BN normalises with per-sub-batch statistics in both GradCache passes, so the reference embeds
    the same sub-batches (see ``reference``); the running statistics must come out as after the
    sequential sub-batches. Mid fusion checks a dict of expert embeddings with a bool leaf."""
    model = make_model(mode)
    batch = tiny_batch(clip_seconds=0.5)
    params, stats = random_variables(model, batch)
    rng = jax.random.PRNGKey(11)
    loss, _, grads, new_stats, replay = jax.jit(lambda p, s: run_gradcache(model, p, s, batch, rng))(params, stats)
    ref_loss, ref_grads, ref_stats = jax.jit(lambda p, s: reference(model, p, s, batch, rng))(params, stats)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert_grads_close(grads, ref_grads, atol_frac=1e-5)  # CNN kernels: see assert_grads_close
    assert float(replay) < 1e-5  # pass 1 and pass 3 are different XLA programs: rounding only
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new_stats, ref_stats)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new_stats, stats)
    assert max(jax.tree.leaves(moved)) > 0  # running statistics were updated


def one_step(model, options, state, batch, mesh):
    tx = optax.sgd(0.5)
    state = state.replace(opt_state=tx.init(state.params))
    state_shardings = sharding.param_shardings(state, mesh, [])
    step = steps.jit_train_step(steps.make_train_step(model, tx, lambda s: 0.5, **options), state_shardings, mesh)
    # device_put of the host copy each time: the step donates its input state.
    new_state, metrics = step(jax.device_put(state, state_shardings), jax.device_put(batch, sharding.batch_sharding(mesh)))
    return new_state.params, metrics


@pytest.mark.parametrize("loss", ["nt_xent", "siglip"])
def test_train_step_with_sub_batches_equals_plain_step(loss):
    """The jitted step on a 2-device mesh, with no randomness and no BN (metadata only, dropout 0):
    GradCache over 2 sub-batches with the ring loss gives the same update as one plain pass over the
    whole batch (every query sees all 4 items as negatives); naive accumulation (2 + 2) does not."""
    model = make_model("metadata_only", loss=loss).clone(text=NO_DROPOUT)
    batch = tiny_batch()
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 1)), jax.devices()[:2])
    params, stats = random_variables(model, batch)
    state = TrainState(step=np.int32(0), params=params, batch_stats=stats, opt_state=None,
                             rng=np.asarray(jax.random.PRNGKey(1)))
    plain_params, plain_metrics = one_step(model, {}, state, batch, mesh)
    gc_params, gc_metrics = one_step(model, dict(microbatch_size=2, loss_impl="ring", mesh=mesh), state, batch, mesh)
    np.testing.assert_allclose(gc_metrics["train/loss"], plain_metrics["train/loss"], rtol=1e-5)
    assert_grads_close(gc_params, plain_params)
    assert float(gc_metrics["train/gradcache_replay_error"]) < 1e-6
    if loss == "siglip":
        assert float(plain_metrics["train/temperature"]) == pytest.approx(0.1)  # 1 / (init scale 10)
        assert float(plain_metrics["train/logit_bias"]) == pytest.approx(-10.0)
    else:
        # Naive accumulation: each sub-batch's own loss (its queries against its 2 items only)
        # and the mean of their gradients, computed here one sub-batch at a time by plain autodiff.
        # Sub-batch k holds rows k and k + 2: item ids [0, 1] and [1, 2].
        naive_params, naive_metrics = one_step(model, dict(microbatch_size=2, accumulation="naive"), state,
                                               batch, mesh)
        rng = jax.random.PRNGKey(0)  # unused: no dropout, no audio
        sub_losses, sub_grads = zip(*[
            jax.value_and_grad(lambda p, b: steps.loss_and_updates(model, p, stats, b, rng)[0])(
                params, {k: v[[k0, k0 + 2]] for k, v in batch.items()})
            for k0 in range(2)])
        np.testing.assert_allclose(naive_metrics["train/loss"], np.mean(sub_losses), rtol=1e-6)
        assert abs(float(naive_metrics["train/loss"]) - float(plain_metrics["train/loss"])) > 1e-3
        expected = jax.tree.map(lambda p, g0, g1: p - 0.5 * (g0 + g1) / 2, params, *sub_grads)
        assert_grads_close(naive_params, expected)


def test_make_train_step_rejects_bad_options():
    model = make_model("late")
    with pytest.raises(ValueError):
        steps.make_train_step(model, optax.sgd(0.1), lambda s: 0.1, accumulation="sum")
    with pytest.raises(ValueError):
        steps.make_train_step(model, optax.sgd(0.1), lambda s: 0.1, loss_impl="ring")  # no mesh


@pytest.mark.slow
def test_audio_remat_gives_equal_gradients():
    """Rematerialising the CNN changes only what is stored for the backward pass."""
    model = make_model("none")
    batch = tiny_batch(clip_seconds=0.5)
    params, stats = random_variables(model, batch)
    params, stats = params["audio_tower"], stats["audio_tower"]
    audio, valid = jnp.asarray(batch["audio"]), jnp.asarray(batch["audio_valid"])

    def grads(remat):
        tower = AudioTower(dataclasses.replace(model.audio, remat=remat))

        def loss(params):
            (tokens, _), updates = tower.apply(
                {"params": params, "batch_stats": stats}, audio, valid, train=True,
                rngs={"augment": jax.random.PRNGKey(2)}, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(tokens)), updates

        return jax.jit(jax.grad(loss, has_aux=True))(params)

    (g0, s0), (g1, s1) = grads(False), grads(True)
    assert_grads_close(g1, g0, atol_frac=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), s1, s0)
