"""Tests for the synthetic ClothoV2.1-layout dataset (hybrid_jax.data.synthetic.dataset)."""

import csv
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from hybrid_jax.data.synthetic import dataset as synthetic
from hybrid_jax.data.synthetic import metadata as synth_metadata
from hybrid_jax.data.synthetic import sounds as synth_sounds
from hybrid_jax.data.synthetic import text as synth_text

CLIPS = {"development": 8, "validation": 6, "evaluation": 6}
SECONDS = (3.0, 5.0)
SEED = 3
REPO = pathlib.Path(__file__).resolve().parents[1]


def _make(root: pathlib.Path, seed: int = SEED) -> pathlib.Path:
    synthetic.generate(root, seed=seed, clips_per_split=CLIPS, clip_seconds=SECONDS)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pathlib.Path:
    return _make(tmp_path_factory.mktemp("synthetic") / "clotho")


def _rows(path: pathlib.Path, encoding: str) -> list[list[str]]:
    with open(path, encoding=encoding, newline="") as f:
        return list(csv.reader(f))


def _manifest(data: pathlib.Path) -> dict:
    return json.loads((data / synthetic.MANIFEST).read_text())


def _digests(root: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_csv_formats_match_clotho(data):
    expected = {"README.txt", synthetic.MANIFEST, *synthetic.SPLITS}
    for split in synthetic.SPLITS:
        expected |= {f"clotho_captions_{split}.csv", f"clotho_metadata_{split}.csv"}
    assert {p.name for p in data.iterdir()} == expected
    for split, n in CLIPS.items():
        raw = (data / f"clotho_captions_{split}.csv").read_bytes()
        assert raw.startswith(b"file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n")
        raw.decode("ascii")  # pure ASCII, like the real file
        assert b"\r" not in raw
        meta_raw = (data / f"clotho_metadata_{split}.csv").read_bytes()
        assert meta_raw.startswith(
            b"file_name,keywords,sound_id,sound_link,start_end_samples,manufacturer,license\n"
        )
        captions = _rows(data / f"clotho_captions_{split}.csv", "ascii")
        metadata = _rows(data / f"clotho_metadata_{split}.csv", "latin-1")
        assert len(captions) == len(metadata) == n + 1
        assert all(len(r) == 6 for r in captions) and all(len(r) == 7 for r in metadata)
        names = [r[0] for r in captions[1:]]
        assert names == [r[0] for r in metadata[1:]]
        assert sorted(p.name for p in (data / split).iterdir()) == sorted(names)  # exact names
        for row in metadata[1:]:
            assert row[2] == "Not found" or row[2].isdigit()
            assert row[4] == "" or re.fullmatch(r"\[\d+, \d+\]", row[4])
            assert row[6].startswith("http://creativecommons.org/")
        assert b'"[' in meta_raw  # the list literal is quoted, as in Clotho


def test_five_unique_captions_per_clip(data):
    for split in synthetic.SPLITS:
        rows = _rows(data / f"clotho_captions_{split}.csv", "ascii")[1:]
        captions = [c for r in rows for c in r[1:]]
        assert len(captions) == 5 * CLIPS[split]
        assert len(set(captions)) == len(captions)  # the DCASE scorer keys queries by text
        for c in captions:
            assert synth_text.MIN_WORDS <= len(c.split()) <= synth_text.MAX_WORDS, c
            assert c[0].isupper() and c.endswith("."), c


def test_wavs_are_44k_mono_int16_with_manifest_durations(data):
    clips = {c["file_name"]: c for s in synthetic.SPLITS for c in _manifest(data)["splits"][s]}
    for split in synthetic.SPLITS:
        for path in (data / split).iterdir():
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.format, info.subtype) == (
                44100,
                1,
                "WAV",
                "PCM_16",
            )
            clip = clips[path.name]
            assert SECONDS[0] <= clip["duration_s"] <= SECONDS[1]
            assert info.frames == round(clip["duration_s"] * 44100)
            audio, _ = sf.read(path, dtype="int16")
            assert np.abs(audio).max() > 1000  # not silent
            for ev in clip["events"]:
                assert (
                    0 <= ev["onset_s"]
                    and ev["onset_s"] + ev["duration_s"] <= clip["duration_s"] + 1e-3
                )


