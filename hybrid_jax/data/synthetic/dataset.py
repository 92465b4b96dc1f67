"""Offline synthetic dataset in the exact on-disk layout of ClothoV2.1 (the demo's default data).

    from hybrid_jax.data.synthetic import dataset as synthetic
    summary = synthetic.generate("data/synthetic_clotho", seed=0)

writes, like the raw Zenodo layout of Clotho v2.1:

    DIR/clotho_captions_{development,validation,evaluation}.csv   ASCII, 5 captions per clip
    DIR/clotho_metadata_{development,validation,evaluation}.csv   latin-1, ";"-separated keywords
    DIR/{development,validation,evaluation}/*.wav                 44.1 kHz 16-bit mono
    DIR/README.txt, DIR/synthetic_manifest.json                   how it was made; ground truth

Each clip is a scene of 1-3 procedurally synthesised sound events (`synth_sounds`) over coloured
background noise. Captions and keywords (`synth_text`) are derived from the scene, so audio,
captions and (noisy, partial) keywords agree.
"""

import csv
import dataclasses
import json
import logging
import pathlib
import shutil

import numpy as np
import soundfile as sf

from hybrid_jax.data.synthetic import dsp as synth_dsp
from hybrid_jax.data.synthetic import metadata as synth_metadata
from hybrid_jax.data.synthetic import sounds as synth_sounds
from hybrid_jax.data.synthetic import text as synth_text

SPLITS = ("development", "validation", "evaluation")
DEFAULT_CLIPS_PER_SPLIT = {"development": 400, "validation": 64, "evaluation": 64}
SAMPLE_RATE = 44100
CAPTIONS_HEADER = ["file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5"]
METADATA_HEADER = [
    "file_name",
    "keywords",
    "sound_id",
    "sound_link",
    "start_end_samples",
    "manufacturer",
    "license",
]
MANIFEST = "synthetic_manifest.json"
_DISTANCE_GAIN_DB = {"near": (-14.0, -6.0), "mid": (-22.0, -12.0), "far": (-30.0, -20.0)}
_LOUD_DB, _FAINT_DB = -11.0, -22.0  # gain thresholds behind "loudly" / "faintly"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Scene:
    duration_s: float
    events: tuple[synth_text.Event, ...]  # sorted by onset
    gains_db: tuple[float, ...]  # one per event, applied to the unit-level event
    bg_exponent: float  # background noise power ∝ 1/f^exponent
    bg_level_db: float  # background RMS (dBFS)

    @property
    def bg_colour(self) -> str:
        return (
            "white" if self.bg_exponent < 0.6 else ("pink" if self.bg_exponent < 1.4 else "brown")
        )

    @property
    def bg_level(self) -> str:
        return "low" if self.bg_level_db < -42.0 else "high"


def sample_scene(rng: np.random.Generator, clip_seconds: tuple[float, float]) -> Scene:
    """Random scene: duration skewed short, 1-3 distinct classes, in sequence or overlapping."""
    lo, hi = clip_seconds
    duration = round(lo + (hi - lo) * float(rng.beta(1.3, 4.5)), 2)  # mean ≈ lo + 0.22 (hi - lo)
    k = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    classes = [
        synth_sounds.SOUND_CLASSES[i]
        for i in rng.choice(len(synth_sounds.SOUND_CLASSES), k, replace=False)
    ]
    if k > 1 and rng.random() < 0.5:  # one after another: each event in its own time slot
        cuts = np.concatenate([[0.0], np.cumsum(rng.dirichlet(np.full(k, 3.0)))]) * duration
        slots = list(zip(cuts[:-1], cuts[1:]))
    else:
        slots = [(0.0, duration)] * k
    timed = []
    for cls, (a, b) in zip(classes, slots):
        span = b - a
        shortest = min(cls.min_seconds, span)
        length = rng.uniform(shortest, max(shortest, min(cls.max_seconds, span)))
        if span == duration and rng.random() < 0.3 and cls.max_seconds >= duration:
            length = duration  # continuous sounds often fill the whole clip
        onset = a + rng.uniform(0.0, span - length)
        timed.append((round(float(onset), 3), round(float(length), 3), cls.name))
    timed.sort()
    events, gains = [], []
    for onset, length, name in timed:
        distance = str(rng.choice(["near", "mid", "far"], p=[0.3, 0.45, 0.25]))
        gain = round(float(rng.uniform(*_DISTANCE_GAIN_DB[distance])), 2)
        loudness = "loud" if gain >= _LOUD_DB else ("faint" if gain <= _FAINT_DB else "normal")
        events.append(synth_text.Event(name, onset, length, loudness, distance))
        gains.append(gain)
    return Scene(
        duration,
        tuple(events),
        tuple(gains),
        round(float(rng.uniform(0.0, 2.0)), 3),
        round(float(rng.uniform(-55.0, -32.0)), 2),
    )


