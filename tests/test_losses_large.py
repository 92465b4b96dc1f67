"""Large-batch losses: ring NT-Xent / SigLIP under shard_map equal the plain losses (values and
gradients) on the 8-device mesh without building the global logits; SigLIP golden value; dispatch."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_model import TINY_BERT

from hybrid_jax import losses, sharding
from hybrid_jax.models import fusion
from hybrid_jax.models.retrieval import AudioSettings, RetrievalModel

B, D = 16, 6
IDS = np.array([0, 1, 1, 2, 3, 4, 4, 4, 5, 6, 7, 8, 9, 9, 10, 11], np.int32)  # duplicates across devices


@pytest.fixture(scope="module")
def mesh():
    # Both batch axes in use, so the ring runs over the flattened ("data", "fsdp") index.
    return sharding.make_mesh((("data", 4), ("fsdp", 2)))


def embeddings(seed=0):
    rng = np.random.default_rng(seed)
    q = fusion.l2_normalize(jnp.asarray(rng.standard_normal((B, D)), jnp.float32))
    x = fusion.l2_normalize(jnp.asarray(rng.standard_normal((B, D)), jnp.float32))
    return q, x


def assert_trees_close(a, b, rtol=1e-5):
    """rtol per element, plus rtol of each leaf's largest entry as atol: two float32 orders of
    summation differ by ~1e-6 of the gradient's scale (tau = 0.05 makes logits up to 20)."""
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        v = np.asarray(v)
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * np.abs(v).max())


def test_siglip_hand_computed():
    sim = np.array([[0.9, 0.5, 0.1], [0.6, 0.8, 0.0], [0.2, 0.1, 0.7]])
    ids = [7, 7, 3]  # queries 0 and 1 share a clip: (0,1) and (1,0) are positives too
    scale, bias = 10.0, -10.0
    total = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if ids[i] == ids[j] else -1.0
            total += math.log(1.0 / (1.0 + math.exp(-z * (scale * sim[i][j] + bias))))
    expected = -total / 3
    got = losses.siglip(jnp.asarray(sim), losses.positives_from_ids(jnp.array(ids), jnp.array(ids)), scale, bias)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_ring_nt_xent_equals_nt_xent_values_and_gradients(mesh):
    q, x = embeddings()
    ids = jnp.asarray(IDS)

    def plain(q, x, tau):
        return losses.nt_xent(q @ x.T, losses.positives_from_ids(ids, ids), tau)

    def ring(q, x, tau):
        return losses.ring_nt_xent(q, x, ids, ids, tau, mesh)

    want = jax.value_and_grad(plain, argnums=(0, 1, 2))(q, x, 0.05)
    got = jax.jit(jax.value_and_grad(ring, argnums=(0, 1, 2)))(q, x, 0.05)
    assert_trees_close(got, want)


def test_ring_siglip_equals_siglip_values_and_gradients(mesh):
    q, x = embeddings(1)
    ids = jnp.asarray(IDS)

    def plain(q, x, scale, bias):
        return losses.siglip(q @ x.T, losses.positives_from_ids(ids, ids), scale, bias)

    def ring(q, x, scale, bias):
        return losses.ring_siglip(q, x, ids, ids, scale, bias, mesh)

    args = (q, x, 10.0, -3.0)  # a bias that keeps positives and negatives both informative
    want = jax.value_and_grad(plain, argnums=(0, 1, 2, 3))(*args)
    got = jax.jit(jax.value_and_grad(ring, argnums=(0, 1, 2, 3)))(*args)
    assert_trees_close(got, want)


def test_ring_never_builds_the_global_logits(mesh):
    q, x = embeddings()
    ids = jnp.asarray(IDS)
    params = {"temperature": jnp.float32(0.05)}

    def loss_grad(impl):
        fn = lambda q, x: losses.contrastive_loss(  # noqa: E731
            {"embedding": q}, {"embedding": x}, ids, ids, params, impl=impl, mesh=mesh)
        return jax.jit(jax.grad(fn, argnums=(0, 1))).lower(q, x).compile().as_text()

    square = f"f32[{B},{B}]"
    assert square in loss_grad("plain")  # the check can see a [B, B] buffer when there is one
    assert square not in loss_grad("ring")


def test_contrastive_loss_dispatch_and_mid_fusion_fallback(mesh):
    q, x = embeddings(2)
    ids = jnp.asarray(IDS)
    single = ({"embedding": q}, {"embedding": x})
    tau = {"temperature": jnp.float32(0.07)}
    plain = losses.contrastive_loss(*single, ids, ids, tau)
    ring = jax.jit(lambda *e: losses.contrastive_loss(*e, ids, ids, tau, impl="ring", mesh=mesh))(*single)
    np.testing.assert_allclose(ring, plain, rtol=1e-5)
    # Mid fusion mixes two experts per query: not a single dot product, so "ring" uses the plain loss.
    mixture = jax.nn.softmax(jnp.asarray(np.random.default_rng(3).standard_normal((B, 2)), jnp.float32))
    queries = {"audio_query": q, "meta_query": x[::-1], "mixture": mixture}
    items = {"audio": x, "meta": q[::-1], "meta_present": jnp.asarray(IDS % 3 != 0)}
    want = losses.nt_xent(fusion.similarity(queries, items), losses.positives_from_ids(ids, ids), 0.07)
    got = losses.contrastive_loss(queries, items, ids, ids, tau, impl="ring", mesh=mesh)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError):
        losses.contrastive_loss(*single, ids, ids, tau, impl="ring")  # no mesh
    with pytest.raises(ValueError):
        losses.contrastive_loss(*single, ids, ids, tau, loss="infonce")


def test_siglip_parameters_live_in_the_model_with_paper_init():
    model = RetrievalModel(audio=AudioSettings(width_mult=0.1), text=TINY_BERT, fusion="late", loss="siglip")
    # logit_params touches only the loss scalars, so this init builds no tower.
    params = model.init(jax.random.PRNGKey(0), method=RetrievalModel.logit_params)["params"]
    assert float(params["siglip_log_scale"]) == pytest.approx(math.log(10.0))
    assert float(params["siglip_bias"]) == pytest.approx(-10.0)
    scalars = model.apply({"params": params}, method=RetrievalModel.logit_params)
    assert float(scalars["scale"]) == pytest.approx(10.0, rel=1e-6)
    # Both are learned: the SigLIP loss has a gradient for each.
    grads = jax.grad(lambda p: losses.siglip(jnp.eye(3) * 0.5, jnp.eye(3, dtype=bool), **model.apply(
        {"params": p}, method=RetrievalModel.logit_params)))(params)
    assert float(grads["siglip_log_scale"]) != 0.0 and float(grads["siglip_bias"]) != 0.0
    assert "siglip_bias" not in RetrievalModel(audio=AudioSettings(), text=TINY_BERT).init(
        jax.random.PRNGKey(0), method=RetrievalModel.logit_params)["params"]
