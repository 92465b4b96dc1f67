"""Mel front end: parity with EfficientAT's AugmentMelSTFT, frame counts, jitter and SpecAugment."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybrid_jax.models import frontend

MASKED = np.float32(frontend.NORM_SHIFT) / np.float32(frontend.NORM_SCALE)  # a masked bin, normalised


@pytest.fixture(scope="module")
def arrays(fixtures_dir):
    return dict(np.load(fixtures_dir / "efficientat_mn04" / "arrays.npz"))


def test_mel_matches_pytorch(arrays):
    mel = jax.jit(frontend.log_mel)(arrays["waveform"])
    assert mel.shape == arrays["mel"].shape == (2, 128, 310) and mel.dtype == jnp.float32
    np.testing.assert_allclose(mel, arrays["mel"], rtol=0, atol=2e-4)


def test_stft_as_dft_matmul_matches_pytorch_and_the_fft(arrays):
    """The TPU policy's STFT (one windowed DFT matmul) gives PyTorch's mel and the FFT's power."""
    mel = jax.jit(functools.partial(frontend.log_mel, stft="matmul"))(arrays["waveform"])
    np.testing.assert_allclose(mel, arrays["mel"], rtol=0, atol=2e-4)
    config = frontend.MelConfig()
    waveform = jnp.asarray(np.random.default_rng(4).normal(0, 0.3, (2, 32000 * 3 + 123)), jnp.float32)
    by_fft, by_matmul = (np.asarray(frontend.power_spectrogram(waveform, config, s)) for s in ("fft", "matmul"))
    assert by_fft.shape == by_matmul.shape == (2, 301, 513)
    np.testing.assert_allclose(by_matmul, by_fft, rtol=1e-4, atol=1e-5 * by_fft.max())
    with pytest.raises(ValueError, match="stft"):
        frontend.power_spectrogram(waveform, config, "dct")


@pytest.mark.parametrize("num_samples,win,hop", [
    (641, 800, 320), (1000, 800, 320), (32001, 800, 320), (5000, 640, 320), (5000, 800, 300),
    (4000, 1024, 256), (3000, 200, 320),  # a window shorter than the hop
])
def test_matmul_frames_equal_the_ffts_at_any_length(num_samples, win, hop):
    """The matmul path cuts its frames from hop-sized blocks (no gather): every length, window
    and hop give the FFT path's power, down to the shortest waveform reflect padding allows."""
    config = frontend.MelConfig(win_length=win, hop_length=hop)
    waveform = jnp.asarray(np.random.default_rng(num_samples).normal(0, 0.3, (2, num_samples)), jnp.float32)
    by_fft, by_matmul = (np.asarray(frontend.power_spectrogram(waveform, config, s)) for s in ("fft", "matmul"))
    assert by_fft.shape == by_matmul.shape == (2, config.num_frames(num_samples), 513)
    np.testing.assert_allclose(by_matmul, by_fft, rtol=1e-4, atol=1e-5 * by_fft.max())


def test_kaldi_mel_bank_matches_torchaudio(arrays):
    bank = np.asarray(frontend.mel_filterbank(frontend.MelConfig()))
    np.testing.assert_allclose(bank, arrays["mel_basis"], rtol=0, atol=5e-5)
    assert not bank[:, -1].any()  # Nyquist column


def test_defaults_are_the_released_front_end():
    config = frontend.MelConfig()
    assert config.fmax_hz == 15000.0 and config.fmin == 0.0
    assert frontend.MelConfig(fmax=16000).fmax_hz == 16000.0
    window = frontend.hann_window(800)
    assert window[0] == 0.0 and window[-1] == 0.0 and window.argmax() in (399, 400)  # symmetric


@pytest.mark.parametrize("num_samples,frames", [(320000, 1000), (99200, 310), (233600, 730), (1000, 4), (641, 3)])
def test_frame_count(num_samples, frames):
    config = frontend.MelConfig()
    shape = jax.eval_shape(functools.partial(frontend.log_mel, config=config),
                           jax.ShapeDtypeStruct((1, num_samples), jnp.float32)).shape
    assert shape == (1, 128, frames) and config.num_frames(num_samples) == frames


def test_too_short_for_reflect_padding():
    with pytest.raises(ValueError, match="too short"):
        frontend.log_mel(np.zeros((1, 400), np.float32))


def _short(arrays, seconds=0.5):
    return jnp.asarray(arrays["waveform"][:, : int(seconds * 32000)])


def test_band_jitter_is_random_per_batch_and_deterministic(arrays):
    wave = _short(arrays)
    train = jax.jit(frontend.log_mel)
    eval_mel = np.asarray(train(wave))
    first = np.asarray(train(wave, rng=jax.random.key(1)))
    np.testing.assert_array_equal(first, train(wave, rng=jax.random.key(1)))
    assert not np.allclose(first, eval_mel, atol=1e-3)
    others = [np.asarray(train(wave, rng=jax.random.key(seed))) for seed in (2, 3)]
    assert not np.allclose(others[0], others[1], atol=1e-3)


def test_band_jitter_stays_in_efficientat_range():
    config = frontend.MelConfig()
    # A 14 kHz .. 16 kHz upper edge moves the top filter's centre by less than the whole range.
    low = np.asarray(frontend.mel_filterbank(config, 0.0, 14001.0))
    high = np.asarray(frontend.mel_filterbank(config, 9.0, 16000.0))
    assert low[:, -1].sum() == 0 and high[:, -1].sum() == 0
    assert low[-1].nonzero()[0].max() < high[-1].nonzero()[0].max()


def test_specaugment_masks_only_one_band_each(arrays):
    wave = jnp.asarray(np.tile(arrays["waveform"][:, :16000], (2, 1)))  # B = 4
    masked_config = frontend.MelConfig(freq_mask_bins=30, time_mask_frames=20)
    rng = jax.random.key(7)
    log_mel = jax.jit(frontend.log_mel, static_argnames="config")
    plain = np.asarray(log_mel(wave, frontend.MelConfig(), rng=rng))
    masked = np.asarray(log_mel(wave, masked_config, rng=rng))
    changed = masked != plain
    assert changed.any()
    bands = []
    for example in range(4):
        rows = np.flatnonzero(changed[example].all(axis=1))
        cols = np.flatnonzero(changed[example].all(axis=0))
        expected = np.zeros_like(changed[example])
        expected[rows, :] = True
        expected[:, cols] = True
        # Everything that changed is one whole frequency band plus one whole time band, set to 0.
        np.testing.assert_array_equal(changed[example], expected)
        np.testing.assert_allclose(masked[example][expected], MASKED, rtol=1e-6)
        assert len(rows) < 30 and len(cols) < 20
        if len(rows):
            assert rows.max() - rows.min() + 1 == len(rows)
        bands.append((tuple(rows), tuple(cols)))
    assert len(set(bands)) > 1  # independent per example
