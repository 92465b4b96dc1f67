"""prepare(dataset, source, data_dir): build a dataset once, resumably, and write its report."""
from __future__ import annotations

import contextlib
import io
import os
import pathlib
import shutil
import tempfile
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from hybrid_jax.data.prepare.audiocaps import Audiocaps
from hybrid_jax.data.prepare.builder import NoUsableExamples
from hybrid_jax.data.prepare.clotho import Clotho
from hybrid_jax.data.prepare.report import (
    REPORT_NAME,
    check_reconciled,
    write_json_atomic,
)
from hybrid_jax.data.prepare.wavcaps import WavcapsFreesound

BUILDERS = {cls.name: cls for cls in (Clotho, Audiocaps, WavcapsFreesound)}


def report_path(dataset: str, data_dir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(data_dir) / dataset / REPORT_NAME


def leftover_incomplete(dataset: str, data_dir: str | os.PathLike) -> list[pathlib.Path]:
    """TFDS's temporary ``incomplete.*`` folders left by a killed run (normal runs remove them)."""
    folder = pathlib.Path(data_dir) / dataset
    return sorted(folder.glob("incomplete.*")) if folder.is_dir() else []


def is_prepared(dataset: str, data_dir: str | os.PathLike) -> bool:
    """True when the dataset's version folder is complete and its report has been written."""
    builder = BUILDERS[dataset](data_dir=os.fspath(data_dir))
    complete = (pathlib.Path(builder.data_dir) / "dataset_info.json").is_file()
    return complete and report_path(dataset, data_dir).is_file()


def prepare(
    dataset: str,
    source: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Prepares ``dataset`` from the user's files in ``source`` into ``data_dir`` -> report dict.

    Args:
      dataset: "clotho", "audiocaps" or "wavcaps_freesound".
      source: the folder as downloaded/extracted (TFDS manual_dir).
      data_dir: TFDS data dir; the result is ``data_dir/<dataset>/<version>/`` and the report
        ``data_dir/<dataset>/prepare_report.json``.
      overwrite: rebuild even when a complete build exists.
      **options: builder options (``min_seconds``, ``max_seconds``, ``decode_threads``; for
        wavcaps_freesound ``blacklist``; for audiocaps ``csv_dir`` and
        ``keep_unlabelled``).

    TFDS writes into ``incomplete.*`` and renames at the end, so a killed run leaves no
    version folder; leftovers are deleted here. The report is written last; a complete
    version folder without it (killed in between) gets its report restored from the
    dataset's metadata, which TFDS wrote atomically with the data.
    """
    if dataset not in BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(BUILDERS)}")
    data_dir = pathlib.Path(data_dir)
    if not pathlib.Path(source).is_dir() or not any(pathlib.Path(source).iterdir()):
        raise FileNotFoundError(f"source folder {source} does not exist or is empty")
    removed = [str(p) for p in leftover_incomplete(dataset, data_dir)]
    for path in removed:
        shutil.rmtree(path)
    out_report = report_path(dataset, data_dir)
    builder = BUILDERS[dataset](data_dir=os.fspath(data_dir), file_format="array_record", **options)
    version_dir = pathlib.Path(builder.data_dir)
    if (version_dir / "dataset_info.json").is_file() and not overwrite:
        report = dict(builder.info.metadata["report"])
        report["status"] = "already prepared" if out_report.is_file() else "report restored"
        if not out_report.is_file():
            write_json_atomic(out_report, report)
        return report
    out_report.unlink(missing_ok=True)
    if version_dir.exists():
        shutil.rmtree(version_dir)
        builder = BUILDERS[dataset](data_dir=os.fspath(data_dir), file_format="array_record", **options)
    tfds.disable_progress_bar()  # the builders show one bar per split with a known total
    try:
        # Nothing is downloaded (keep OUT clean); TFDS prints "Downloading and preparing..." to
        # stdout unconditionally: it goes to the log instead, our progress bars and report stay.
        with tempfile.TemporaryDirectory() as downloads, contextlib.redirect_stdout(io.StringIO()) as said:
            builder.download_and_prepare(
                download_dir=downloads,
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(source)),
            )
    except NoUsableExamples as e:
        # Nothing usable was written, but the user needs the reasons: the report has them.
        write_json_atomic(out_report, {**e.report, "status": f"failed: {e}"})
        raise
    for line in said.getvalue().splitlines():
        logging.info("tfds: %s", line)
    report = dict(builder.info.metadata["report"])
    report["status"] = "prepared"
    if removed:
        report["removed_incomplete"] = removed
    check_reconciled(report)
    write_json_atomic(out_report, report)
    return report
