"""AudioCaps preparation: the CSVs, every audio naming of the download tools, AudioSet labels joined
in class-index order, clips without labels dropped (the authors' code) unless kept on request."""
import numpy as np
import pytest
from dataset_files import write_audio, write_bad_audio, write_csv

from hybrid_jax.data import csv_io
from hybrid_jax.data.prepare import preparation
from hybrid_jax.data.records import open_split

HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]
LABELS = (
    'index,mid,display_name\n'
    '0,/m/09x0r,"Speech"\n'
    '1,/m/05zppz,"Male speech, man speaking"\n'
    '2,/m/015p6,"Bird"\n'
    '3,/t/dd00088,"Gush"\n'
)
SEGMENTS = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=4, num_segs=4, num_unique_labels=527, num_positive_labels=7\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
    '--aac_clip1, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
    'dl_clip____, 0.000, 10.000, "/m/015p6"\n'
    'ytonly_clip, 50.000, 60.000, "/t/dd00088,/m/015p6"\n'  # CSV order Gush, Bird; index order Bird, Gush
    'testclip001, 0.000, 10.000, "/m/09x0r,/m/09x0r"\n'  # a repeated id counts once
)


@pytest.fixture(scope="module")
def audiocaps(tmp_path_factory):
    root = tmp_path_factory.mktemp("audiocaps_src")
    audio = root / "AUDIOCAPS" / "audio_32000Hz"
    # aac-datasets naming {ytid}_{start}.flac at 32 kHz
    write_audio(audio / "train" / "--aac_clip1_30.flac", 10.0, rate=32000)
    # xieh97 naming {ytid}_{start_ms}_{end_ms}.wav, 48 kHz stereo, clipped short (0.5 s)
    write_audio(root / "AudioCaps" / "train" / "xieh97clip1_12000_22000.wav", 0.5, rate=48000, channels=2)
    # audiocaps-download naming: one copy per caption id (5 for a val clip), ogg
    for cid in range(100, 105):
        write_audio(root / "val" / f"{cid}.ogg", 2.0, rate=44100)
    # PANNs/salsa naming Y{ytid}.wav (start not in the name)
    write_audio(root / "audioset" / "Yytonly_clip.wav", 1.0, rate=16000)
    write_audio(root / "audioset" / "Yunused_clip.wav", 1.0, rate=16000)  # no row refers to it
    write_audio(root / "test" / "testclip001_0.flac", 1.0, rate=32000)
    # v1 CSVs: UTF-8 with curly quotes and CRLF; a latin-1 test CSV; quoted captions with commas
    write_csv(root / "train.csv", HEADER, [
        ["1", "--aac_clip1", "30", "A man speaks, then a bird \u201csings\u201d"],
        ["2", "xieh97clip1", "12", "Water splashes"],
        ["3", "missing_cli", "0", "A clip removed from YouTube"],
        ["4", "ytonly_clip", "40", "Gushing water and a bird"],  # segment says 50: ytid fallback
    ], newline="\r\n")
    write_csv(root / "val.csv", HEADER, [[str(100 + k), "dl_clip____", "0", f"Birds chirp, take {k}"] for k in range(5)])
    write_csv(root / "test.csv", HEADER, [["200", "testclip001", "0", "Caf\xe9 noise"]], encoding="latin-1")
    (root / "class_labels_indices.csv").write_text(LABELS)
    (root / "AUDIOCAPS" / "unbalanced_train_segments.csv").write_text(SEGMENTS)
    out = tmp_path_factory.mktemp("audiocaps_out")
    return root, out, preparation.prepare("audiocaps", root, out, decode_threads=2)


@pytest.fixture(scope="module")
def audiocaps_kept(audiocaps, tmp_path_factory):
    root = audiocaps[0]
    out = tmp_path_factory.mktemp("audiocaps_kept")
    return out, preparation.prepare("audiocaps", root, out, decode_threads=2, keep_unlabelled=True)


