"""TFDS builder for AudioCaps: the CSVs, the user's audio under any common naming, AudioSet labels."""
from __future__ import annotations

import collections
import pathlib
import re

from hybrid_jax.data import csv_io
from hybrid_jax.data.prepare.builder import CaptionAudioBuilder, Item, SplitPlan
from hybrid_jax.data.prepare.file_index import AudioFiles
from hybrid_jax.data.prepare.report import SplitReport

SPLITS = {"train": "train", "validation": "val", "test": "test"}
# Where the CSVs live in the common layouts, in order of preference (v1 before v2: the paper's).
_CSV_DIRS = (".", "csv_files_v1", "AUDIOCAPS/csv_files_v1", "AUDIOCAPS", "dataset",
             "csv_files_v2", "AUDIOCAPS/csv_files_v2", "dataset2.0")
# File stems of the download tools (datasets.md §2.2); YouTube ids are exactly 11 characters.
_CLIP_STEM = re.compile(r"^Y?(?P<ytid>[\w-]{11})_(?P<start>\d+)(?:\.\d+)?$")  # aac-datasets
_MS_STEM = re.compile(r"^Y?(?P<ytid>[\w-]{11})_(?P<start_ms>\d+)_(?P<end_ms>\d+)$")  # xieh97
_YTID_STEM = re.compile(r"^Y?(?P<ytid>[\w-]{11})$")  # PANNs / salsa mirrors
_CAPTION_ID_STEM = re.compile(r"^\d{1,9}$")  # audiocaps-download, one copy per caption


def find_csv_dir(root: pathlib.Path) -> pathlib.Path:
    for rel in _CSV_DIRS:
        folder = root / rel
        if any((folder / f"{name}.csv").is_file() for name in SPLITS.values()):
            return folder
    raise FileNotFoundError(
        f"no AudioCaps train.csv/val.csv/test.csv in {root} or its {list(_CSV_DIRS[1:])} subfolders"
    )


