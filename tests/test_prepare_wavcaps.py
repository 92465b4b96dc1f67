"""WavCaps FreeSound preparation: the JSON, {id}.flac audio, tags, the Clotho blacklist, long clips."""
import pytest
from dataset_files import write_audio, write_bad_audio, write_csv, write_json

from hybrid_jax.data.prepare import preparation
from hybrid_jax.data.prepare.wavcaps import load_blacklist
from hybrid_jax.data.records import open_split


def entry(sound_id, caption="A dog barks twice.", tags=("dog", "Bark"), **extra):
    e = {"id": sound_id, "file_name": f"upload {sound_id}.wav", "href": f"/people/u/sounds/{sound_id}/",
         "description": "d", "author": "u", "duration": 2.0, "download_link": "x", "caption": caption,
         "audio": "wav_path", **extra}
    if tags is not None:
        e["tags"] = tags if isinstance(tags, str) else list(tags)
    return e


@pytest.fixture(scope="module")
def wavcaps(tmp_path_factory):
    root = tmp_path_factory.mktemp("wavcaps_src")
    audio = root / "WavCaps" / "Audio" / "FreeSound"
    for sid in ("1001", "1002", "1003", "1004", "1006", "1007"):
        write_audio(audio / f"{sid}.flac", 1.0, rate=32000)
    write_audio(audio / "1005.flac", 3.0, rate=44100, channels=2)  # longer than max_seconds: cropped
    write_audio(audio / "9999.flac", 1.0, rate=32000)  # no entry
    entries = [
        entry("1001"),
        {k: v for k, v in entry("1002").items() if k != "tags"},  # tags missing
        entry("1003", tags=None) | {"tags": None},  # tags null
        entry("1004"),  # blacklisted (Clotho overlap)
        entry("1005", tags=["long"]),
        entry("1006", caption=""),  # empty caption
        entry("1001", caption="duplicate"),
        entry("4242"),  # audio missing
        entry(1007, tags="single tag"),  # int id, tags as a bare string
    ]
    write_json(root / "WavCaps" / "json_files" / "FreeSound" / "fsd_final.json",
               {"num_captions_per_audio": 1, "data": entries})
    blacklist = write_json(root / "blacklist_exclude_all_ac.json", {"AudioSet": ["Yabc.wav"], "FreeSound": ["1004", "55"]})
    out = tmp_path_factory.mktemp("wavcaps_out")
    report = preparation.prepare("wavcaps_freesound", root, out, blacklist=str(blacklist), max_seconds=2.0)
    return out, report


def test_report(wavcaps):
    _, report = wavcaps
    train = report["splits"]["train"]
    assert (train["rows_read"], train["examples_written"]) == (9, 5)
    reasons = {(r["file"], r["reason"]) for r in train["rejected"]}
    assert reasons == {
        ("1004", "in the blacklist (overlaps an evaluation set)"),
        ("1006", "no caption"),
        ("1001", "duplicate id (first entry kept)"),
        ("4242", "audio missing ({id}.flac not found)"),
    }
    assert any("1005.flac" in f["file"] and "cropped from 3.0 s" in f["fix"] for f in train["fixes"])
    assert train["conversions"]["no tags (metadata missing)"] == 2
    assert report["unused_files"]["count"] == 3  # 9999.flac, blacklisted 1004, captionless 1006
    assert report["options"]["max_seconds"] == 2.0


def test_examples(wavcaps):
    out, _ = wavcaps
    split = open_split("wavcaps_freesound", out, "train")
    assert split.keyword_kind == "tags"
    by_name = {n: i for i, n in enumerate(split.file_names)}
    assert set(by_name) == {"1001.flac", "1002.flac", "1003.flac", "1005.flac", "1007.flac"}
    assert split.captions[by_name["1001.flac"]] == ["A dog barks twice."]
    assert split.keywords[by_name["1001.flac"]] == ["dog", "Bark"]
    assert split.keywords[by_name["1002.flac"]] == [] and split.keywords[by_name["1003.flac"]] == []
    assert split.keywords[by_name["1007.flac"]] == ["single tag"]
    assert split.num_samples[by_name["1005.flac"]] == 64000  # cropped to 2 s


