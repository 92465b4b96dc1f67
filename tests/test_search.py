"""search index / query: bad files reported and counted with the index consistent, incremental and
resumable runs, a 2-hour recording in bounded memory, text and example queries, the command line."""
import json
import os
import pathlib
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from model_files import BATCH_SIZE, save_tiny_model, write_sound

import hybrid_jax
from hybrid_jax import index as index_lib
from hybrid_jax import search

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("late") / "model")


@pytest.fixture(scope="module")
def model(model_path):
    return hybrid_jax.load_model(model_path, batch_size=BATCH_SIZE)


def collection(folder: pathlib.Path) -> pathlib.Path:
    """Three good sounds, one in a subfolder at 48 kHz stereo, and the bad files of issue 13."""
    write_sound(folder / "dog.wav", 1.5, seed=0)
    write_sound(folder / "rain.wav", 3.0, seed=1)
    write_sound(folder / "field" / "stereo48.flac", 2.5, rate=48000, channels=2, seed=2)
    good = (folder / "rain.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(good[: len(good) // 2])
    (folder / "notes.mp3").write_bytes(b"this is a text file with an audio name\n" * 20)
    (folder / "empty.wav").write_bytes(b"")
    nan = np.full(16000, 0.1, np.float32)
    nan[8000:] = np.nan
    sf.write(folder / "nan.wav", nan, 32000, subtype="FLOAT")
    (folder / "readme.txt").write_text("not audio, not indexed")
    return folder


def tags(path: pathlib.Path) -> pathlib.Path:
    """A cp1252 (not UTF-8) tags CSV; one row names no file."""
    path.write_bytes("file_name,keywords\ndog.wav,dog;bark;garden\nstereo48.flac,caf\xe9;rain;field-recording\n"
                     "gone.wav,ghost\n".encode("cp1252"))
    return path


def run(model, folder, index, csv=None, lines=None):
    return search.update_index(model, folder, index, csv, say=(lines.append if lines is not None else print),
                               progress=False)


def test_bad_files_are_reported_counted_and_the_index_stays_consistent(model, tmp_path):
    folder, lines = collection(tmp_path / "sounds"), []
    report = run(model, folder, tmp_path / "index", tags(tmp_path / "tags.csv"), lines)
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "truncated.wav": "truncated: WAV header declares 192000 data bytes, file holds 95978",
        "notes.mp3": "cannot decode: not a readable .mp3 file (unrecognised or corrupt data)",
        "empty.wav": "empty file (0 bytes)",
        "nan.wav": "non-finite (NaN/Inf) samples (first at 0.25 s)",
    }
    assert sorted(report["indexed"]) == ["dog.wav", "field/stereo48.flac", "rain.wav"]
    text = "\n".join(lines)
    assert "tags.csv: not UTF-8, read as cp1252" in text
    assert "1 of 3 rows name no audio file" in text and "gone.wav" in text
    assert "7 audio files (0 unchanged, 7 new, 0 changed, 0 unreadable as before)" in text
    assert "1 other files ignored" in text
    assert "skipped 4 unreadable" in lines[-1] and "the index holds 3 items" in lines[-1]
    assert json.loads((tmp_path / "index" / "last_run.json").read_text())["skipped"] == report["skipped"]
    with index_lib.Index(tmp_path / "index") as index:
        entries = index.entries()
        assert entries["field/stereo48.flac"].metadata == "café rain field-recording"  # decoded, joined
        assert entries["field/stereo48.flac"].seconds == pytest.approx(2.5, abs=1e-4)
        assert entries["rain.wav"].metadata == ""
        # The stored rows are exactly what load_model gives for these files.
        expected = model.embed_audio([folder / "dog.wav"], ["dog bark garden"]).vectors[0]
        np.testing.assert_array_equal(index.vectors()[entries["dog.wav"].row], expected)
        hits = search.query(model, index, texts=["a dog barks in the garden"], top_k=10)[0]
        assert sorted(h.entry.path for h in hits) == sorted(entries)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        only = search.query(model, index, texts=["rain"], words=["CAFÉ"])[0]
        assert [h.entry.path for h in only] == ["field/stereo48.flac"]
        example = search.query(model, index, audio=[folder / "rain.wav"], top_k=1)[0]
        assert example[0].entry.path == "rain.wav" and example[0].score == pytest.approx(1.0, abs=1e-5)


