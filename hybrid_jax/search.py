"""Search your own sound collection with an exported model: index a folder, query it by text or by example.

  python -m hybrid_jax.search index --model MODEL_DIR --audio-dir DIR [--metadata tags.csv] --index INDEX
  python -m hybrid_jax.search query --index INDEX "a dog barks" ["rain on a roof" ...] [--top-k 10]
  python -m hybrid_jax.search query --index INDEX --audio example.wav [--top-k 10]

``index`` embeds every audio file under DIR (any length, rate and channel count; see
``hybrid_jax.segments``), streaming: files are decoded by a thread pool while the model runs, in
fixed-size batches, so memory stays bounded whatever the collection's size. It is incremental
(re-running embeds only new or changed files, removes deleted ones) and resumable (finished files
are committed every few seconds; an interrupted run continues where it stopped). Unreadable files
are skipped, each reported with its reason and counted; the run's report is also written to
``INDEX/last_run.json``.

Metadata (optional) is a CSV with a ``file_name`` column (the path relative to DIR, or the bare
file name) and a ``keywords`` (or ``tags``) column, keywords separated by ``;`` or ``,`` and joined
by spaces as in training; any encoding (UTF-8, cp1252, latin-1). Files without a row are indexed
from their audio alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable

from hybrid_jax import index as index_lib
from hybrid_jax import packed, segments
from hybrid_jax.data import audio_io, csv_io

COMMIT_SECONDS = 2.0  # finished files are committed at least this often (what an interruption loses)
COMMIT_FILES = 256  # ... or every this many files


@dataclasses.dataclass
class Metadata:
    """Metadata text by file, and what reading the CSV found."""

    texts: dict[str, str]  # relative path (posix) or bare file name -> keywords joined by spaces
    encoding: str = "utf-8"
    names: list[str] = dataclasses.field(default_factory=list)  # file_name of each row
    notes: list[str] = dataclasses.field(default_factory=list)

    def lookup(self, relative: str) -> str:
        return self.texts.get(relative, self.texts.get(pathlib.PurePosixPath(relative).name, ""))


def read_metadata(path: str | os.PathLike | None) -> Metadata:
    """Reads the tags CSV (any encoding, ``,``/``;``/tab delimited; see the module docstring)."""
    if not path:
        return Metadata({})
    table = csv_io.read_table(path)
    column = next((c for c in ("keywords", "tags") if c in table.header), None)
    if "file_name" not in table.header or column is None:
        raise ValueError(f"{path}: expected the columns file_name and keywords (or tags); header is {table.header}")
    texts, counts = {}, {}
    for row in table.rows:
        name = row["file_name"].strip().replace("\\", "/")
        words = row[column].replace(";", ",").split(",")
        texts[name] = " ".join(" ".join(w.split()) for w in words if w.strip())
        base = pathlib.PurePosixPath(name).name
        counts[base] = counts.get(base, 0) + 1
    # A bare file name also finds the file in a subfolder, unless two rows share it.
    for name, text in list(texts.items()):
        base = pathlib.PurePosixPath(name).name
        if base != name and counts[base] == 1:
            texts.setdefault(base, text)
    notes = []
    if table.encoding != "utf-8":
        notes.append(f"{path}: not UTF-8, read as {table.encoding}")
    return Metadata(texts, table.encoding, [row["file_name"].strip().replace("\\", "/") for row in table.rows], notes)


@dataclasses.dataclass(frozen=True)
class AudioFile:
    path: str  # relative to the audio folder, posix
    size: int
    mtime_ns: int


def scan(audio_dir: pathlib.Path) -> tuple[list[AudioFile], int]:
    """Audio files (by extension) under ``audio_dir``, sorted -> (files, count of other files)."""
    files, others = [], 0
    for root, dirs, names in os.walk(audio_dir):
        dirs.sort()
        for name in sorted(names):
            full = pathlib.Path(root) / name
            if full.suffix.lower() not in audio_io.AUDIO_EXTENSIONS:
                others += 1
                continue
            try:
                stat = full.stat()
            except OSError:  # vanished or a dangling link: reported when read
                stat = os.stat_result((0,) * 10)
            files.append(AudioFile(full.relative_to(audio_dir).as_posix(), stat.st_size, stat.st_mtime_ns))
    return files, others


def update_index(model, audio_dir: str | os.PathLike, index_dir: str | os.PathLike,
                 metadata_csv: str | os.PathLike | None = None, *, workers: int = 2,
                 say: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Brings ``index_dir`` up to date with ``audio_dir`` (see the module docstring) -> the report."""
    from tqdm import tqdm

    started = time.perf_counter()
    audio_dir = pathlib.Path(audio_dir).resolve()
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"{audio_dir}: no such folder")
    header = {"model": str(pathlib.Path(model.directory).resolve()) if model.directory else None,
              "fingerprint": model.fingerprint, "fusion": model.fusion, "width": model.item_width,
              "audio_dir": str(audio_dir), "segment_seconds": model.segment_seconds}
    with index_lib.Index(index_dir, write=True, header=header) as index:
        _check_same(index, header)
        metadata = read_metadata(metadata_csv)
        for note in metadata.notes:
            say(f"metadata {note}")
        files, others = scan(audio_dir)
        known, unreadable = index.entries(), index.unreadable()
        on_disk = {f.path for f in files}
        texts = {f.path: metadata.lookup(f.path) for f in files}
        # A file that failed before and has not changed since is not read again, only reported.
        still_bad = {f.path: unreadable[f.path][3] for f in files
                     if f.path in unreadable and unreadable[f.path][:3] == (f.size, f.mtime_ns, texts[f.path])}
        todo = [f for f in files if f.path not in still_bad and not _unchanged(known.get(f.path), f, texts[f.path])]
        changed = {f.path for f in todo if f.path in known}
        deleted = sorted((set(known) | set(unreadable)) - on_disk)
        basenames = {pathlib.PurePosixPath(p).name for p in on_disk}
        unmatched = [n for n in metadata.names if n not in on_disk and ("/" in n or n not in basenames)]
        say(f"{audio_dir}: {len(files)} audio files ({len(files) - len(todo) - len(still_bad)} unchanged, "
            f"{len(todo) - len(changed)} new, {len(changed)} changed, {len(still_bad)} unreadable as before), "
            f"{len(deleted)} deleted since the last run" + (f", {others} other files ignored" if others else ""))
        for path, reason in still_bad.items():
            say(f"skipped {path}: {reason} (unchanged since the last run)")
        if unmatched:
            say(f"metadata: {len(unmatched)} of {len(metadata.names)} rows name no audio file under {audio_dir} "
                f"(e.g. {unmatched[0]!r})")
        if deleted:
            index.remove(deleted)
            for path in deleted[:20]:
                say(f"removed {path}: deleted from {audio_dir}")
            if len(deleted) > 20:
                say(f"removed {len(deleted) - 20} more deleted files")
        sources = [segments.Source(f.path, functools.partial(audio_io.stream, audio_dir / f.path, model.segment_samples),
                                   texts[f.path]) for f in todo]
        by_path = {f.path: f for f in todo}
        report = {"indexed": [], "skipped": [{"path": p, "reason": r, "known": True} for p, r in still_bad.items()],
                  "removed": deleted, "unchanged": len(files) - len(todo) - len(still_bad),
                  "metadata_encoding": metadata.encoding, "metadata_unmatched": len(unmatched)}
        pending: list[index_lib.Record] = []
        last_commit, audio_seconds, done = time.perf_counter(), 0.0, 0
        bar = tqdm(total=len(todo), unit="file", disable=not progress or not todo, mininterval=0.5, file=sys.stderr)
        interrupted = False
        try:
            for result in segments.embed(model, sources, workers=workers):
                done += 1
                bar.update(1)
                f = by_path[result.key]
                if result.error is not None:
                    report["skipped"].append({"path": f.path, "reason": result.error, "known": False})
                    bar.write(f"skipped {f.path}: {result.error}")
                    # Recorded (not retried while unchanged); the stale item of a changed file goes.
                    index.mark_unreadable(f.path, f.size, f.mtime_ns, texts[f.path], result.error)
                    continue
                pending.append(index_lib.Record(f.path, f.size, f.mtime_ns, texts[f.path], result.seconds, result.vector))
                report["indexed"].append(f.path)
                audio_seconds += result.seconds
                bar.set_postfix_str(f"{audio_seconds / max(bar.format_dict['elapsed'], 1e-9):.0f} audio-s/s", refresh=False)
                if len(pending) >= COMMIT_FILES or time.perf_counter() - last_commit > COMMIT_SECONDS:
                    index.add(pending)
                    pending, last_commit = [], time.perf_counter()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            index.add(pending)  # what finished is kept, also on Ctrl-C
            bar.close()
        elapsed = time.perf_counter() - started
        report.update(items=len(index), seconds=elapsed, audio_seconds=audio_seconds, interrupted=interrupted,
                      files_per_second=len(report["indexed"]) / elapsed, audio_seconds_per_second=audio_seconds / elapsed)
        index_lib.atomic_write(pathlib.Path(index_dir) / "last_run.json", json.dumps(report, indent=1) + "\n")
    if interrupted:
        say(f"interrupted after {len(report['indexed'])} files (kept); run the same command again to continue")
        raise KeyboardInterrupt
    new = len(report["indexed"]) - len(changed & set(report["indexed"]))
    say(f"indexed {len(report['indexed'])} files ({new} new, {len(report['indexed']) - new} changed; "
        f"{audio_seconds:.0f} s of audio) in {elapsed:.1f} s: {len(report['indexed']) / elapsed:.1f} files/s, "
        f"{audio_seconds / elapsed:.1f} audio-s/s; skipped {len(report['skipped'])} unreadable; "
        f"removed {len(deleted)} deleted; the index holds {report['items']} items -> {index_dir}")
    return report