class AudioNames:
    """The audio files indexed by every naming scheme the download tools use."""

    def __init__(self, files: AudioFiles):
        self.files = files
        self.by_clip, self.by_ytid, self.by_caption_id = {}, {}, {}
        for stem, paths in files.by_stem.items():
            if m := _CLIP_STEM.match(stem):
                self.by_clip.setdefault((m["ytid"], int(m["start"])), paths[0])
            elif m := _MS_STEM.match(stem):
                self.by_clip.setdefault((m["ytid"], int(m["start_ms"]) // 1000), paths[0])
            elif m := _YTID_STEM.match(stem):
                self.by_ytid.setdefault(m["ytid"], paths[0])
            elif _CAPTION_ID_STEM.match(stem):
                self.by_caption_id[stem] = paths
        for (ytid, _), path in self.by_clip.items():
            self.by_ytid.setdefault(ytid, path)

    def find(self, ytid: str, start: int, caption_ids: list[str]) -> tuple[pathlib.Path, str | None] | None:
        """Clip -> (path, fix or None): by (ytid, start), by caption id, then by ytid alone."""
        if (ytid, start) in self.by_clip:
            return self.by_clip[(ytid, start)], None
        copies = [p for cid in caption_ids for p in self.by_caption_id.get(cid, [])]
        if copies:
            for extra in copies[1:]:  # the other per-caption copies of the same clip
                self.files.claim(extra)
            return copies[0], f"found by audiocap_id ({copies[0].name}; {len(copies)} copies)"
        if ytid in self.by_ytid:
            return self.by_ytid[ytid], f"matched by youtube id only ({self.by_ytid[ytid].name})"
        return None


def load_audioset_labels(root: pathlib.Path, notes: list[str]):
    """-> (labels by (ytid, start s), labels by ytid), display names; empty when files are absent.

    ``class_labels_indices.csv`` has quoted display names with commas; the segment files
    have ``#`` comment lines and comma+space rows. All three segment files are joined. A clip's
    labels are in class-index order (the authors' code takes ``np.where(target)`` of the multi-hot
    vector), not in the order the segment file lists them; ids missing from the class table come
    last, as they are.
    """
    index_files = sorted(root.rglob("class_labels_indices.csv"))
    if not index_files:
        notes.append("class_labels_indices.csv not found: AudioSet label keywords are empty")
        return {}, {}
    table = csv_io.read_table(index_files[0])
    csv_io.require_columns(table, ["mid", "display_name"], index_files[0])
    names = {row["mid"].strip(): row["display_name"].strip() for row in table.rows}
    order = {}
    for position, row in enumerate(table.rows):
        try:
            order[row["mid"].strip()] = int(row.get("index") or position)
        except ValueError:
            order[row["mid"].strip()] = position
    by_clip, by_ytid = {}, {}
    segment_files = sorted(root.rglob("*_segments.csv"))
    if not segment_files:
        notes.append("no *_segments.csv found: AudioSet label keywords are empty")
    for path in segment_files:
        columns = ["YTID", "start_seconds", "end_seconds", "positive_labels"]
        for row in csv_io.read_table(path, fieldnames=columns, comment="#", skip_initial_space=True).rows:
            try:
                start = int(float(row["start_seconds"]))
            except ValueError:
                continue
            mids = list(dict.fromkeys(m.strip() for m in row["positive_labels"].split(",") if m.strip()))
            mids.sort(key=lambda m: order.get(m, len(order)))  # stable: unknown ids keep their order
            labels = [names.get(m, m) for m in mids]
            by_clip.setdefault((row["YTID"].strip(), start), labels)
            by_ytid.setdefault(row["YTID"].strip(), labels)
    return by_clip, by_ytid


class Audiocaps(CaptionAudioBuilder):
    """AudioCaps (v1 or v2 CSVs): clips keyed by (youtube_id, start_time), AudioSet labels as keywords."""

    name = "audiocaps"
    KEYWORD_KIND = "labels"
    HOMEPAGE = "https://audiocaps.github.io/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put AudioCaps' train.csv/val.csv/test.csv and your downloaded audio (any of the
    aac-datasets, audiocaps-download, xieh97 or Y{ytid} namings) under --source, plus
    AudioSet's class_labels_indices.csv and *_segments.csv for the label keywords.
    """

    def __init__(self, *, csv_dir: str | None = None, keep_unlabelled: bool = False, **kwargs):
        """``keep_unlabelled``: keep clips that have no AudioSet labels (with empty metadata); by
        default they are dropped, as the authors' AudioCaps dataset drops them."""
        self._csv_dir = csv_dir
        self._keep_unlabelled = keep_unlabelled
        super().__init__(**kwargs)
        self.options["keep_unlabelled"] = keep_unlabelled

    def plan(self, root: pathlib.Path) -> dict[str, SplitPlan]:
        csv_dir = pathlib.Path(self._csv_dir) if self._csv_dir else find_csv_dir(root)
        self.layout = f"CSVs in {csv_dir}"
        files = AudioFiles([root])
        names = AudioNames(files)
        by_clip, by_ytid = load_audioset_labels(root, self.notes)
        if not by_ytid and not self._keep_unlabelled:
            raise FileNotFoundError(
                f"{root}: no AudioSet labels (class_labels_indices.csv and *_segments.csv) found; they are "
                "needed to drop the clips without labels, as the authors' AudioCaps does. Add them, or "
                "keep every clip with empty metadata (--keep-unlabelled)")
        plans = {}
        for split, csv_name in SPLITS.items():
            path = csv_dir / f"{csv_name}.csv"
            if not path.is_file():
                self.notes.append(f"{path.name} not found: split {split} skipped")
                continue
            plans[split] = self._plan_split(path, names, by_clip, by_ytid)
        self.unused_files = files.unclaimed()
        self.notes.append("rows_read counts clips: caption rows grouped by (youtube_id, start_time)")
        captions = [c for plan in plans.values() for item in plan.items for c in item.captions]
        if captions and all(c == c.lower() for c in captions):
            self.notes.append("all captions are lower-case: looks like the AudioCaps 2.0 CSVs")
        return plans

    def _plan_split(self, path, names: AudioNames, by_clip, by_ytid) -> SplitPlan:
        report = SplitReport()
        table = csv_io.read_table(path)
        csv_io.require_columns(table, ["audiocap_id", "youtube_id", "start_time", "caption"], path)
        if table.encoding != "utf-8":
            report.fix(path.name, f"not UTF-8: decoded as {table.encoding}")
        clips = collections.defaultdict(list)  # (ytid, start) -> rows, in CSV order
        for line, row in enumerate(table.rows, start=2):  # line 1 is the header
            # A malformed row cannot be grouped with its clip: it counts as one row of its own.
            if not row["youtube_id"].strip():
                report.rows_read += 1
                report.reject(f"{path.name} line {line}", "no youtube_id in the row")
                continue
            try:
                clips[(row["youtube_id"].strip(), int(float(row["start_time"])))].append(row)
            except ValueError:
                report.rows_read += 1
                report.reject(f"{row['youtube_id']}_{row['start_time']}", f"bad start_time {row['start_time']!r}")
        items = []
        for (ytid, start), rows in clips.items():
            report.rows_read += 1
            clip = f"{ytid}_{start}"
            captions = [r["caption"] for r in rows if r["caption"].strip()]
            caption_ids = [r["audiocap_id"].strip() for r in rows if r["caption"].strip()]
            if not captions:
                report.reject(clip, f"no captions for the clip ({len(rows)} empty caption row(s))")
                continue
            if len(captions) < len(rows):
                report.fix(clip, f"{len(rows) - len(captions)} empty caption row(s) dropped, {len(captions)} kept")
            found = names.find(ytid, start, [r["audiocap_id"].strip() for r in rows])
            if found is None:
                report.reject(clip, "audio missing (removed from YouTube or not downloaded)")
                continue
            audio, fix = found
            if audio in names.files.claimed:
                report.reject(clip, f"same audio file as another clip ({audio.name})")
                continue
            names.files.claim(audio)
            if fix:
                report.fix(clip, fix)
            labels = by_clip.get((ytid, start))
            if labels is None and ytid in by_ytid:
                labels = by_ytid[ytid]
                report.conversions["AudioSet labels joined by youtube id only"] += 1
            if not labels and not self._keep_unlabelled:
                report.reject(clip, "no AudioSet labels (dropped as in the authors' code; --keep-unlabelled keeps it)")
                continue
            if not labels:
                report.conversions["no AudioSet labels (metadata missing)"] += 1
            items.append(Item(clip, audio, audio.name, captions, list(labels or []), clip, caption_ids))
        return SplitPlan(items, report)