def test_reruns_embed_only_new_and_changed_files_and_drop_deleted_ones(model, tmp_path):
    folder = collection(tmp_path / "sounds")
    run(model, folder, tmp_path / "index")
    with index_lib.Index(tmp_path / "index") as index:
        first, vectors = index.entries(), np.array(index.vectors())
    again = run(model, folder, tmp_path / "index")
    assert again["indexed"] == [] and again["unchanged"] == 3 and again["removed"] == []
    assert {s["path"] for s in again["skipped"] if s["known"]} == {"truncated.wav", "notes.mp3", "empty.wav", "nan.wav"}
    (folder / "rain.wav").unlink()  # deleted between runs
    (folder / "nan.wav").unlink()  # an unreadable file deleted: forgotten too
    write_sound(folder / "dog.wav", 2.5, seed=7)  # changed
    write_sound(folder / "new" / "bird.ogg", 1.0, seed=8, subtype="VORBIS")  # new
    (folder / "empty.wav").write_bytes((folder / "new" / "bird.ogg").read_bytes())  # fixed since
    lines = []
    third = run(model, folder, tmp_path / "index", lines=lines)
    assert sorted(third["indexed"]) == ["dog.wav", "empty.wav", "new/bird.ogg"]
    assert third["removed"] == ["nan.wav", "rain.wav"] and third["unchanged"] == 1
    assert "removed rain.wav: deleted from" in "\n".join(lines)
    with index_lib.Index(tmp_path / "index") as index:
        entries = index.entries()
        assert sorted(entries) == ["dog.wav", "empty.wav", "field/stereo48.flac", "new/bird.ogg"]
        assert set(index.unreadable()) == {"truncated.wav", "notes.mp3"}
        assert entries["dog.wav"].seconds == pytest.approx(2.5)
        kept = entries["field/stereo48.flac"]
        np.testing.assert_array_equal(index.vectors()[kept.row], vectors[first["field/stereo48.flac"].row])
        hits = search.query(model, index, texts=["rain"], top_k=10)[0]
        assert sorted(h.entry.path for h in hits) == sorted(entries)  # nothing stale or deleted


def test_an_interrupted_run_keeps_what_it_finished_and_the_next_one_continues(model, tmp_path, monkeypatch):
    folder = tmp_path / "sounds"
    for i in range(11):
        write_sound(folder / f"s{i:02d}.wav", 2.0, seed=i)  # one segment each: 8 files fill a batch
    monkeypatch.setattr(search, "COMMIT_FILES", 1)  # commit every finished file
    calls, embed = [], model.embed_item_batch

    def interrupted(batch):  # Ctrl-C while the model runs the second batch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return embed(batch)

    monkeypatch.setattr(model, "embed_item_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(model, folder, tmp_path / "index")
    report = json.loads((tmp_path / "index" / "last_run.json").read_text())
    with index_lib.Index(tmp_path / "index") as index:
        kept = sorted(index.entries())
    assert len(kept) == BATCH_SIZE and report["interrupted"] and sorted(report["indexed"]) == kept
    monkeypatch.undo()
    rest = run(model, folder, tmp_path / "index")
    assert sorted(rest["indexed"]) == sorted({f"s{i:02d}.wav" for i in range(11)} - set(kept))
    assert rest["items"] == 11 and rest["unchanged"] == BATCH_SIZE


def test_a_two_hour_recording_is_embedded_whole_in_bounded_memory(model, tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    rate, hours = 16000, 2
    with sf.SoundFile(folder / "two_hours.flac", "w", rate, 1, "PCM_16") as f:  # silence: FLAC keeps it tiny
        block = np.zeros(rate * 60, np.int16)
        for _ in range(60 * hours):
            f.write(block)
    write_sound(folder / "short.wav", 1.0)
    tracemalloc.start()
    try:
        report = run(model, folder, tmp_path / "index")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(report["indexed"]) == ["short.wav", "two_hours.flac"]
    with index_lib.Index(tmp_path / "index") as index:
        assert index.entries()["two_hours.flac"].seconds == pytest.approx(2 * 3600)
    # Decoding it whole would hold 230 M samples (>= 460 MB as int16, 920 MB as float32).
    assert peak < 64e6, f"peak traced memory {peak / 1e6:.0f} MB"


def test_the_command_line_indexes_and_answers(model_path, tmp_path):
    folder = collection(tmp_path / "sounds")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    index = tmp_path / "index"
    out = subprocess.run([sys.executable, "-m", "hybrid_jax.search", "index", "--model", str(model_path),
                          "--audio-dir", str(folder), "--metadata", str(tags(tmp_path / "tags.csv")),
                          "--index", str(index), "--batch-size", str(BATCH_SIZE)],
                         env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped empty.wav: empty file (0 bytes)" in out.stderr + out.stdout
    assert "the index holds 3 items" in out.stdout
    asked = subprocess.run([sys.executable, "-m", "hybrid_jax.search", "query", "--index", str(index),
                            "a dog barks", "--top-k", "2"], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert asked.returncode == 0, asked.stderr[-3000:]
    lines = asked.stdout.strip().splitlines()
    assert lines[0] == "a dog barks" and len(lines) == 3
    assert lines[1].lstrip().startswith("1. +") and lines[2].lstrip().startswith("2. ")
    wrong = subprocess.run([sys.executable, "-m", "hybrid_jax.search", "query", "--index", str(tmp_path / "nope"), "x"],
                           env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert wrong.returncode != 0 and "not an index" in wrong.stderr
