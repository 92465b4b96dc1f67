"""CLI: python -m hybrid_jax.prepare {clotho,audiocaps,wavcaps_freesound} --source SRC --data-dir OUT."""
from __future__ import annotations

import argparse
import sys

from hybrid_jax.data.prepare import preparation
from hybrid_jax.data.prepare.builder import NoUsableExamples
from hybrid_jax.data.prepare.report import summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", choices=sorted(preparation.BUILDERS))
    parser.add_argument("--source", required=True, help="folder with the files as downloaded/extracted")
    parser.add_argument("--data-dir", required=True, help="TFDS data dir to write into")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if already prepared")
    parser.add_argument("--decode-threads", type=int, default=None, help="audio decoding threads")
    parser.add_argument("--min-seconds", type=float, default=0.0, help="reject shorter clips")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="crop longer clips (<=0: never)")
    parser.add_argument("--blacklist", default=None, help="wavcaps_freesound: JSON/CSV of ids to exclude")
    parser.add_argument("--csv-dir", default=None, help="audiocaps: folder of train/val/test.csv")
    parser.add_argument("--keep-unlabelled", action="store_true",
                        help="audiocaps: keep clips without AudioSet labels (default: dropped, as the authors do)")
    args = parser.parse_args(argv)
    options = {
        "decode_threads": args.decode_threads,
        "min_seconds": args.min_seconds,
        "max_seconds": args.max_seconds if args.max_seconds > 0 else None,
    }
    if args.dataset == "wavcaps_freesound":
        options["blacklist"] = args.blacklist
    elif args.blacklist:
        parser.error("--blacklist applies to wavcaps_freesound only")
    if args.dataset == "audiocaps":
        options["csv_dir"] = args.csv_dir
        options["keep_unlabelled"] = args.keep_unlabelled
    elif args.csv_dir or args.keep_unlabelled:
        parser.error("--csv-dir and --keep-unlabelled apply to audiocaps only")
    path = preparation.report_path(args.dataset, args.data_dir)
    try:
        report = preparation.prepare(args.dataset, args.source, args.data_dir, overwrite=args.overwrite, **options)
    except NoUsableExamples as e:
        print(summary({**e.report, "status": f"FAILED: {e}"}, path))
        return 1
    print(summary(report, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