def _unchanged(entry: index_lib.Entry | None, f: AudioFile, text: str) -> bool:
    return entry is not None and (entry.size, entry.mtime_ns, entry.metadata) == (f.size, f.mtime_ns, text)


def _check_same(index: index_lib.Index, header: dict) -> None:
    """An existing index must have been built by the same model from the same folder."""
    if index.header["fingerprint"] != header["fingerprint"]:
        raise index_lib.UnusableIndex(
            f"{index.directory} was built with another model ({index.header.get('model')}); "
            f"use a new --index for {header['model']}")
    if index.header["audio_dir"] != header["audio_dir"]:
        raise index_lib.UnusableIndex(
            f"{index.directory} indexes {index.header['audio_dir']}, not {header['audio_dir']}; use a new --index")


def open_model(index: index_lib.Index, model_path: str | os.PathLike | None = None, **options):
    """The model an index was built with (or ``model_path``, which must be the same model)."""
    from hybrid_jax.inference import load_model

    path = model_path or index.header.get("model")
    if not path:
        raise index_lib.UnusableIndex(f"{index.directory}: the index does not name its model; pass --model")
    model = load_model(path, **options)
    if model.fingerprint != index.header["fingerprint"]:
        raise index_lib.UnusableIndex(f"{path} is not the model {index.directory} was built with "
                                      f"({index.header.get('model')}); its scores would be meaningless")
    return model


