"""TFDS builder for ClothoV2(.1): raw Zenodo layout or the aac-datasets layout, keywords as metadata."""
from __future__ import annotations

import pathlib

from hybrid_jax.data import csv_io
from hybrid_jax.data.prepare.builder import (
    CaptionAudioBuilder,
    Item,
    SplitPlan,
    split_keywords,
)
from hybrid_jax.data.prepare.file_index import AudioFiles
from hybrid_jax.data.prepare.report import SplitReport

# TFDS split -> the name Clotho uses in its archive, folder and CSV names.
SPLITS = {"train": "development", "validation": "validation", "test": "evaluation"}
# Clip counts of the public releases, to record which one the user has.
_VERSION_BY_COUNT = {(3839, 1045, 1045): "v2.1", (3840, 1046, 1045): "v2"}


def find_layout(root: pathlib.Path) -> tuple[str, pathlib.Path, pathlib.Path]:
    """-> (layout name, folder with the CSVs, folder holding development/ validation/ evaluation/).

    Looks at ``root`` and two levels below it, preferring the newest aac-datasets version
    folder (``CLOTHO_v2.1`` sorts after ``CLOTHO_v2``).
    """
    candidates = [root]
    for child in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
        candidates.append(child)
        candidates.extend(sorted((p for p in child.iterdir() if p.is_dir()), reverse=True))
    for folder in candidates:
        if (folder / "clotho_csv_files").is_dir() and (folder / "clotho_audio_files").is_dir():
            return f"aac-datasets ({folder.name})", folder / "clotho_csv_files", folder / "clotho_audio_files"
        if any((folder / f"clotho_captions_{name}.csv").is_file() for name in SPLITS.values()):
            return "raw Zenodo", folder, folder
    raise FileNotFoundError(
        f"no Clotho files under {root}: expected clotho_captions_development.csv beside the "
        "extracted development/ validation/ evaluation/ folders (Zenodo 4783391), or the "
        "aac-datasets layout CLOTHO_v2.1/{clotho_csv_files,clotho_audio_files}/"
    )


def _metadata_by_name(path: pathlib.Path, report: SplitReport) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    table = csv_io.read_table(path)  # ISO-8859-1 in the real files; read_table falls back to it
    csv_io.require_columns(table, ["file_name", "keywords"], path)
    if table.encoding != "utf-8":
        report.fix(path.name, f"not UTF-8: decoded as {table.encoding}")
    rows = {}
    for row in table.rows:
        rows.setdefault(row["file_name"], row)
        rows.setdefault(row["file_name"].strip(), row)
    return rows


class Clotho(CaptionAudioBuilder):
    """ClothoV2.1 audio captioning: splits train/validation/test = development/validation/evaluation."""

    name = "clotho"
    KEYWORD_KIND = "keywords"
    HOMEPAGE = "https://zenodo.org/records/4783391"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download clotho_audio_{development,validation,evaluation}.7z and the matching
    clotho_captions_*.csv / clotho_metadata_*.csv from Zenodo record 4783391, extract the
    archives beside the CSVs, and pass that folder (or an aac-datasets root) as --source.
    """

    def plan(self, root: pathlib.Path) -> dict[str, SplitPlan]:
        self.layout, csv_dir, audio_root = find_layout(root)
        plans, unused, counts = {}, [], []
        for split, clotho_name in SPLITS.items():
            captions_csv = csv_dir / f"clotho_captions_{clotho_name}.csv"
            if not captions_csv.is_file():
                self.notes.append(f"{captions_csv.name} not found: split {split} skipped")
                continue
            audio_dir = audio_root / clotho_name
            if not audio_dir.is_dir():
                raise FileNotFoundError(
                    f"{audio_dir} not found: extract clotho_audio_{clotho_name}.7z beside {captions_csv.name}"
                )
            files = AudioFiles([audio_dir])
            metadata_csv = csv_dir / f"clotho_metadata_{clotho_name}.csv"
            plans[split] = self._plan_split(captions_csv, metadata_csv, files, audio_dir)
            unused.extend(files.unclaimed())
            counts.append(plans[split].report.rows_read)
        self.unused_files = unused
        self.notes.append(f"Clotho version from row counts: {_VERSION_BY_COUNT.get(tuple(counts), 'unknown')}")
        return plans

    def _plan_split(
        self, captions_csv: pathlib.Path, metadata_csv: pathlib.Path, files: AudioFiles, audio_dir: pathlib.Path
    ) -> SplitPlan:
        report = SplitReport()
        table = csv_io.read_table(captions_csv)
        csv_io.require_columns(table, ["file_name"], captions_csv)
        if table.encoding != "utf-8":
            report.fix(captions_csv.name, f"not UTF-8: decoded as {table.encoding}")
        caption_columns = [c for c in table.header if c.startswith("caption")]
        metadata = _metadata_by_name(metadata_csv, report)
        if not metadata:
            self.notes.append(f"{metadata_csv.name} not found: keywords empty")
        items, seen = [], set()
        for row in table.rows:
            report.rows_read += 1
            name = row["file_name"]
            if name in seen:
                report.reject(name, "duplicate row: file name already listed (first row kept)")
                continue
            seen.add(name)
            captions = [row[c] for c in caption_columns if row[c].strip()]
            if not captions:
                report.reject(name, "no captions in the row")
                continue
            found = files.find(name)
            if found is None:
                report.reject(name, f"audio file missing in {audio_dir}")
                continue
            path, fix = found
            if path in files.claimed:
                report.reject(name, f"same audio file as another row ({path.name})")
                continue
            files.claim(path)
            if fix:
                report.fix(name, fix)
            meta = metadata.get(name) or metadata.get(name.strip())
            if metadata and meta is None:
                report.fix(name, "no row in the metadata CSV: keywords empty")
            keywords = split_keywords(meta["keywords"]) if meta else []
            if not keywords:
                report.conversions["empty keywords (metadata missing)"] += 1
            sound_id = (meta or {}).get("sound_id", "").strip()
            if sound_id.lower() == "not found":
                sound_id = ""
            items.append(Item(name, path, name, captions, keywords, sound_id))
        return SplitPlan(items, report)

