"""Signal primitives for the synthetic sounds: filters, envelopes, event placement, noise."""

import functools

import numpy as np
from scipy import fft as sp_fft
from scipy import signal


def time_axis(n: int, sr: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32) / np.float32(sr)


@functools.lru_cache(maxsize=512)
def _butter(kind: str, freq: float | tuple[float, float], sr: int, order: int) -> np.ndarray:
    # Cached: many events reuse the same (rounded) filter and designing one costs ~0.1 ms.
    return signal.butter(order, freq, btype=kind, fs=sr, output="sos")


def _grid(f: float) -> float:
    """Snaps a cut-off to a 1 % geometric grid so random cut-offs hit the design cache."""
    return float(np.round(np.exp(np.round(np.log(f) * 100) / 100), 1))


def filt(x: np.ndarray, kind: str, freq, sr: int, order: int = 2) -> np.ndarray:
    freq = tuple(_grid(f) for f in freq) if isinstance(freq, tuple) else _grid(freq)
    return signal.sosfilt(_butter(kind, freq, sr, order), x).astype(np.float32)


def resonate(x: np.ndarray, freq: float, q: float, sr: int) -> np.ndarray:
    b, a = signal.iirpeak(min(freq, 0.45 * sr), q, fs=sr)
    return signal.lfilter(b, a, x).astype(np.float32)


def phase(f: np.ndarray, sr: int) -> np.ndarray:
    """Wrapped float32 phase of a frequency track (Hz) [n]; accumulated in float64 for accuracy."""
    return np.mod(np.cumsum(f, dtype=np.float64) * (2 * np.pi / sr), 2 * np.pi).astype(np.float32)


def noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n, dtype=np.float32)


def smooth(rng: np.random.Generator, n: int, sr: int, rate_hz: float) -> np.ndarray:
    """Slow random curve in [-1, 1] with about `rate_hz` turning points per second."""
    knots = max(2, int(np.ceil(n / sr * rate_hz)) + 2)
    values = rng.uniform(-1.0, 1.0, knots)
    x = np.linspace(0.0, knots - 1.0, n, dtype=np.float32)
    return np.interp(x, np.arange(knots), values).astype(np.float32)


def place(out: np.ndarray, template: np.ndarray, start: int, gain: float = 1.0) -> None:
    """Adds `gain * template` into `out` at sample `start`, cut at the end of `out`."""
    if start >= len(out):
        return
    m = min(len(template), len(out) - start)
    out[start : start + m] += np.float32(gain) * template[:m]


def onsets(rng: np.random.Generator, dur_s: float, period_s: float, jitter: float) -> list[float]:
    """Onsets (s) of a roughly periodic sequence; starts at once and always has ≥ 2 hits."""
    times, t = [], rng.uniform(0.0, 0.05)
    while t < dur_s - 0.05 or len(times) < 2:
        times.append(t)
        t += period_s * (1.0 + jitter * rng.uniform(-1.0, 1.0))
    return times


def damped(freqs, taus, amps, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of exponentially damped sinusoids (struck resonances), [n]."""
    t = time_axis(n, sr)[None, :]
    freqs, taus, amps = (np.asarray(v, np.float32)[:, None] for v in (freqs, taus, amps))
    phase = rng.uniform(0, 2 * np.pi, (len(freqs), 1)).astype(np.float32)
    return (amps * np.exp(-t / taus) * np.sin(2 * np.pi * freqs * t + phase)).sum(0)


def burst(rng, n: int, sr: int, tau: float, kind: str, freq, attack_s: float = 0.001):
    """Filtered noise burst with fast attack and exponential decay, [n]."""
    t = time_axis(n, sr)
    env = (1.0 - np.exp(-t / attack_s)) * np.exp(-t / tau)
    return filt(noise(rng, n), kind, freq, sr) * env


_MAX_PEAK = 4.0


def normalise(x: np.ndarray, sr: int) -> np.ndarray:
    """Scales so the sounding level (95th percentile of 50 ms frame RMS) is 1; fades the edges.

    A percentile rather than the overall RMS so a sparse sequence (three knocks) and a continuous
    drone at the same gain sound about equally loud, which keeps "loudly"/"faintly" honest.
    """
    x = x.astype(np.float32)
    frame = max(1, int(0.05 * sr))
    m = len(x) // frame
    if m >= 1:
        rms = np.sqrt((x[: m * frame].reshape(m, frame) ** 2).mean(1))
        level = float(np.percentile(rms, 95))
    else:
        level = float(np.sqrt((x**2).mean()))
    x = x / max(level, 1e-8)
    peak = float(np.abs(x).max(initial=0.0))
    if peak > _MAX_PEAK:  # very impulsive sounds (rain drops, key clicks) would dominate the mix
        x *= _MAX_PEAK / peak
    fade = min(len(x) // 2, int(0.005 * sr))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
    return x


def background(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Coloured noise with power ∝ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS, [n]."""
    m = sp_fft.next_fast_len(n, real=True)  # clip lengths are arbitrary; FFTs of primes are slow
    # White noise drawn directly as a complex Gaussian spectrum: one inverse FFT instead of two.
    re_im = noise(rng, 2 * (m // 2 + 1)).reshape(-1, 2)
    f = np.arange(m // 2 + 1, dtype=np.float32)
    f[0] = 1.0
    spec = (re_im[:, 0] + 1j * re_im[:, 1]) * f ** np.float32(-exponent / 2)
    x = sp_fft.irfft(spec.astype(np.complex64), m)[:n].astype(np.float32)
    x -= x.mean()
    return x / max(float(x.std()), 1e-8)


def far_away(x: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Distance cue: air absorption (low-pass) plus a few late echoes."""
    y = filt(x, "lowpass", rng.uniform(1500, 3000), sr)
    out = y.copy()
    for delay_s, g in ((0.031, 0.5), (0.067, 0.35), (0.113, 0.25)):
        d = int(delay_s * rng.uniform(0.8, 1.2) * sr)
        out[d:] += g * y[: len(y) - d]
    return out
