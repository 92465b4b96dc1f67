"""Clotho preparation from both real layouts, every bad-input case in the report, interrupted runs."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from dataset_files import (
    CLOTHO_CAPTION_HEADER,
    CLOTHO_METADATA_HEADER,
    clotho_captions,
    clotho_metadata,
    write_audio,
    write_bad_audio,
    write_csv,
)

from hybrid_jax.data.prepare import preparation
from hybrid_jax.data.records import open_split

SPLIT_DIRS = {"train": "development", "validation": "validation", "test": "evaluation"}


def write_small_split(csv_dir: pathlib.Path, audio_dir: pathlib.Path, clotho_name: str, names: list[str], **kw):
    for name in names:
        write_audio(audio_dir / clotho_name / name, 1.0)
    write_csv(csv_dir / f"clotho_captions_{clotho_name}.csv", CLOTHO_CAPTION_HEADER, [clotho_captions(n) for n in names], **kw)
    write_csv(csv_dir / f"clotho_metadata_{clotho_name}.csv", CLOTHO_METADATA_HEADER,
              [clotho_metadata(n) for n in names], encoding="latin-1")


@pytest.fixture(scope="module")
def zenodo(tmp_path_factory):
    """Raw Zenodo layout with every bad input in the development split."""
    root = tmp_path_factory.mktemp("clotho_src") / "Clotho.v2.1"
    dev = root / "development"
    write_audio(dev / "normal, with comma.wav", 1.5)
    write_audio(dev / "stereo48k.wav", 1.0, rate=48000, channels=2)
    write_audio(dev / "short.wav", 0.25)
    write_audio(dev / "Ambience Birds.wav", 1.0)  # CSV name has a leading space
    write_audio(dev / "SprayPaint&Gravel.wav", 1.0)  # CSV name has &amp;
    write_audio(dev / "raindrops on metal_police background.wav", 1.0)  # CSV name has ':'
    write_audio(dev / "orphan.wav", 1.0)  # on disk, in no row
    bad = write_bad_audio(dev)
    names = ["normal, with comma.wav", "stereo48k.wav", "short.wav", " Ambience Birds.wav",
             "SprayPaint&amp;Gravel.wav", "raindrops on metal: police background.wav", *bad]
    rows = [clotho_captions(n) for n in names]
    rows.append(clotho_captions("missing.wav"))
    rows.append(clotho_captions("short.wav"))  # duplicated file name
    rows.append(["no_captions.wav", "", "", "", "", ""])
    write_audio(dev / "no_captions.wav", 1.0)
    write_csv(root / "clotho_captions_development.csv", CLOTHO_CAPTION_HEADER, rows)
    meta = [clotho_metadata(n, "caf\xe9;bird song;;") for n in names]
    meta[1] = clotho_metadata("stereo48k.wav", "", "Not found")  # empty keywords
    write_csv(root / "clotho_metadata_development.csv", CLOTHO_METADATA_HEADER, meta, encoding="latin-1")
    # validation: BOM + CRLF captions; evaluation: plain
    write_small_split(root, root, "validation", ["v1.wav", "v2.wav"], bom=True, newline="\r\n")
    write_small_split(root, root, "evaluation", ["e1.wav"])
    out = tmp_path_factory.mktemp("clotho_out")
    report = preparation.prepare("clotho", root.parent, out, decode_threads=2)
    return root, out, report, bad


def rejected(report, split="train"):
    return {r["file"]: r["reason"] for r in report["splits"][split]["rejected"]}


def test_zenodo_report_lists_every_bad_input(zenodo):
    root, out, report, bad = zenodo
    assert report["layout"] == "raw Zenodo"
    train = report["splits"]["train"]
    assert train["rows_read"] == 14
    assert train["examples_written"] == 6
    reasons = rejected(report)
    for name, words in bad.items():
        (file,) = [f for f in reasons if f.endswith(name)]
        assert words in reasons[file], (name, reasons[file])
    assert "missing" in reasons["missing.wav"]
    assert "duplicate" in reasons["short.wav"]
    assert "no captions" in reasons["no_captions.wav"]
    fixes = {f["file"]: f["fix"] for f in train["fixes"]}
    assert "stripping" in fixes[" Ambience Birds.wav"]
    assert "&amp;" in fixes["SprayPaint&amp;Gravel.wav"]
    assert "':' -> '_'" in fixes["raindrops on metal: police background.wav"]
    assert "latin-1" in fixes["clotho_metadata_development.csv"] or "cp1252" in fixes["clotho_metadata_development.csv"]
    assert train["conversions"]["resampled from 44100 Hz"] == 5
    assert train["conversions"]["downmixed from 2 channels"] == 1
    assert any(f.endswith("orphan.wav") for f in report["unused_files"]["files"])
    for split in report["splits"].values():
        assert split["rows_read"] == split["examples_written"] + len(split["rejected"])
    on_disk = json.loads((out / "clotho" / "prepare_report.json").read_text())
    assert on_disk["splits"] == report["splits"]


def test_zenodo_examples_content(zenodo):
    _, out, _, _ = zenodo
    split = open_split("clotho", out, "train")
    by_name = {n: i for i, n in enumerate(split.file_names)}
    # the CSV's exact names are kept (scoring matches them byte for byte)
    assert set(by_name) == {"normal, with comma.wav", "stereo48k.wav", "short.wav", " Ambience Birds.wav",
                            "SprayPaint&amp;Gravel.wav", "raindrops on metal: police background.wav"}
    i = by_name["normal, with comma.wav"]
    assert split.captions[i][0] == "a sound called normal, with comma.wav, take 1"
    assert split.keywords[i] == ["café", "bird song"]  # latin-1 decoded, empty tokens dropped
    assert split.keywords[by_name["stereo48k.wav"]] == []
    assert split.num_samples[i] == 48000 and split.audio(i).dtype == np.int16
    assert split.num_samples[by_name["short.wav"]] == 8000  # short clips are kept
    stereo = split.audio(by_name["stereo48k.wav"]).astype(np.float32) / 32767
    assert len(stereo) == 32000
    expected = 0.3 * (np.sin(2 * np.pi * 440 * np.arange(32000) / 32000) + np.sin(2 * np.pi * 440 * np.arange(32000) / 32000 + 1)) / 2
    assert np.abs(stereo[100:-100] - expected[100:-100]).max() < 0.01  # downmix = channel mean
    assert split.keyword_kind == "keywords"
    assert len(open_split("clotho", out, "validation")) == 2


def test_fresh_process_reads_with_tfds_data_source(zenodo):
    _, out, _, _ = zenodo
    code = (
        "import tensorflow_datasets as tfds, sys;"
        f"src = tfds.data_source('clotho', data_dir={str(out)!r}, split='test', download=False);"
        "ex = src[0]; print(len(src), ex['file_name'].decode(), ex['audio'].dtype, ex['num_samples'])"
    )
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "e1.wav", "int16", "32000"]


def test_aac_datasets_layout(tmp_path):
    root = tmp_path / "data" / "CLOTHO_v2.1"
    for clotho_name in SPLIT_DIRS.values():
        write_small_split(root / "clotho_csv_files", root / "clotho_audio_files", clotho_name, [f"{clotho_name}_a.wav"])
    (tmp_path / "data" / "CLOTHO_v2.1" / "archives").mkdir()
    report = preparation.prepare("clotho", tmp_path / "data", tmp_path / "out", decode_threads=1)
    assert report["layout"].startswith("aac-datasets")
    assert {s: v["examples_written"] for s, v in report["splits"].items()} == {"train": 1, "validation": 1, "test": 1}
    assert open_split("clotho", tmp_path / "out", "test").file_names == ["evaluation_a.wav"]


def test_missing_source_files_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist or is empty"):
        preparation.prepare("clotho", tmp_path / "src", tmp_path / "out")
    write_audio(tmp_path / "src" / "stray.wav")
    with pytest.raises(FileNotFoundError, match="clotho_captions_development.csv"):
        preparation.prepare("clotho", tmp_path / "src", tmp_path / "out")


@pytest.fixture
def small_source(tmp_path):
    root = tmp_path / "src"
    for clotho_name in SPLIT_DIRS.values():
        write_small_split(root, root, clotho_name, [f"{clotho_name}_{i}.wav" for i in range(3)])
    return root


def test_killed_run_leaves_nothing_that_looks_complete_and_rerun_finishes(tmp_path, small_source):
    out = tmp_path / "out"
    # A hard kill (no cleanup handlers) in the middle of writing the first split.
    code = (
        "import os, sys\n"
        "from hybrid_jax.data.prepare import builder, preparation\n"
        "calls = []\n"
        "original = builder.CaptionAudioBuilder._decode\n"
        "def dying(self, item):\n"
        "    calls.append(item)\n"
        "    if len(calls) == 2: os._exit(9)\n"
        "    return original(self, item)\n"
        "builder.CaptionAudioBuilder._decode = dying\n"
        f"preparation.prepare('clotho', {str(small_source)!r}, {str(out)!r}, decode_threads=1)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 9, result.stderr[-2000:]
    assert preparation.leftover_incomplete("clotho", out)  # TFDS's temp dir survived the kill
    assert not (out / "clotho" / "1.0.0").exists()
    assert not (out / "clotho" / "prepare_report.json").exists()
    assert not preparation.is_prepared("clotho", out)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        open_split("clotho", out, "train")
    report = preparation.prepare("clotho", small_source, out)
    assert report["status"] == "prepared" and report["removed_incomplete"]
    assert not preparation.leftover_incomplete("clotho", out)
    assert preparation.is_prepared("clotho", out)
    assert len(open_split("clotho", out, "train")) == 3


def test_interrupt_then_rerun_and_report_restore(tmp_path, small_source, monkeypatch):
    from hybrid_jax.data.prepare import builder

    out = tmp_path / "out"
    original = builder.CaptionAudioBuilder._decode

    def interrupted(self, item):
        if item.file_name.endswith("_2.wav"):
            raise KeyboardInterrupt
        return original(self, item)

    monkeypatch.setattr(builder.CaptionAudioBuilder, "_decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        preparation.prepare("clotho", small_source, out)
    assert not (out / "clotho" / "1.0.0").exists() and not preparation.leftover_incomplete("clotho", out)
    monkeypatch.setattr(builder.CaptionAudioBuilder, "_decode", original)
    first = preparation.prepare("clotho", small_source, out)
    assert first["status"] == "prepared"
    # Killed after TFDS's rename but before the report: the report comes back from the metadata.
    (out / "clotho" / "prepare_report.json").unlink()
    assert not preparation.is_prepared("clotho", out)
    restored = preparation.prepare("clotho", small_source, out)
    assert restored["status"] == "report restored" and restored["splits"] == first["splits"]
    assert preparation.prepare("clotho", small_source, out)["status"] == "already prepared"
    assert preparation.prepare("clotho", small_source, out, overwrite=True)["status"] == "prepared"


def test_cli_prints_summary(tmp_path, small_source, capsys):
    from hybrid_jax import prepare as cli

    assert cli.main(["clotho", "--source", str(small_source), "--data-dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "written       3" in printed and "prepare_report.json" in printed
    assert tfds.data_source("clotho", data_dir=str(tmp_path / "out"), split="train", download=False)[0]["audio"].dtype == np.int16