def render(scene: Scene, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mixes the scene: int16 [round(duration * sr)]; scaled down only if it would clip."""
    n = int(round(scene.duration_s * sr))
    mix = synth_dsp.background(rng, n, scene.bg_exponent) * np.float32(
        10 ** (scene.bg_level_db / 20)
    )
    for ev, gain_db in zip(scene.events, scene.gains_db):
        start = int(round(ev.onset_s * sr))
        x = synth_sounds.synthesise(
            ev.name, rng, min(ev.duration_s, scene.duration_s - ev.onset_s), sr
        )
        if ev.distance == "far":
            x = synth_dsp.far_away(x, rng, sr)
        m = min(len(x), n - start)
        mix[start : start + m] += np.float32(10 ** (gain_db / 20)) * x[:m]
    peak = float(np.abs(mix).max())
    if peak > 0.95:
        mix *= 0.95 / peak
    return np.round(mix * 32767).astype(np.int16)


def _file_names(rng, scenes, taken: set) -> list[str]:
    """Unique names; one with "&amp;", one with a leading space and ~5 % with commas per split."""
    n = len(scenes)
    order = rng.permutation(n)
    quirks = [""] * n
    special = ["amp", "space"] + ["comma"] * max(1, round(0.05 * n))
    for i, quirk in zip(order, special[:n]):
        quirks[i] = quirk
    names = []
    for scene, quirk in zip(scenes, quirks):
        stem = synth_metadata.file_stem(rng, scene.events, quirk)
        name, j = f"{stem}.wav", 1
        while name.strip().lower() in taken:  # unique even after stripping, across all splits
            j += 1
            name = f"{stem}_{j}.wav"
        taken.add(name.strip().lower())
        names.append(name)
    return names


def _split(out: pathlib.Path, split: str, n: int, seed: int, clip_seconds, sr, taken_names, ids):
    """Writes one split; returns its manifest entries."""
    split_id = SPLITS.index(split)
    split_rng = np.random.default_rng([seed, split_id, 1_000_000])
    scenes = [
        sample_scene(np.random.default_rng([seed, split_id, i, 0]), clip_seconds) for i in range(n)
    ]
    names = _file_names(split_rng, scenes, taken_names)
    no_keywords = set(
        split_rng.permutation(n)[: round(synth_metadata.EMPTY_KEYWORD_FRACTION * n)].tolist()
    )
    (out / split).mkdir()
    taken_captions: set[str] = set()
    cap_rows, meta_rows, manifest = [], [], []
    for i, (scene, name) in enumerate(zip(scenes, names)):
        audio = render(scene, np.random.default_rng([seed, split_id, i, 1]), sr)
        sf.write(out / split / name, audio, sr, subtype="PCM_16", format="WAV")
        text_rng = np.random.default_rng([seed, split_id, i, 2])
        caps = []
        for _ in range(5):
            caps.append(
                synth_text.caption(
                    text_rng,
                    scene.events,
                    scene.duration_s,
                    scene.bg_colour,
                    scene.bg_level,
                    taken_captions,
                )
            )
            taken_captions.add(caps[-1])
        tags, revealed = synth_metadata.keywords(
            text_rng, scene.events, scene.bg_colour, synth_sounds.CLASS_NAMES
        )
        if i in no_keywords:
            tags, revealed = [], []
        sound_id = int(text_rng.integers(1000, 700_000))
        while sound_id in ids:
            sound_id = int(text_rng.integers(1000, 700_000))
        ids.add(sound_id)
        fields = synth_metadata.metadata_fields(text_rng, sound_id, len(audio))
        cap_rows.append([name, *caps])
        meta_rows.append([name, ";".join(tags), *(fields[k] for k in METADATA_HEADER[2:])])
        manifest.append(
            {
                "file_name": name,
                "duration_s": scene.duration_s,
                "background": {
                    "exponent": scene.bg_exponent,
                    "colour": scene.bg_colour,
                    "level_db": scene.bg_level_db,
                },
                "events": [
                    {
                        "class": e.name,
                        "onset_s": e.onset_s,
                        "duration_s": e.duration_s,
                        "gain_db": g,
                        "loudness": e.loudness,
                        "distance": e.distance,
                    }
                    for e, g in zip(scene.events, scene.gains_db)
                ],
                "keyword_classes": sorted(set(revealed)),
            }
        )
    # Clotho's captions CSV is pure ASCII with LF and minimal quoting; its metadata CSV is latin-1.
    with open(out / f"clotho_captions_{split}.csv", "w", encoding="ascii", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([CAPTIONS_HEADER, *cap_rows])
    with open(out / f"clotho_metadata_{split}.csv", "w", encoding="latin-1", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([METADATA_HEADER, *meta_rows])
    return manifest


def _prepare_target(out: pathlib.Path, overwrite: bool) -> None:
    """Refuses to clobber anything this module did not write."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if not any(out.iterdir()):
        out.rmdir()
    elif (out / MANIFEST).exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a synthetic dataset (pass overwrite=True)")
        shutil.rmtree(out)
    else:
        raise FileExistsError(
            f"{out} is not empty and is not a synthetic dataset; refusing to replace it"
        )


def _readme(seed, counts, seconds, clip_seconds) -> str:
    classes = "\n".join(f"  - {c}" for c in synth_sounds.CLASS_NAMES)
    lines = [f"  {s}: {counts[s]} clips, {seconds[s] / 60:.1f} min" for s in SPLITS]
    return f"""Synthetic ClothoV2.1-style dataset (hybrid_jax.data.synthetic.dataset, seed {seed})

Procedurally generated, offline, deterministic for a seed: the same seed gives byte-identical files.
Layout and formats follow the raw Zenodo ClothoV2.1 release:
  clotho_captions_<split>.csv  file_name,caption_1..caption_5 (ASCII, LF, minimal quoting)
  clotho_metadata_<split>.csv  {",".join(METADATA_HEADER)} (latin-1; keywords ";"-separated)
  <split>/*.wav                44.1 kHz, 16-bit PCM, mono
Splits:
{chr(10).join(lines)}
Clip durations: {clip_seconds[0]}-{clip_seconds[1]} s, skewed short.

Each clip mixes 1-3 sound events (random pitch/rate/timbre, gain, onset, duration; far events are
low-passed and echoed) over coloured background noise. Five unique captions per clip name the
events with synonyms, their order (then / while / followed by), loudness and distance. Keywords
imitate Freesound tags: events tagged with probability 0.75 (synonyms, plurals, mixed case),
distractors (recorders, places, technique), typos and fragments, an absent class now and then, and
~10 % of clips without keywords. File names include Clotho's quirks: commas, "&amp;" and a
leading space.
Ground truth per clip (events, gains, background, classes revealed by keywords): {MANIFEST}.

Classes ({len(synth_sounds.CLASS_NAMES)}):
{classes}

Regenerate: python tools/make_synthetic_dataset.py --out DIR --seed {seed}
"""


def generate(
    out_dir,
    seed: int = 0,
    clips_per_split: dict[str, int] | None = None,
    clip_seconds: tuple[float, float] = (5.0, 30.0),
    sample_rate: int = SAMPLE_RATE,
    overwrite: bool = False,
) -> dict:
    """Writes the synthetic dataset to `out_dir` and returns a summary.

    Args:
      clips_per_split: clips for any of SPLITS; missing splits take DEFAULT_CLIPS_PER_SPLIT.
      clip_seconds: (shortest, longest) clip duration.
      overwrite: replace an existing synthetic dataset at `out_dir` (anything else is refused).
    Returns:
      {"out_dir", "seed", "clips": {split: n}, "audio_seconds": {split: s}, "total_audio_seconds",
       "classes": [names], "sample_rate"}.
    The files appear atomically: they are written to "<out_dir>.partial" and renamed at the end,
    so a caller can treat an existing `out_dir` as complete.
    """
    counts = {**DEFAULT_CLIPS_PER_SPLIT, **(clips_per_split or {})}
    if set(counts) - set(SPLITS):
        raise ValueError(f"unknown splits {sorted(set(counts) - set(SPLITS))}; expected {SPLITS}")
    if not 0 < clip_seconds[0] <= clip_seconds[1]:
        raise ValueError(f"bad clip_seconds {clip_seconds}")
    out = pathlib.Path(out_dir)
    _prepare_target(out, overwrite)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from an interrupted run of this function
    tmp.mkdir(parents=True)
    taken_names: set[str] = set()
    ids: set[int] = set()
    manifest = {
        "seed": seed,
        "sample_rate": sample_rate,
        "clip_seconds": list(clip_seconds),
        "classes": list(synth_sounds.CLASS_NAMES),
        "splits": {},
    }
    for split in SPLITS:
        log.info("synthesising %d %s clips", counts[split], split)
        manifest["splits"][split] = _split(
            tmp, split, counts[split], seed, clip_seconds, sample_rate, taken_names, ids
        )
    seconds = {s: round(sum(c["duration_s"] for c in manifest["splits"][s]), 2) for s in SPLITS}
    (tmp / MANIFEST).write_text(
        json.dumps(manifest, indent=1, ensure_ascii=True) + "\n", encoding="ascii"
    )
    (tmp / "README.txt").write_text(_readme(seed, counts, seconds, clip_seconds), encoding="ascii")
    tmp.rename(out)
    return {
        "out_dir": str(out),
        "seed": seed,
        "clips": counts,
        "audio_seconds": seconds,
        "total_audio_seconds": round(sum(seconds.values()), 2),
        "classes": list(synth_sounds.CLASS_NAMES),
        "sample_rate": sample_rate,
    }