def test_at_least_16_classes_with_text_for_each():
    assert len(synth_sounds.CLASS_NAMES) >= 16
    assert set(synth_text.VOCAB) == set(synth_sounds.CLASS_NAMES)
    for name in synth_sounds.CLASS_NAMES:
        x = synth_sounds.synthesise(name, np.random.default_rng(0), 1.0, 44100)
        assert x.shape == (44100,) and x.dtype == np.float32 and np.isfinite(x).all()


def test_same_seed_same_bytes_other_seed_differs(data, tmp_path):
    again = _digests(_make(tmp_path / "again"))
    assert again == _digests(data)
    other = _digests(_make(tmp_path / "other", seed=SEED + 1))
    assert other.keys() != again.keys() or other != again
    assert other["clotho_captions_development.csv"] != again["clotho_captions_development.csv"]


def test_keywords_are_partial_and_noisy(data):
    manifest = _manifest(data)
    distractors = (
        set(synth_metadata._RECORDERS)
        | set(synth_metadata._TECH)
        | set(synth_metadata._PLACES_TAGS)
    )
    empty, with_distractor = 0, 0
    for split in synthetic.SPLITS:
        rows = _rows(data / f"clotho_metadata_{split}.csv", "latin-1")[1:]
        for row, clip in zip(rows, manifest["splits"][split]):
            tags = row[1].split(";") if row[1] else []
            empty += not tags
            with_distractor += bool(distractors & set(tags))
            assert set(clip["keyword_classes"]) <= {e["class"] for e in clip["events"]}
    assert empty >= 3  # ~10 % of clips, at least one per split
    assert with_distractor > 0
    # Statistics over many draws: events often but not always tagged; typos; latin-1 places.
    rng = np.random.default_rng(0)
    events = [
        synth_text.Event("dog_bark", 0.0, 2.0, "normal", "mid"),
        synth_text.Event("rain", 1.0, 3.0, "loud", "near"),
    ]
    draws = [
        synth_metadata.keywords(rng, events, "pink", synth_sounds.CLASS_NAMES) for _ in range(300)
    ]
    revealed = np.mean([len(r) / 2 for _, r in draws])
    assert 0.6 < revealed < 0.9
    tags = [t for d, _ in draws for t in d]
    known = (
        distractors
        | {t for v in synth_text.VOCAB.values() for t in v.tags}
        | {"hiss", "static", "noise", "tone", "hum", "rumble"}
    )
    assert any(t not in known for t in tags)  # typos and fragments
    assert any(not t.isascii() for t in tags)
    assert all(";" not in t and t for t in tags)


def test_quirky_file_names_on_disk_and_in_csv(data):
    for split in synthetic.SPLITS:
        names = [r[0] for r in _rows(data / f"clotho_captions_{split}.csv", "ascii")[1:]]
        assert sum("&amp;" in n for n in names) == 1
        assert sum(n.startswith(" ") for n in names) == 1
        commas = [n for n in names if "," in n]
        assert commas
        raw = (data / f"clotho_captions_{split}.csv").read_text("ascii")
        for n in commas:
            assert f'\n"{n}",' in raw  # quoted, as csv readers expect
        for n in names:
            assert (data / split / n).is_file()
    all_names = [
        n.strip().lower() for s in synthetic.SPLITS for n in (p.name for p in (data / s).iterdir())
    ]
    assert len(set(all_names)) == len(all_names)  # unique across splits, even after stripping


_FAINT = re.compile(r"\b(faint|faintly|soft|softly|quiet|quietly)\b")
_LOUD = re.compile(r"\b(loud|loudly|noisy|noisily)\b")
_FAR = re.compile(r"in the distance|far away|from afar")
_NEAR = re.compile(r"nearby|close by|up close|close to the microphone")
_SEQ = re.compile(r"\bthen\b|followed by|succeeded by|\bbefore\b|afterwards|after which")


