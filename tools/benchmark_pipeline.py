"""Training-loader throughput (examples/s) on 30 s Clotho-style clips prepared by the real builder.

    python tools/benchmark_pipeline.py [--clips 64] [--batch-size 32] [--rounds 7] [--workers 0] [--cache]

Writes ``--clips`` random 30 s clips + a Clotho captions CSV into a temp dir, prepares them
with the Clotho TFDS builder (array_record), then times ``TrainLoader`` (tfds.data_source
path, int16 audio, 5 captions per clip) over ``--rounds`` rounds of ``--batches`` batches
after a warm-up and prints the median. Re-executes itself once with the malloc settings of
stack.md (glibc otherwise returns the large buffers to the kernel after every batch).
"""
from __future__ import annotations

import argparse
import csv
import os
import pathlib
import statistics
import sys
import tempfile
import time

_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_TOP_PAD_": "1073741824"}


def write_clotho(root: pathlib.Path, clips: int, seconds: float) -> None:
    import numpy as np
    import soundfile as sf

    audio_dir = root / "development"
    audio_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(root / "clotho_captions_development.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
        for i in range(clips):
            name = f"clip_{i:04d}.wav"
            wave = rng.integers(-8000, 8000, size=int(seconds * 32000), dtype=np.int16)
            sf.write(audio_dir / name, wave, 32000, subtype="PCM_16")
            writer.writerow([name] + [f"a sound number {i} variant {k}" for k in range(5)])


def fake_tokenize(texts):
    import numpy as np

    ids = np.zeros((len(texts), 32), np.int32)
    for row, text in enumerate(texts):
        words = [hash(w) % 30000 + 1 for w in text.split()][:32]
        ids[row, : len(words)] = words
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32), "token_type_ids": 0 * ids}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=10, help="batches per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--read-threads", type=int, default=1)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--cache", action="store_true", help="hold the split's audio in RAM (CachedSplit)")
    parser.add_argument("--workers", type=int, default=0, help="Grain worker processes")
    parser.add_argument("--no-malloc-tuning", action="store_true")
    from absl import flags

    flags.FLAGS(argv[:1])  # absl (Grain's flags) parsed with defaults; the options are ours
    return parser.parse_args(argv[1:])


def main(args: argparse.Namespace) -> None:
    if not args.no_malloc_tuning and any(os.environ.get(k) != v for k, v in _MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC})

    from hybrid_jax.data.pipeline import TrainLoader
    from hybrid_jax.data.prepare import preparation
    from hybrid_jax.data.records import CachedSplit, open_split

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        t0 = time.perf_counter()
        write_clotho(tmp / "src", args.clips, args.seconds)
        preparation.prepare("clotho", tmp / "src", tmp / "out", decode_threads=2)
        print(f"prepared {args.clips} x {args.seconds:.0f} s clips in {time.perf_counter() - t0:.1f} s")
        split = open_split("clotho", tmp / "out", "train")
        if args.cache:
            split = CachedSplit(split, progress=False)
        loader = TrainLoader(
            split,
            fake_tokenize,
            global_batch_size=args.batch_size,
            clip_seconds=30.0,
            metadata="caption",
            seed=0,
            read_threads=args.read_threads,
            prefetch_batches=args.prefetch,
            process_index=0,
            process_count=1,
            worker_count=args.workers,
        )
        iterator = iter(loader)
        for _ in range(3):  # warm-up: page cache, thread pool, first permutation
            next(iterator)
        rates = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.batches):
                batch = next(iterator)
            rates.append(args.batches * args.batch_size / (time.perf_counter() - start))
        assert batch["audio"].dtype.name == "int16" and batch["audio"].shape == (args.batch_size, 960_000)
    tuned = "off" if args.no_malloc_tuning else "on (stack.md settings)"
    print(
        f"train loader ({'CachedSplit' if args.cache else 'tfds.data_source'}), 30 s clips, "
        f"batch {args.batch_size}, read_threads {args.read_threads}, workers {args.workers}, "
        f"malloc tuning {tuned}, {os.cpu_count()} CPUs: median {statistics.median(rates):.0f} "
        f"examples/s (min {min(rates):.0f}, max {max(rates):.0f}, {args.rounds} rounds of "
        f"{args.batches * args.batch_size} examples)"
    )


if __name__ == "__main__":
    from absl import app  # Grain's worker processes expect absl-parsed flags

    app.run(main, flags_parser=parse_args)