@dataclasses.dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    entry: index_lib.Entry


def query(model, index: index_lib.Index, *, texts: list[str] | None = None, audio: list | None = None,
          top_k: int = 10, words: list[str] | None = None) -> list[list[Hit]]:
    """Per text query (or per example sound), the best ``top_k`` items, optionally only those whose
    metadata or path contains every one of ``words``."""
    if texts:
        vectors, score = model.embed_text(texts), functools.partial(packed.scores, model.fusion)
    else:
        vectors, score = model.embed_audio(audio).vectors, functools.partial(packed.example_scores, model.fusion)
    rows = index.matching(words) if words else None
    scores, best = index.search(vectors, top_k, score, rows)
    out = []
    for row_scores, row_ids in zip(scores, best):
        entries = index.describe(row_ids)
        out.append([Hit(rank + 1, float(s), e) for rank, (s, e) in enumerate(zip(row_scores, entries)) if e is not None])
    return out


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from hybrid_jax import cli

    cli.quiet_terminal()
    try:
        _run(args)
    except (index_lib.UnusableIndex, FileNotFoundError, ValueError, audio_io.AudioError) as error:
        sys.exit(f"error: {error}")  # a mistake in the command, not a bug: no traceback
    except KeyboardInterrupt:
        sys.exit(130)


def _run(args: argparse.Namespace) -> None:
    from hybrid_jax import cli

    if args.command == "index":
        from hybrid_jax.inference import load_model

        cli.log_to_file(pathlib.Path(args.index) / "logs" / "search.log")
        model = load_model(args.model, batch_size=args.batch_size)
        update_index(model, args.audio_dir, args.index, args.metadata, workers=args.workers)
        return
    if bool(args.queries) == bool(args.audio):
        raise ValueError("search query: give text queries or --audio FILE (one of the two)")
    with index_lib.Index(args.index) as index:
        model = open_model(index, args.model)
        results = query(model, index, texts=args.queries, audio=args.audio, top_k=args.top_k,
                        words=args.filter.split() if args.filter else None)
        for label, hits in zip(args.queries or args.audio, results):
            print(f"\n{label}")
            for hit in hits:
                tags = f"  [{hit.entry.metadata}]" if hit.entry.metadata else ""
                print(f"  {hit.rank:2d}. {hit.score:+.3f}  {hit.entry.path}{tags}  ({hit.entry.seconds:.1f} s)")
            if not hits:
                print("  (no items)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hybrid_jax.search", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("index", help="embed a folder into an index (incremental, resumable)")
    build.add_argument("--model", required=True, help="model directory (python -m hybrid_jax.export)")
    build.add_argument("--audio-dir", required=True, help="folder of audio files (searched recursively)")
    build.add_argument("--metadata", help="CSV with file_name and keywords (or tags) columns")
    build.add_argument("--index", required=True, help="index directory (created, or updated)")
    build.add_argument("--batch-size", type=int, default=16, help="segments per model call")
    build.add_argument("--workers", type=int, default=2, help="decoding threads")
    ask = commands.add_parser("query", help="search an index by text or by an example sound")
    ask.add_argument("--index", required=True, help="index directory")
    ask.add_argument("queries", nargs="*", help="text queries")
    ask.add_argument("--audio", action="append", help="an example sound to search by (repeatable)")
    ask.add_argument("--top-k", type=int, default=10, help="results per query")
    ask.add_argument("--filter", help="only items whose metadata or path contains all these words")
    ask.add_argument("--model", help="model directory (default: the one the index was built with)")
    return parser


if __name__ == "__main__":
    main()