def test_blacklist_formats(tmp_path):
    assert load_blacklist(write_json(tmp_path / "b.json", {"FreeSound": [1, "2 "]})) == {"1", "2"}
    csv_path = write_csv(tmp_path / "b.csv", ["index", "id"], [["0", "11"], ["1", "12"]])
    assert load_blacklist(csv_path) == {"11", "12"}
    dcase = write_csv(tmp_path / "d.csv", ["sound_id"], [["7"], ["8"]])
    assert load_blacklist(dcase) == {"7", "8"}
    bare = tmp_path / "bare.csv"
    bare.write_text("5\n6\n")
    assert load_blacklist(bare) == {"5", "6"}


def test_split_with_no_usable_audio_fails_with_a_report(tmp_path):
    import json

    from hybrid_jax.data.prepare.builder import NoUsableExamples

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "1.flac").write_bytes(b"not audio")
    write_json(tmp_path / "src" / "fsd_final_2s.json", {"data": [entry("1")]})
    with pytest.raises(NoUsableExamples):
        preparation.prepare("wavcaps_freesound", tmp_path / "src", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "wavcaps_freesound" / "prepare_report.json").read_text())
    assert report["status"].startswith("failed")
    assert report["splits"]["train"]["rejected"][0]["reason"].startswith("cannot decode")
    assert not preparation.is_prepared("wavcaps_freesound", tmp_path / "out")


def test_bad_entries_and_corrupt_audio_are_reported_and_counted(tmp_path):
    """Entries that are not objects, without an id, with a missing/non-text/blank caption, and
    corrupt audio files: each rejected with its entry/file and reason; the counts reconcile."""
    root = tmp_path / "src"
    write_audio(root / "audio" / "3001.flac", 1.0, rate=32000)
    bad = write_bad_audio(tmp_path / "bad")  # {file name: words expected in the reason}
    ids = {name: str(3100 + i) for i, name in enumerate(sorted(bad))}
    for name, sound_id in ids.items():
        (tmp_path / "bad" / name).rename(root / "audio" / f"{sound_id}.wav")
    entries = [
        entry("3001"),
        "a bare string", None, 42, ["a", "list"],  # entries #2-#5: not objects
        {k: v for k, v in entry("3002").items() if k != "id"},  # entry #6
        entry("3003", caption=7), entry("3004", caption="   "), entry("3005", caption=None),
    ] + [entry(sound_id, caption=f"corrupt {name}") for name, sound_id in ids.items()]
    write_json(root / "fsd_final.json", {"data": entries})
    report = preparation.prepare("wavcaps_freesound", root, tmp_path / "out", decode_threads=1)
    train = report["splits"]["train"]
    reasons = {r["file"]: r["reason"] for r in train["rejected"]}
    assert len(reasons) == len(train["rejected"]) == 8 + len(bad)
    assert reasons["entry #2"] == 'not a JSON object: "a bare string"'
    assert reasons["entry #3"] == "not a JSON object: null"
    assert reasons["entry #4"] == "not a JSON object: 42"
    assert reasons["entry #5"] == 'not a JSON object: ["a", "list"]'
    assert reasons["entry #6"] == "entry has no id"
    assert reasons["3003"] == reasons["3004"] == reasons["3005"] == "no caption"
    for name, sound_id in ids.items():
        (reason,) = [r for f, r in reasons.items() if f.endswith(f"/{sound_id}.wav")]
        assert bad[name] in reason, (name, reason)
    assert (train["rows_read"], train["examples_written"]) == (9 + len(bad), 1)
    assert train["rows_read"] == train["examples_written"] + len(train["rejected"])
    assert open_split("wavcaps_freesound", tmp_path / "out", "train").file_names == ["3001.flac"]


@pytest.mark.parametrize("text,words", [
    ('{"data": [{"id": "1", "caption": "cut', "is not valid JSON"),  # truncated download
    ('{"num_captions_per_audio": 1}', "no list of entries"),
    ('{"data": {"id": "1"}}', "no list of entries"),
    ("42", "no list of entries"),
])
def test_malformed_json_fails_at_once_naming_the_file(tmp_path, text, words):
    root = tmp_path / "src"
    write_audio(root / "1.flac", 1.0, rate=32000)
    (root / "fsd_final.json").write_text(text)
    with pytest.raises(ValueError, match=rf"fsd_final\.json.*{words}"):
        preparation.prepare("wavcaps_freesound", root, tmp_path / "out")
    assert not preparation.is_prepared("wavcaps_freesound", tmp_path / "out")
