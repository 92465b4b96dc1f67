"""Golden tests of the retrieval metrics on hand-worked rankings."""
import numpy as np
import pytest

from hybrid_jax.metrics import retrieval_metrics, target_ranks, top_k


def test_hand_worked_ranks_and_metrics():
    similarity = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # target 0 -> rank 1
            [0.9, 0.1, 0.2, 0.3],  # target 3 -> rank 2
            [0.5, 0.5, 0.5, 0.5],  # all tied, target 2 -> rank 3 (stable: lower index first)
            [0.1, 0.2, 0.3, 0.4],  # target 0 -> rank 4
        ]
    )
    target = np.array([0, 3, 2, 0])
    np.testing.assert_array_equal(target_ranks(similarity, target), [1, 2, 3, 4])
    m = retrieval_metrics(similarity, target)
    assert m["mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert m["R@1"] == pytest.approx(0.25)
    assert m["R@5"] == pytest.approx(1.0)
    assert m["R@10"] == pytest.approx(1.0)


def test_rank_beyond_ten_scores_zero():
    n = 20
    similarity = np.tile(-np.arange(n, dtype=float), (2, 1))  # item 0 best ... item 19 worst
    target = np.array([10, 9])  # ranks 11 and 10
    np.testing.assert_array_equal(target_ranks(similarity, target), [11, 10])
    m = retrieval_metrics(similarity, target)
    assert m["mAP@10"] == pytest.approx((0 + 1 / 10) / 2)
    assert m["R@10"] == pytest.approx(0.5)
    assert m["R@5"] == 0.0


def test_ties_follow_stable_order_like_top_k():
    rng = np.random.default_rng(0)
    similarity = rng.integers(0, 3, size=(30, 12)).astype(float)  # many ties
    target = rng.integers(0, 12, size=30)
    ranks = target_ranks(similarity, target)
    order = top_k(similarity, k=12)
    expected = np.array([list(order[q]).index(target[q]) + 1 for q in range(30)])
    np.testing.assert_array_equal(ranks, expected)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="target"):
        retrieval_metrics(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 0.0]]), np.array([0]))
