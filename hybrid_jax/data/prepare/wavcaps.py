"""TFDS builder for the WavCaps FreeSound subset: fsd_final.json, {id}.flac audio, tags as metadata."""
from __future__ import annotations

import json
import pathlib

from hybrid_jax.data import csv_io
from hybrid_jax.data.prepare.builder import CaptionAudioBuilder, Item, SplitPlan
from hybrid_jax.data.prepare.file_index import AudioFiles
from hybrid_jax.data.prepare.report import SplitReport

JSON_NAMES = ("fsd_final.json", "fsd_final_2s.json")  # the current name first, then the 2023 one


def find_json(root: pathlib.Path) -> pathlib.Path:
    for name in JSON_NAMES:
        found = sorted(root.rglob(name))
        if found:
            return found[0]
    raise FileNotFoundError(f"no {' or '.join(JSON_NAMES)} under {root} (WavCaps json_files/FreeSound/)")


def load_blacklist(path: str | pathlib.Path) -> set[str]:
    """FreeSound ids to exclude, as strings.

    Accepts the WavCaps JSON (``{"FreeSound": [...], "AudioSet": [...]}``) or a CSV whose
    ``id``/``sound_id`` column (else the first column) holds the ids (aac-datasets, DCASE).
    """
    path = pathlib.Path(path)
    if path.suffix.lower() == ".json":
        data = json.loads(csv_io.decode_bytes(path.read_bytes())[0])
        ids = data.get("FreeSound", []) if isinstance(data, dict) else data
        return {str(i).strip() for i in ids}
    table = csv_io.read_table(path)
    if not table.header:
        return set()
    column = next((c for c in ("id", "sound_id") if c in table.header), table.header[0])
    ids = {row[column].strip() for row in table.rows}
    if column.isdigit():  # no header row: the first line was already an id
        ids.add(column)
    return ids


def tags_of(entry: dict) -> list[str]:
    """Raw FreeSound tags; a missing/None value is [], a bare string becomes one tag."""
    tags = entry.get("tags")
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = [tags]
    return [str(t).strip() for t in tags if str(t).strip()]


class WavcapsFreesound(CaptionAudioBuilder):
    """WavCaps FreeSound subset (one caption per clip), optionally minus a Clotho blacklist."""

    name = "wavcaps_freesound"
    KEYWORD_KIND = "tags"
    HOMEPAGE = "https://huggingface.co/datasets/cvssp/WavCaps"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put WavCaps' json_files/FreeSound/fsd_final.json and the unzipped FreeSound audio
    ({id}.flac, any folder depth; merge the .z01... parts with `zip -FF` first) under --source.
    """

    def __init__(self, *, blacklist: str | None = None, **kwargs):
        self._blacklist = blacklist
        super().__init__(**kwargs)
        self.options["blacklist"] = blacklist

    def plan(self, root: pathlib.Path) -> dict[str, SplitPlan]:
        json_path = find_json(root)
        self.layout = f"{json_path.relative_to(root)}"
        blacklist = load_blacklist(self._blacklist) if self._blacklist else set()
        if self._blacklist:
            self.notes.append(f"blacklist {self._blacklist}: {len(blacklist)} FreeSound ids")
        try:
            data = json.loads(csv_io.decode_bytes(json_path.read_bytes())[0])
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_path} is not valid JSON ({e}); re-download it") from e
        entries = data.get("data") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ValueError(f'{json_path}: no list of entries (expected {{"data": [...]}} or a list); re-download it')
        files = AudioFiles([root])
        if not len(files) and (any(root.rglob("*.z01")) or any(root.rglob("*.zip"))):
            raise FileNotFoundError(
                f"no audio under {root}, only zip parts: merge them (zip -FF FreeSound.zip --out "
                "FreeSound_merged.zip) and unzip before preparing"
            )
        report, items, seen = SplitReport(), [], set()
        for entry in entries:
            report.rows_read += 1
            if not isinstance(entry, dict):
                report.reject(f"entry #{report.rows_read}", f"not a JSON object: {json.dumps(entry)[:80]}")
                continue
            sound_id = str(entry.get("id", "")).strip()
            label = sound_id or f"entry #{report.rows_read}"
            caption = entry.get("caption")
            if not sound_id:
                report.reject(label, "entry has no id")
            elif sound_id in seen:
                report.reject(label, "duplicate id (first entry kept)")
            elif sound_id in blacklist:
                report.reject(label, "in the blacklist (overlaps an evaluation set)")
            elif not isinstance(caption, str) or not caption.strip():
                report.reject(label, "no caption")
            elif (path := files.find_stem(sound_id)) is None:
                report.reject(label, "audio missing ({id}.flac not found)")
            else:
                seen.add(sound_id)
                files.claim(path)
                tags = tags_of(entry)
                if not tags:
                    report.conversions["no tags (metadata missing)"] += 1
                items.append(Item(sound_id, path, path.name, [caption], tags, sound_id))
        self.unused_files = files.unclaimed()
        return {"train": SplitPlan(items, report)}
