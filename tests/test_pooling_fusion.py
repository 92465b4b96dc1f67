"""Pooling transformer masking and the fusion modes' similarity rules."""
import jax
import jax.numpy as jnp
import numpy as np

from hybrid_jax.models import fusion
from hybrid_jax.models.pooling import PoolingTransformer


def test_padding_tokens_do_not_change_the_output():
    pool = PoolingTransformer(dim=32, num_layers=2, num_heads=4, mlp_dim=64, dropout=0.1, max_len=16)
    rng = jax.random.PRNGKey(0)
    tokens = jax.random.normal(rng, (2, 10, 24))
    mask = jnp.array([[True] * 6 + [False] * 4, [True] * 10])
    variables = pool.init(rng, tokens, mask, train=False)
    out, _ = pool.apply(variables, tokens, mask, train=False)
    garbage = tokens.at[0, 6:].set(1e3 * jax.random.normal(jax.random.PRNGKey(1), (4, 24)))
    out2, _ = pool.apply(variables, garbage, mask, train=False)
    np.testing.assert_allclose(out[0], out2[0], atol=1e-5)
    np.testing.assert_allclose(out[1], out2[1], atol=1e-6)
    # Positions matter, and the real tokens do change the output.
    out3, _ = pool.apply(variables, tokens.at[0, 2].add(1.0), mask, train=False)
    assert np.abs(out3[0] - out[0]).max() > 1e-4


def test_masked_extra_token_is_ignored_and_real_one_is_used():
    pool = PoolingTransformer(dim=16, num_layers=1, num_heads=2, mlp_dim=32, dropout=0.0, max_len=8)
    rng = jax.random.PRNGKey(0)
    tokens = jax.random.normal(rng, (1, 5, 8))
    mask = jnp.ones((1, 5), bool)
    extra = jax.random.normal(jax.random.PRNGKey(2), (1, 1, 16))
    variables = pool.init(rng, tokens, mask, extra, jnp.array([[True]]), train=False)
    off_a, _ = pool.apply(variables, tokens, mask, extra, jnp.array([[False]]), train=False)
    off_b, _ = pool.apply(variables, tokens, mask, 5 * extra, jnp.array([[False]]), train=False)
    on, _ = pool.apply(variables, tokens, mask, extra, jnp.array([[True]]), train=False)
    np.testing.assert_allclose(off_a, off_b, atol=1e-6)
    assert np.abs(on - off_a).max() > 1e-4


def test_late_fusion_and_missing_metadata():
    a = jnp.array([[3.0, 0.0], [0.0, 2.0]])
    m = jnp.array([[0.0, 3.0], [5.0, 5.0]])
    fused = fusion.late_fusion(a, m, jnp.array([True, False]))
    np.testing.assert_allclose(fused[0], np.array([1, 1]) / np.sqrt(2), atol=1e-6)
    np.testing.assert_allclose(fused[1], [0.0, 1.0], atol=1e-6)  # audio only
    assert np.isfinite(fusion.l2_normalize(jnp.zeros((1, 4)))).all()


def test_mid_fusion_similarity_mixes_experts_and_falls_back_to_audio():
    """Item 0 has metadata: w_a <q_a, i_a> + w_m <q_m, i_m>. Item 1 has none: its audio similarity
    alone, with weight 1 (not w_a, not the mixture with a zero metadata term). Both items have a
    non-zero audio similarity, so each candidate rule gives a different number."""
    q = {
        "audio_query": jnp.array([[0.6, 0.8], [1.0, 0.0]]),
        "meta_query": jnp.array([[0.0, 1.0], [1.0, 0.0]]),
        "mixture": jnp.array([[0.25, 0.75], [0.5, 0.5]]),
    }
    items = {
        "audio": jnp.array([[1.0, 0.0], [0.8, 0.6]]),
        "meta": jnp.array([[0.6, 0.8], [0.0, 1.0]]),  # item 1's vector must not be used
        "meta_present": jnp.array([True, False]),
    }
    s = fusion.similarity(q, items)
    expected = [[0.25 * 0.6 + 0.75 * 0.8, 0.96],  # 0.96 = <(0.6, 0.8), (0.8, 0.6)>, weight 1
                [0.5 * 1.0 + 0.5 * 0.6, 0.8]]
    np.testing.assert_allclose(s, expected, atol=1e-6)