def test_audioset_files_parse():
    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        labels = pathlib.Path(tmp) / "labels.csv"
        labels.write_text(LABELS)
        table = csv_io.read_table(labels)
        assert table.rows[1]["display_name"] == "Male speech, man speaking"
        segments = pathlib.Path(tmp) / "segments.csv"
        segments.write_text(SEGMENTS)
        cols = ["YTID", "start_seconds", "end_seconds", "positive_labels"]
        rows = csv_io.read_table(segments, fieldnames=cols, comment="#", skip_initial_space=True).rows
        assert len(rows) == 4 and rows[0]["positive_labels"] == "/m/09x0r,/m/05zppz"
        assert rows[0]["YTID"] == "--aac_clip1" and rows[0]["start_seconds"] == "30.000"


def test_report(audiocaps):
    _, _, report = audiocaps
    train, val, test = (report["splits"][s] for s in ("train", "validation", "test"))
    assert (train["rows_read"], train["examples_written"]) == (4, 2)
    assert train["rejected"] == [  # in CSV order
        {"file": "xieh97clip1_12", "reason": "no AudioSet labels (dropped as in the authors' code; "
                                             "--keep-unlabelled keeps it)"},
        {"file": "missing_cli_0", "reason": "audio missing (removed from YouTube or not downloaded)"},
    ]
    assert report["options"]["keep_unlabelled"] is False
    assert (val["rows_read"], val["examples_written"], test["examples_written"]) == (1, 1, 1)
    fixes = {f["file"]: f["fix"] for f in train["fixes"]}
    assert "youtube id only" in fixes["ytonly_clip_40"]
    assert "audiocap_id" in {f["file"]: f["fix"] for f in val["fixes"]}["dl_clip_____0"]
    assert "latin-1" in str(test["fixes"]) or "cp1252" in str(test["fixes"])
    assert train["conversions"]["AudioSet labels joined by youtube id only"] == 1
    assert "no AudioSet labels (metadata missing)" not in train["conversions"]
    # The dropped clip's file was matched to its row: it is not an unused file.
    assert [f.rsplit("/", 1)[-1] for f in report["unused_files"]["files"]] == ["Yunused_clip.wav"]
    for split in report["splits"].values():
        assert split["rows_read"] == split["examples_written"] + len(split["rejected"])


def test_examples(audiocaps):
    _, out, _ = audiocaps
    train = open_split("audiocaps", out, "train")
    assert train.keyword_kind == "labels"
    by_id = {n: i for i, n in enumerate(train.file_names)}
    i = by_id["--aac_clip1_30.flac"]
    assert train.captions[i] == ["A man speaks, then a bird \u201csings\u201d"]
    assert train.keywords[i] == ["Speech", "Male speech, man speaking"]
    assert train.num_samples[i] == 320000
    assert "xieh97clip1_12000_22000.wav" not in by_id  # no AudioSet labels: dropped
    assert train.keywords[by_id["Yytonly_clip.wav"]] == ["Bird", "Gush"]  # class-index order
    val = open_split("audiocaps", out, "validation")
    assert len(val) == 1 and val.captions[0] == [f"Birds chirp, take {k}" for k in range(5)]
    assert val.keywords[0] == ["Bird"] and val.num_samples[0] == 64000
    test = open_split("audiocaps", out, "test")
    assert test.captions[0] == ["Caf\xe9 noise"] and test.keywords[0] == ["Speech"]
    assert test.audio(0).dtype == np.int16


def test_keep_unlabelled_keeps_them_with_empty_metadata(audiocaps_kept):
    out, report = audiocaps_kept
    train = report["splits"]["train"]
    assert (train["rows_read"], train["examples_written"], len(train["rejected"])) == (4, 3, 1)
    assert train["conversions"]["no AudioSet labels (metadata missing)"] == 1
    assert report["options"]["keep_unlabelled"] is True
    split = open_split("audiocaps", out, "train")
    j = {n: i for i, n in enumerate(split.file_names)}["xieh97clip1_12000_22000.wav"]
    assert split.num_samples[j] == 16000 and split.keywords[j] == []  # short stereo 48k kept


