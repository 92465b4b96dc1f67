"""The preparation report: every rejected item with its file and reason, per split, counts that reconcile."""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
from typing import Any

REPORT_NAME = "prepare_report.json"
# Unused-file lists can be huge (a shared AudioSet folder); the report keeps the count and a sample.
MAX_LISTED_UNUSED = 1000


@dataclasses.dataclass
class SplitReport:
    """Accumulates what happened to one split's rows while it is prepared."""

    rows_read: int = 0
    examples_written: int = 0
    rejected: list[dict[str, str]] = dataclasses.field(default_factory=list)
    fixes: list[dict[str, str]] = dataclasses.field(default_factory=list)
    conversions: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def reject(self, file: str, reason: str) -> None:
        self.rejected.append({"file": str(file), "reason": reason})

    def fix(self, file: str, fix: str) -> None:
        self.fixes.append({"file": str(file), "fix": fix})

    def to_json(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "examples_written": self.examples_written,
            "rejected": list(self.rejected),
            "fixes": list(self.fixes),
            "conversions": dict(sorted(self.conversions.items())),
        }


def build_report(
    dataset: str,
    splits: dict[str, SplitReport],
    *,
    unused_files: list[str] = (),
    **extra: Any,
) -> dict[str, Any]:
    """-> ``{"dataset", "splits": {split: {"rows_read", "examples_written", "rejected", ...}}, ...}``."""
    report = {"dataset": dataset, "splits": {name: s.to_json() for name, s in splits.items()}}
    report["unused_files"] = {
        "count": len(unused_files),
        "files": list(unused_files[:MAX_LISTED_UNUSED]),
        "reason": "audio file on disk that no row refers to (ignored)",
    }
    report.update(extra)
    return report


def check_reconciled(report: dict[str, Any]) -> None:
    """Raises AssertionError unless rows_read == examples_written + len(rejected) for every split."""
    for name, split in report["splits"].items():
        written, rejected = split["examples_written"], len(split["rejected"])
        if split["rows_read"] != written + rejected:
            raise AssertionError(
                f"{report['dataset']}/{name}: rows_read={split['rows_read']} but "
                f"examples_written={written} + rejected={rejected}"
            )


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON to a temporary name and renames it, so a crash never leaves half a report."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def summary(report: dict[str, Any], report_path: str | os.PathLike) -> str:
    """Human-readable lines: written/rejected per split, the commonest reasons, the report path."""
    lines = [f"{report['dataset']}: {report.get('status', 'prepared')} ({report.get('layout', '')})"]
    for name, split in report["splits"].items():
        lines.append(
            f"  {name:<10} rows {split['rows_read']:>7}  written {split['examples_written']:>7}"
            f"  rejected {len(split['rejected']):>6}  fixes {len(split.get('fixes', [])):>5}"
        )
        reasons = collections.Counter(r["reason"].split(":")[0] for r in split["rejected"])
        for reason, count in reasons.most_common(5):
            lines.append(f"      {count:>6} x {reason}")
    unused = report.get("unused_files", {}).get("count", 0)
    if unused:
        lines.append(f"  {unused} audio file(s) on disk matched no row (listed in the report)")
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    lines.append(f"  report: {report_path}")
    return "\n".join(lines)
