"""Shared TFDS builder for caption datasets: plan rows -> decode audio -> array_record + index + report."""
from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import inspect
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from array_record.python import array_record_module
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from hybrid_jax.data import audio_io
from hybrid_jax.data.prepare.report import SplitReport, build_report, check_reconciled
from hybrid_jax.schema import SAMPLE_RATE

# TFDS compresses array_record with zstd, which caps reading at ~300 30-s clips/s on these
# machines; int16 audio barely compresses, so the shards are rewritten uncompressed (~600-1,200/s).
_UNCOMPRESSED = "group_size:1,uncompressed"


@dataclasses.dataclass
class Item:
    """One clip to write: where its audio is and the text that goes with it."""

    key: str  # unique within the split; the TFDS example key
    path: pathlib.Path  # exact on-disk path
    file_name: str  # the name as the dataset's own CSV/JSON gives it (byte-exact for scoring)
    captions: list[str]
    keywords: list[str] = dataclasses.field(default_factory=list)
    source_id: str = ""
    caption_ids: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SplitPlan:
    """The rows of one split after CSV/JSON reading and file matching, before decoding."""

    items: list[Item]
    report: SplitReport


def split_keywords(text: str, sep: str = ";") -> list[str]:
    """'birds;;forest ; ' -> ['birds', 'forest']: trimmed, empty tokens dropped, case kept."""
    return [token.strip() for token in text.split(sep) if token.strip()]


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], threads: int) -> Iterator[Any]:
    """``map(fn, items)`` on a thread pool, in order, with a bounded window (decoded audio is big)."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class NoUsableExamples(RuntimeError):
    """Every row of a split was rejected while decoding; carries the report saying why."""

    def __init__(self, splits: list[str], report: dict[str, Any]):
        super().__init__(f"no usable examples in split(s) {splits}: every row was rejected")
        self.report = report


class CaptionAudioBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base builder: subclasses implement ``plan(root)``; this decodes, writes and reports.

    Each example: ``audio`` int16 [S] at 32 kHz mono, ``num_samples``, ``duration`` (s),
    ``source_rate`` (Hz in the file), ``file_name``, ``source_id``, ``captions``,
    ``caption_ids``, ``keywords`` (raw list). ``info.metadata`` holds ``index`` (the text
    fields of every split in record order, so loaders never read audio to get text),
    ``report`` and ``options``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "32 kHz mono int16 PCM, uncompressed array_record, text index."}
    KEYWORD_KIND = "keywords"  # what `keywords` holds: keywords | labels | tags
    HOMEPAGE = ""

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default looks the package up through `importlib_resources`, which is not
        # installed (nor needed: these builders download nothing and have no checksums file).
        return epath.Path(inspect.getfile(cls))

    def __init__(
        self,
        *,
        min_seconds: float = 0.0,
        max_seconds: float | None = 120.0,
        decode_threads: int | None = None,
        **kwargs: Any,
    ):
        self._decode_options = {"min_seconds": min_seconds, "max_seconds": max_seconds}
        self.options = dict(self._decode_options)  # recorded in the report; subclasses add theirs
        self._decode_threads = decode_threads or min(8, os.cpu_count() or 1)
        super().__init__(**kwargs)

    @abc.abstractmethod
    def plan(self, root: pathlib.Path) -> dict[str, SplitPlan]:
        """Reads the dataset's files under ``root`` -> {tfds split: SplitPlan}.

        Also sets ``self.layout`` (str), ``self.notes`` (list of str) and
        ``self.unused_files`` (list of str) for the report.
        """

    def _info(self) -> tfds.core.DatasetInfo:
        text_list = tfds.features.Sequence(tfds.features.Text())
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.name}: 32 kHz mono int16 audio with captions and {self.KEYWORD_KIND}.",
            features=tfds.features.FeaturesDict({
                "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding="bytes"),
                "num_samples": tfds.features.Tensor(shape=(), dtype=np.int64),
                "duration": tfds.features.Tensor(shape=(), dtype=np.float32),
                "source_rate": tfds.features.Tensor(shape=(), dtype=np.int32),
                "file_name": tfds.features.Text(),
                "source_id": tfds.features.Text(),
                "captions": text_list,
                "caption_ids": text_list,
                "keywords": text_list,
            }),
            homepage=self.HOMEPAGE or None,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        root = pathlib.Path(dl_manager.manual_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"source folder {root} does not exist")
        self.layout, self.notes, self.unused_files = "", [], []
        self._plans = self.plan(root)
        for split, plan in self._plans.items():
            if not plan.items:
                self.notes.append(f"split {split}: every row was rejected; the split is not written")
        return {
            split: self._generate_examples(split, plan) for split, plan in self._plans.items() if plan.items
        }

    def _decode(self, item: Item) -> audio_io.Decoded | str:
        try:
            return audio_io.decode(item.path, **self._decode_options)
        except audio_io.AudioError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 - one odd file must not end a multi-hour run
            return f"unexpected {type(e).__name__}: {e}"

    def _generate_examples(self, split: str, plan: SplitPlan):
        report = plan.report
        decoded = ordered_map(lambda it: (it, self._decode(it)), plan.items, self._decode_threads)
        for item, result in tqdm.tqdm(decoded, total=len(plan.items), desc=f"{self.name}/{split}", unit="clip"):
            if isinstance(result, str):
                report.reject(str(item.path), result)
                continue
            if result.source_rate != SAMPLE_RATE:
                report.conversions[f"resampled from {result.source_rate} Hz"] += 1
            if result.source_channels > 1:
                report.conversions[f"downmixed from {result.source_channels} channels"] += 1
            if result.cropped_from is not None:
                report.fix(str(item.path), f"cropped from {result.cropped_from:.1f} s to {self.options['max_seconds']} s")
            report.examples_written += 1
            yield item.key, {
                "audio": result.samples,
                "num_samples": len(result.samples),
                "duration": np.float32(result.seconds),
                "source_rate": result.source_rate,
                "file_name": item.file_name,
                "source_id": item.source_id,
                "captions": item.captions,
                "caption_ids": item.caption_ids,
                "keywords": item.keywords,
            }

    def report(self, source: str = "") -> dict[str, Any]:
        """The report of the plans so far (the whole run once generation has finished)."""
        return build_report(
            self.name,
            {split: plan.report for split, plan in getattr(self, "_plans", {}).items()},
            unused_files=self.unused_files,
            layout=self.layout,
            source=source,
            version=str(self.version),
            options=self.options,
            notes=self.notes,
        )

    def _download_and_prepare(self, dl_manager, download_config=None):
        try:
            super()._download_and_prepare(dl_manager, download_config)
        except Exception as e:
            dead = [s for s, p in getattr(self, "_plans", {}).items() if p.items and not p.report.examples_written]
            if dead:  # TFDS refuses a split without examples; say why, with the report
                raise NoUsableExamples(dead, self.report(str(dl_manager.manual_dir))) from e
            raise
        # Still inside TFDS's temporary directory: what is written here appears with the
        # dataset in one rename, so an interrupted run never leaves a half-indexed dataset.
        index = {split: self._rewrite_and_index(info) for split, info in self.info.splits.items()}
        for split, plan in self._plans.items():
            if plan.report.examples_written != len(index.get(split, {}).get("file_name", [])):
                raise AssertionError(f"{split}: written count does not match the records on disk")
        report = self.report(str(dl_manager.manual_dir))
        check_reconciled(report)
        self.info.metadata.update(
            index=index,
            report=report,
            options=self.options,
            sample_rate=SAMPLE_RATE,
            keyword_kind=self.KEYWORD_KIND,
        )

    def _rewrite_and_index(self, split_info) -> dict[str, list]:
        """Rewrites one split's shards uncompressed; returns its text fields in record order."""
        index = collections.defaultdict(list)
        for path in split_info.filepaths:
            path = os.fspath(path)
            reader = array_record_module.ArrayRecordReader(path)
            writer = array_record_module.ArrayRecordWriter(path + ".uncompressed", _UNCOMPRESSED)
            count = reader.num_records()
            for start in range(0, count, 32):
                for raw in reader.read(list(range(start, min(count, start + 32)))):
                    writer.write(raw)
                    example = self.info.features.deserialize_example_np(raw)
                    index["file_name"].append(example["file_name"].decode())
                    index["source_id"].append(example["source_id"].decode())
                    index["num_samples"].append(int(example["num_samples"]))
                    for key in ("captions", "keywords"):
                        index[key].append([t.decode() for t in example[key]])
            writer.close()
            reader.close()
            os.replace(path + ".uncompressed", path)
        return dict(index)