def test_missing_label_files_fail_unless_unlabelled_clips_are_kept(audiocaps, tmp_path):
    import shutil

    root = tmp_path / "no_labels"
    shutil.copytree(audiocaps[0], root, ignore=shutil.ignore_patterns("*_segments.csv", "class_labels_indices.csv"))
    with pytest.raises(FileNotFoundError, match="--keep-unlabelled"):
        preparation.prepare("audiocaps", root, tmp_path / "out", decode_threads=2)


def test_bad_rows_and_corrupt_audio_are_reported_and_counted(tmp_path):
    """Corrupt audio files, rows without a youtube_id or with a short/garbled start_time, clips
    whose caption rows are all empty, and empty caption rows in a kept clip: each is listed with
    its clip/file and reason (or as a fix), and rows_read = examples_written + rejected."""
    root = tmp_path / "src"
    write_audio(root / "audio" / "goodclip001_0.wav", 1.0, rate=32000)
    write_audio(root / "audio" / "emptycapt01_0.wav", 1.0, rate=32000)
    bad = write_bad_audio(tmp_path / "bad")  # {file name: words expected in the reason}
    ytids = {name: f"badaudio{i:03d}" for i, name in enumerate(sorted(bad))}
    for name, ytid in ytids.items():
        (root / "audio").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / name).rename(root / "audio" / f"{ytid}_0.wav")
    rows = [
        ["1", "goodclip001", "0", "A bell rings"],
        ["2", "goodclip001", "0", "   "],  # an empty caption row of a kept clip
        ["3", "emptycapt01", "0", ""],
        ["4", "emptycapt01", "0", "  "],
        ["5", "", "0", "A row without a clip"],  # line 6 of train.csv
        ["6", "shortrow001"],  # too few cells: start_time and caption missing
        ["7", "garbled0001", "ten", "A garbled start"],
    ] + [[str(10 + i), ytid, "0", f"Corrupt audio {i}"] for i, ytid in enumerate(ytids.values())]
    write_csv(root / "train.csv", HEADER, rows)
    out = tmp_path / "out"
    report = preparation.prepare("audiocaps", root, out, decode_threads=1, keep_unlabelled=True)  # no AudioSet labels here
    train = report["splits"]["train"]
    reasons = {r["file"]: r["reason"] for r in train["rejected"]}
    assert len(reasons) == len(train["rejected"]) == 4 + len(bad)
    assert reasons["train.csv line 6"] == "no youtube_id in the row"
    assert reasons["shortrow001_"] == "bad start_time ''"
    assert reasons["garbled0001_ten"] == "bad start_time 'ten'"
    assert reasons["emptycapt01_0"] == "no captions for the clip (2 empty caption row(s))"
    for name, ytid in ytids.items():
        (reason,) = [r for f, r in reasons.items() if f.endswith(f"{ytid}_0.wav")]
        assert bad[name] in reason, (name, reason)
    assert {"file": "goodclip001_0", "fix": "1 empty caption row(s) dropped, 1 kept"} in train["fixes"]
    assert (train["rows_read"], train["examples_written"]) == (5 + len(bad), 1)  # 5 clips or bad rows
    assert train["rows_read"] == train["examples_written"] + len(train["rejected"])
    split = open_split("audiocaps", out, "train")
    assert split.file_names == ["goodclip001_0.wav"] and split.captions == [["A bell rings"]]


def test_csv_with_wrong_columns_fails_at_once_naming_file_and_column(tmp_path):
    root = tmp_path / "src"
    write_audio(root / "goodclip001_0.wav", 1.0, rate=32000)
    write_csv(root / "train.csv", ["audiocap_id", "youtube_id", "start_time", "captions"],
              [["1", "goodclip001", "0", "A bell rings"]])
    with pytest.raises(ValueError, match=r"train\.csv: missing column\(s\) \['caption'\]"):
        preparation.prepare("audiocaps", root, tmp_path / "out", keep_unlabelled=True)
    assert not preparation.is_prepared("audiocaps", tmp_path / "out")