def _check_consistent(caption: str, events) -> None:
    text = caption.lower()
    loudness = {e.loudness for e in events}
    distance = {e.distance for e in events}
    assert not _FAINT.search(text) or "faint" in loudness, caption
    assert not _LOUD.search(text) or "loud" in loudness, caption
    assert not _FAR.search(text) or "far" in distance, caption
    assert not _NEAR.search(text) or "near" in distance, caption
    seq = any(synth_text.relation(a, b) == "seq" for a, b in zip(events, events[1:]))
    assert not _SEQ.search(text) or seq, caption


def test_captions_agree_with_the_scene(data):
    manifest = _manifest(data)
    for split in synthetic.SPLITS:
        rows = _rows(data / f"clotho_captions_{split}.csv", "ascii")[1:]
        for row, clip in zip(rows, manifest["splits"][split]):
            events = [
                synth_text.Event(
                    e["class"], e["onset_s"], e["duration_s"], e["loudness"], e["distance"]
                )
                for e in clip["events"]
            ]
            for caption in row[1:]:
                _check_consistent(caption, events)
    rng = np.random.default_rng(1)  # many more scenes, text only (cheap)
    taken = set()
    for _ in range(200):
        scene = synthetic.sample_scene(rng, (5.0, 30.0))
        text = synth_text.caption(
            rng, scene.events, scene.duration_s, scene.bg_colour, scene.bg_level, taken
        )
        taken.add(text)
        _check_consistent(text, scene.events)


def _band_spectrum(x: np.ndarray, sr: int = 44100) -> np.ndarray:
    """Log power in 32 log-spaced bands, averaged over time, peak-normalised."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 1024)[::512] * np.hanning(1024)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(0)
    freqs = np.fft.rfftfreq(1024, 1 / sr)
    edges = np.geomspace(50, 20000, 33)
    bands = np.array(
        [power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])]
    )
    log = np.log10(bands + 1e-10)
    return log - log.max()


def test_classes_are_acoustically_distinct():
    feats, labels = [], []
    for c, name in enumerate(synth_sounds.CLASS_NAMES):
        for i in range(3):
            feats.append(
                _band_spectrum(synth_sounds.synthesise(name, np.random.default_rng([i, c]), 2.5))
            )
            labels.append(c)
    feats, labels = np.array(feats), np.array(labels)
    dist = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    same = labels[:, None] == labels[None]
    np.fill_diagonal(same, False)
    within = dist[same].mean()
    between = dist[labels[:, None] != labels[None]].mean()
    assert within < 0.5 * between
    np.fill_diagonal(dist, np.inf)
    assert (labels[dist.argmin(1)] == labels).mean() >= 0.8  # 1-NN over instances


def test_refuses_to_replace_foreign_data_and_overwrites_its_own(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    tiny = {"development": 1, "validation": 1, "evaluation": 1}
    with pytest.raises(FileExistsError):
        synthetic.generate(foreign, clips_per_split=tiny, clip_seconds=(2.0, 2.0))
    assert (foreign / "keep.txt").read_text() == "mine"
    ours = tmp_path / "ours"
    summary = synthetic.generate(ours, clips_per_split=tiny, clip_seconds=(2.0, 2.0))
    assert summary["clips"] == tiny and summary["total_audio_seconds"] == 6.0
    with pytest.raises(FileExistsError):
        synthetic.generate(ours, clips_per_split=tiny, clip_seconds=(2.0, 2.0))
    synthetic.generate(ours, seed=1, clips_per_split=tiny, clip_seconds=(2.0, 2.0), overwrite=True)
    assert _manifest(ours)["seed"] == 1
    assert not (tmp_path / "ours.partial").exists()


def test_cli(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "make_synthetic_dataset.py"),
            "--out",
            str(out),
            "--seed",
            "5",
            "--clips-per-split",
            "development=2,validation=1,evaluation=1",
            "--min-seconds",
            "2",
            "--max-seconds",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),  # this checkout, whatever is installed
    )
    summary = json.loads(result.stdout)
    assert summary["clips"] == {"development": 2, "validation": 1, "evaluation": 1}
    assert len(list((out / "development").iterdir())) == 2
    assert "seed 5" in (out / "README.txt").read_text()
