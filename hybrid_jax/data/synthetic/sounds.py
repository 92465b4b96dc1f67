"""Procedural sound-event synthesisers (numpy) for the synthetic Clotho-style dataset."""

import dataclasses
from typing import Callable

import numpy as np

from hybrid_jax.data.synthetic import dsp

# (rng, n_samples, sample_rate) -> float32 [n_samples], scaled by `synth_dsp.normalise`.
Synth = Callable[[np.random.Generator, int, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class SoundClass:
    name: str
    synth: Synth
    min_seconds: float  # shortest event that still sounds like the class (≥ 2 hits for sequences)
    max_seconds: float  # longer events are cut to this; continuous sounds may fill the clip


def dog_bark(rng, n, sr):
    out = np.zeros(n, np.float32)
    f0, formant = rng.uniform(250, 650), rng.uniform(700, 1600)
    k = np.arange(1, 13, dtype=np.float32)[:, None]
    amps = k ** -rng.uniform(0.5, 1.1) * (1 + 2 * np.exp(-(((k * f0 - formant) / 600) ** 2)))
    breath = dsp.filt(dsp.noise(rng, n + sr), "bandpass", (500.0, 4000.0), sr)  # + 1 s: last bark
    bark_s, t, dur = rng.uniform(0.1, 0.22), rng.uniform(0.0, 0.05), n / sr
    while t < dur - 0.1:
        for _ in range(rng.integers(1, 4)):
            m = int(bark_s * rng.uniform(0.8, 1.2) * sr)
            tt = dsp.time_axis(m, sr)
            f = f0 * rng.uniform(0.9, 1.1) * (1 + 0.25 * np.sin(np.pi * tt * sr / m))
            harm = (amps * np.sin(k * (2 * np.pi * np.cumsum(f) / sr))).sum(0) / amps.sum()
            env = (1 - np.exp(-tt / 0.008)) * np.exp(-tt / (0.35 * m / sr))
            s = int(t * sr)
            dsp.place(out, env * (harm + 0.15 * breath[s : s + m]), s)
            t += m / sr + rng.uniform(0.08, 0.2)
        t += rng.uniform(0.5, 1.8)
    return dsp.normalise(out, sr)


def bird_chirp(rng, n, sr):
    out = np.zeros(n, np.float32)
    f_hi = rng.uniform(3000, 7000)
    f_lo = f_hi * rng.uniform(0.45, 0.8)
    up = rng.random() < 0.4
    chirp_s, rate, vib = rng.uniform(0.03, 0.12), rng.uniform(6, 15), rng.uniform(0, 300)
    t, dur = rng.uniform(0.0, 0.05), n / sr
    while t < dur - chirp_s:
        for _ in range(rng.integers(3, 10)):
            m = int(chirp_s * rng.uniform(0.8, 1.2) * sr)
            u = np.linspace(0, 1, m, dtype=np.float32)
            a, b = (f_lo, f_hi) if up else (f_hi, f_lo)
            f = a + (b - a) * u ** rng.uniform(0.5, 2.0) + vib * np.sin(2 * np.pi * 50 * u * m / sr)
            ph = 2 * np.pi * np.cumsum(f) / sr
            dsp.place(
                out, np.sin(np.pi * u) ** 2 * (np.sin(ph) + 0.2 * np.sin(2 * ph)), int(t * sr)
            )
            t += 1.0 / rate * rng.uniform(0.85, 1.15)
        t += rng.uniform(0.3, 1.5)
    return dsp.normalise(out, sr)


def rain(rng, n, sr):
    hiss = dsp.filt(dsp.noise(rng, n), "highpass", rng.uniform(800, 1500), sr)
    hiss *= 1 + 0.3 * dsp.smooth(rng, n, sr, 2.0)
    drops = (rng.random(n, dtype=np.float32) < rng.uniform(40, 250) / sr) * rng.uniform(
        0.3, 1.0, n
    ).astype(np.float32)
    clicks = dsp.resonate(drops, rng.uniform(2000, 5000), 6, sr) + dsp.resonate(
        drops, rng.uniform(5000, 9000), 8, sr
    )
    return dsp.normalise(
        rng.uniform(0.3, 0.6) * hiss / hiss.std() + clicks / max(clicks.std(), 1e-6), sr
    )


def engine(rng, n, sr):
    f = rng.uniform(25, 60) * (1 + rng.uniform(0.03, 0.08) * dsp.smooth(rng, n, sr, 0.5))
    ph = dsp.phase(f, sr)
    pulses = ((1 + np.cos(ph)) / 2) ** np.float32(rng.uniform(4, 10))
    tone = dsp.filt(pulses - pulses.mean(), "lowpass", rng.uniform(300, 1200), sr, order=4)
    rumble = dsp.filt(dsp.noise(rng, n), "lowpass", 200.0, sr) * (1 + 0.5 * np.cos(ph))
    return dsp.normalise(tone / tone.std() + 0.5 * rumble / rumble.std(), sr)


def church_bell(rng, n, sr):
    out = np.zeros(n, np.float32)
    f = rng.uniform(250, 900)
    ratios = np.array([0.5, 1.0, 1.19, 1.5, 2.0, 2.52, 2.67, 3.0, 4.07]) * rng.uniform(
        0.98, 1.02, 9
    )
    ratios = ratios[ratios * f < 0.45 * sr]
    taus = rng.uniform(1.2, 3.0) * ratios**-0.7
    amps = rng.uniform(0.3, 1.0, len(ratios))
    strike = dsp.damped(f * ratios, taus, amps, min(n, int(4.0 * sr)), sr, rng)
    strike[: int(0.002 * sr)] += dsp.noise(rng, int(0.002 * sr)) * 0.5  # clapper hit
    for t in dsp.onsets(rng, n / sr, rng.uniform(1.0, 2.5), 0.05):
        dsp.place(out, strike, int(t * sr), rng.uniform(0.8, 1.0))
    return dsp.normalise(out, sr)


def siren(rng, n, sr):
    t = dsp.time_axis(n, sr)
    fc, fd = rng.uniform(650, 1000), rng.uniform(150, 400)
    if rng.random() < 0.5:  # wail: slow sinusoidal sweep
        f = fc + fd * np.sin(2 * np.pi * rng.uniform(0.15, 0.4) * t + rng.uniform(0, 2 * np.pi))
    else:  # hi-lo: two alternating tones with short glides
        sq = np.sign(np.sin(2 * np.pi * t / rng.uniform(0.8, 1.4)))
        f = fc + fd * np.convolve(sq, np.ones(400, np.float32) / 400, "same")
    ph = dsp.phase(f, sr)
    return dsp.normalise(np.sin(ph) + 0.35 * np.sin(2 * ph) + 0.2 * np.sin(3 * ph), sr)


def footsteps(rng, n, sr):
    out = np.zeros(n, np.float32)
    surface = rng.uniform(400, 3000)
    steps = []
    for _ in range(4):
        m = int(0.25 * sr)
        s = dsp.burst(rng, m, sr, rng.uniform(0.015, 0.04), "lowpass", surface)
        dsp.place(
            s,
            0.6 * dsp.burst(rng, m, sr, 0.02, "lowpass", surface),
            int(rng.uniform(0.05, 0.1) * sr),
        )
        steps.append(s)
    for i, t in enumerate(dsp.onsets(rng, n / sr, rng.uniform(0.45, 0.75), 0.05)):
        dsp.place(out, steps[rng.integers(4)], int(t * sr), 1.0 if i % 2 else 0.8)
    return dsp.normalise(out, sr)


def stream(rng, n, sr):
    bed = dsp.filt(dsp.noise(rng, n), "bandpass", (300.0, 3000.0), sr) * (
        1 + 0.3 * dsp.smooth(rng, n, sr, 3)
    )
    out = rng.uniform(0.3, 0.6) * bed / bed.std()
    lo, hi = sorted(rng.uniform(300, 1500, 2))
    bubbles = []
    for _ in range(24):
        tau = rng.uniform(0.005, 0.03)
        m = int(4 * tau * sr)
        tt = dsp.time_axis(m, sr)
        f = rng.uniform(lo, hi + 100) * (1 + rng.uniform(0.5, 2.0) * tt / tau / 4)
        bubbles.append(np.exp(-tt / tau) * np.sin(2 * np.pi * np.cumsum(f) / sr))
    for _ in range(int(n / sr * rng.uniform(20, 80))):
        dsp.place(out, bubbles[rng.integers(24)], int(rng.integers(n)), rng.uniform(0.3, 1.5))
    return dsp.normalise(out, sr)


def wind(rng, n, sr):
    gust = (0.6 + 0.4 * dsp.smooth(rng, n, sr, rng.uniform(0.3, 1.0))) ** 1.5
    white = dsp.noise(rng, n)
    low = dsp.filt(white, "lowpass", rng.uniform(200, 600), sr)
    fw = rng.uniform(400, 1200)
    # Three whistle resonances weighted by the gust strength: the pitch rises as the wind blows.
    whistle = sum(
        dsp.resonate(white, fw * r, 30, sr) * np.clip(gust - 0.3 * i, 0, None) ** 2
        for i, r in enumerate((1.0, 1.15, 1.3))
    )
    mix = low * gust / low.std() + rng.uniform(0.3, 0.8) * whistle / max(whistle.std(), 1e-6)
    return dsp.normalise(mix, sr)


def beeping(rng, n, sr):
    out = np.zeros(n, np.float32)
    f, beep_s = rng.uniform(700, 3000), rng.uniform(0.06, 0.4)
    t = dsp.time_axis(int(beep_s * sr), sr)
    ramp = np.clip(np.minimum(t, beep_s - t) / 0.003, 0, 1)
    beep = ramp * (np.sin(2 * np.pi * f * t) + 0.1 * np.sin(6 * np.pi * f * t))
    for t0 in dsp.onsets(rng, n / sr, beep_s + rng.uniform(0.1, 1.0), 0.01):
        dsp.place(out, beep, int(t0 * sr))
    return dsp.normalise(out, sr)


def clapping(rng, n, sr):
    out = np.zeros(n, np.float32)
    centre = rng.uniform(900, 2200)
    claps = [
        dsp.burst(
            rng,
            int(0.1 * sr),
            sr,
            rng.uniform(0.008, 0.02),
            "bandpass",
            (centre * 0.6, centre * 1.6),
        )
        for _ in range(6)
    ]
    for t in dsp.onsets(rng, n / sr, 1 / rng.uniform(1.8, 5.0), 0.08):
        dsp.place(out, claps[rng.integers(6)], int(t * sr), rng.uniform(0.8, 1.0))
    return dsp.normalise(out, sr)


def door_knock(rng, n, sr):
    out = np.zeros(n, np.float32)
    fk = rng.uniform(90, 220)
    m = int(0.25 * sr)
    knock = dsp.damped([fk, 2.4 * fk, 4.1 * fk], [0.05, 0.03, 0.012], [1.0, 0.6, 0.3], m, sr, rng)
    knock += 0.4 * dsp.burst(rng, m, sr, 0.002, "highpass", 2000.0)
    spacing, t, dur = rng.uniform(0.12, 0.22), rng.uniform(0.0, 0.05), n / sr
    while True:
        for _ in range(rng.integers(2, 5)):
            dsp.place(out, knock, int(t * sr), rng.uniform(0.8, 1.0))
            t += spacing * rng.uniform(0.9, 1.1)
        t += rng.uniform(0.8, 2.5)
        if t > dur - 0.5:
            break
    return dsp.normalise(out, sr)


def typing(rng, n, sr):
    out = np.zeros(n, np.float32)
    fr = rng.uniform(2500, 5000)
    m = int(0.04 * sr)
    keys = [
        dsp.resonate(
            dsp.burst(rng, m, sr, 0.004, "highpass", 2000.0), fr * rng.uniform(0.9, 1.1), 4, sr
        )
        for _ in range(7)
    ]
    keys.append(
        1.5 * dsp.resonate(dsp.burst(rng, m, sr, 0.008, "bandpass", (300.0, 2000.0)), 1200.0, 3, sr)
    )  # space bar
    t, dur = rng.uniform(0.0, 0.05), n / sr
    while t < dur - 0.05:
        dsp.place(out, keys[rng.integers(8)], int(t * sr), rng.uniform(0.6, 1.0))
        t += rng.uniform(0.06, 0.25) + (rng.uniform(0.3, 1.0) if rng.random() < 0.05 else 0.0)
    return dsp.normalise(out, sr)


def thunder(rng, n, sr):
    t = dsp.time_axis(n, sr)
    crack = dsp.burst(rng, n, sr, rng.uniform(0.08, 0.25), "highpass", 500.0, attack_s=0.005)
    rumble = dsp.filt(dsp.noise(rng, n), "lowpass", rng.uniform(120, 350), sr, order=4)
    env = (1 - np.exp(-t / rng.uniform(0.1, 0.3))) * np.exp(-t / (rng.uniform(0.25, 0.5) * n / sr))
    env *= 0.6 + 0.4 * dsp.smooth(rng, n, sr, 3.0)
    crack /= crack[: int(0.3 * sr)].std()  # its level while it sounds, not over the whole event
    mix = rng.uniform(0.3, 0.8) * crack + env * rumble / rumble.std()
    return dsp.normalise(mix, sr)


def crickets(rng, n, sr):
    out = np.zeros(n, np.float32)
    fc, pulse_s, prate = rng.uniform(3500, 6000), rng.uniform(0.01, 0.025), rng.uniform(25, 45)
    tt = dsp.time_axis(int(pulse_s * sr), sr)
    pulse = np.sin(np.pi * tt / pulse_s) ** 2 * np.sin(2 * np.pi * fc * tt)
    if rng.random() < 0.3:  # continuous trill
        period, per_chirp = 1 / prate, 1
    else:
        period, per_chirp = rng.uniform(0.3, 1.2), int(rng.integers(2, 7))
    for t in dsp.onsets(rng, n / sr, period, 0.03):
        for i in range(per_chirp):
            dsp.place(out, pulse, int((t + i / prate) * sr))
    return dsp.normalise(out, sr)


_VOWELS = (
    (730, 1090, 2440),
    (530, 1840, 2480),
    (270, 2290, 3010),
    (570, 840, 2410),
    (300, 870, 2240),
    (660, 1720, 2410),
    (490, 1350, 1690),
)


def speech(rng, n, sr):
    out = np.zeros(n, np.float32)
    f0, scale = rng.uniform(95, 230), rng.choice([1.0, 1.05, 1.1, 1.15])  # few: cached formants
    f = f0 * (1 + 0.12 * dsp.smooth(rng, n, sr, 2.0)) * np.linspace(1.05, 0.95, n, dtype=np.float32)
    c = (1 + np.cos(dsp.phase(f, sr))) / 2
    c2 = c * c
    source = c2 * c2 * c2 + 0.03 * dsp.noise(rng, n)  # narrow glottal pulses: rich harmonics
    hiss = dsp.filt(dsp.noise(rng, n), "highpass", 3000.0, sr)
    t, dur = rng.uniform(0.0, 0.05), n / sr
    while t < dur - 0.1:
        s, m = int(t * sr), int(rng.uniform(0.12, 0.3) * sr)
        seg = source[s : s + m]
        vowel = _VOWELS[rng.integers(len(_VOWELS))]
        voiced = sum(
            w * dsp.filt(seg, "bandpass", (fm * scale * 0.93, fm * scale * 1.07), sr)
            for fm, w in zip(vowel, (1.0, 0.5, 0.25))
        )
        dsp.place(out, np.hanning(len(seg)).astype(np.float32) ** 0.5 * voiced, s)
        if rng.random() < 0.5:  # consonant onset
            burst = hiss[s : s + int(rng.uniform(0.02, 0.06) * sr)]
            level = 0.5 * float(voiced.std()) / float(hiss.std() + 1e-8)  # below the vowel
            dsp.place(out, level * burst * np.hanning(len(burst)).astype(np.float32), s)
        t += m / sr + (rng.uniform(0.2, 0.6) if rng.random() < 0.15 else rng.uniform(0.01, 0.05))
    return dsp.normalise(out, sr)


def car_horn(rng, n, sr):
    out = np.zeros(n, np.float32)
    f1 = rng.uniform(350, 500)
    f2 = f1 * rng.uniform(1.2, 1.3)
    k = np.arange(1, 16, dtype=np.float32)[:, None]
    t, dur, honks = rng.uniform(0.0, 0.05), n / sr, 0
    while t < dur - 0.15 or honks < 2:
        m = int(rng.uniform(0.15, 1.0) * sr)
        tt = dsp.time_axis(m, sr)[None, :]
        tone = ((np.sin(2 * np.pi * k * f1 * tt) + np.sin(2 * np.pi * k * f2 * tt)) / k).sum(0)
        ramp = np.clip(np.minimum(tt[0], m / sr - tt[0]) / 0.01, 0, 1)
        dsp.place(out, ramp * tone, int(t * sr))
        t += m / sr + (rng.uniform(0.1, 0.4) if rng.random() < 0.7 else rng.uniform(0.8, 2.0))
        honks += 1
    return dsp.normalise(out, sr)


def clock_tick(rng, n, sr):
    out = np.zeros(n, np.float32)
    fr = rng.uniform(1800, 3500)
    m = int(0.05 * sr)
    ticks = [
        dsp.resonate(dsp.burst(rng, m, sr, 0.001, "highpass", 3000.0), fr * p, 8, sr)
        + 0.3 * dsp.damped([800 * p], [0.01], [1.0], m, sr, rng)
        for p in (1.0, 0.8)
    ]
    for i, t in enumerate(
        dsp.onsets(rng, n / sr, rng.choice([0.5, 1.0]) * rng.uniform(0.98, 1.02), 0.005)
    ):
        dsp.place(out, ticks[i % 2], int(t * sr))
    return dsp.normalise(out, sr)


def phone_ring(rng, n, sr):
    out = np.zeros(n, np.float32)
    f1, trill = rng.uniform(900, 1500), rng.uniform(16, 24)
    on_s, off_s = rng.uniform(1.0, 2.0), rng.uniform(1.0, 2.5)
    t = dsp.time_axis(int(on_s * sr), sr)
    ring = (
        np.sin(2 * np.pi * f1 * t)
        + 0.7 * np.sin(2 * np.pi * f1 * 1.25 * t)
        + 0.2 * np.sin(2 * np.pi * f1 * 2.7 * t)
    ) * (0.5 + 0.5 * np.sign(np.sin(2 * np.pi * trill * t)))
    ring *= np.clip(np.minimum(t, on_s - t) / 0.01, 0, 1)
    for t0 in dsp.onsets(rng, n / sr, on_s + off_s, 0.0):
        dsp.place(out, ring, int(t0 * sr))
    return dsp.normalise(out, sr)


def hammering(rng, n, sr):
    out = np.zeros(n, np.float32)
    fm = rng.uniform(1500, 3500)
    m = int(0.3 * sr)
    strikes = []
    for _ in range(4):
        metal = dsp.damped(
            fm * np.array([1.0, 2.76, 5.4]) * rng.uniform(0.97, 1.03),
            [0.12, 0.06, 0.03],
            [1.0, 0.5, 0.25],
            m,
            sr,
            rng,
        )
        thump = dsp.damped([150.0], [0.03], [1.5], m, sr, rng)
        strikes.append(metal + thump + 0.5 * dsp.burst(rng, m, sr, 0.002, "highpass", 3000.0))
    for t in dsp.onsets(rng, n / sr, rng.uniform(0.35, 0.8), 0.1):
        dsp.place(out, strikes[rng.integers(4)], int(t * sr), rng.uniform(0.7, 1.0))
    return dsp.normalise(out, sr)


SOUND_CLASSES: tuple[SoundClass, ...] = (
    SoundClass("dog_bark", dog_bark, 1.5, 10.0),
    SoundClass("bird_chirp", bird_chirp, 1.5, 15.0),
    SoundClass("rain", rain, 2.0, 30.0),
    SoundClass("engine", engine, 2.0, 30.0),
    SoundClass("church_bell", church_bell, 2.5, 12.0),
    SoundClass("siren", siren, 2.5, 20.0),
    SoundClass("footsteps", footsteps, 2.0, 12.0),
    SoundClass("stream", stream, 2.0, 30.0),
    SoundClass("wind", wind, 2.5, 30.0),
    SoundClass("beeping", beeping, 1.5, 10.0),
    SoundClass("clapping", clapping, 1.5, 8.0),
    SoundClass("door_knock", door_knock, 1.0, 8.0),
    SoundClass("typing", typing, 1.5, 15.0),
    SoundClass("thunder", thunder, 3.0, 10.0),
    SoundClass("crickets", crickets, 2.0, 30.0),
    SoundClass("speech", speech, 2.0, 20.0),
    SoundClass("car_horn", car_horn, 1.5, 8.0),
    SoundClass("clock_tick", clock_tick, 2.0, 15.0),
    SoundClass("phone_ring", phone_ring, 2.5, 12.0),
    SoundClass("hammering", hammering, 1.5, 10.0),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in SOUND_CLASSES)
BY_NAME: dict[str, SoundClass] = {c.name: c for c in SOUND_CLASSES}


def synthesise(name: str, rng: np.random.Generator, seconds: float, sr: int = 44100) -> np.ndarray:
    """One event of class `name`, [round(seconds * sr)] float32 with sounding level 1."""
    return BY_NAME[name].synth(rng, max(1, int(round(seconds * sr))), sr)
