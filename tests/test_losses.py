"""Golden test of symmetric NT-Xent with duplicate positives, computed by hand."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_jax.losses import nt_xent, positives_from_ids


def _log_softmax(row):
    m = max(row)
    return [v - m - math.log(sum(math.exp(u - m) for u in row)) for v in row]


def test_nt_xent_hand_computed_with_duplicate_positives():
    # Three pairs; queries 0 and 1 are two captions of the same clip (item id 7).
    sim = [[0.9, 0.5, 0.1], [0.6, 0.8, 0.0], [0.2, 0.1, 0.7]]
    ids = [7, 7, 3]
    tau = 0.5
    logits = [[v / tau for v in row] for row in sim]
    rows = [_log_softmax(r) for r in logits]
    cols_t = [_log_softmax([logits[i][j] for i in range(3)]) for j in range(3)]  # per column
    pos = [(i, j) for i in range(3) for j in range(3) if ids[i] == ids[j]]
    assert len(pos) == 5  # (0,0) (0,1) (1,0) (1,1) (2,2)
    q2i = -sum(rows[i][j] for i, j in pos) / len(pos)
    i2q = -sum(cols_t[j][i] for i, j in pos) / len(pos)
    expected = 0.5 * (q2i + i2q)

    positives = positives_from_ids(jnp.array(ids), jnp.array(ids))
    got = nt_xent(jnp.array(sim), positives, tau)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_nt_xent_without_duplicates_is_cross_entropy_on_diagonal():
    rng = np.random.default_rng(1)
    sim = rng.uniform(-1, 1, (5, 5))
    positives = jnp.eye(5, dtype=bool)
    logits = sim / 0.05
    ce_rows = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(1)))
    ce_cols = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(0)))
    got = nt_xent(jnp.array(sim), positives, 0.05)
    assert float(got) == pytest.approx(0.5 * (ce_rows + ce_cols), rel=1e-5)
