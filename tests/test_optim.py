"""The learning-rate schedule at the recipe's landmarks (epochs 0, 1, 20, 25)."""
import pytest

from hybrid_jax.optim import learning_rate_schedule


@pytest.mark.parametrize("steps_per_epoch", [2, 8, 100])
def test_schedule_landmarks(steps_per_epoch):
    sched = learning_rate_schedule(
        steps_per_epoch=steps_per_epoch, peak_lr=2e-5, final_lr=1e-7, warmup_epochs=1, decay_end_epoch=20
    )
    at = lambda epoch: float(sched(int(epoch * steps_per_epoch)))  # noqa: E731
    assert at(0) == pytest.approx(0.0, abs=1e-12)
    assert at(1) == pytest.approx(2e-5, rel=1e-5)
    assert at(20) == pytest.approx(1e-7, rel=1e-4)
    assert at(25) == pytest.approx(1e-7, rel=1e-4)
    # Half way through the cosine the rate is the mean of peak and final.
    assert at(10.5) == pytest.approx(0.5 * (2e-5 + 1e-7), rel=1e-3)
    if steps_per_epoch > 1:  # warm-up is linear and updated every step
        assert float(sched(1)) == pytest.approx(2e-5 / steps_per_epoch, rel=1e-5)
