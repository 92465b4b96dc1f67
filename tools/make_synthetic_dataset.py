"""Writes the offline synthetic ClothoV2.1-layout dataset (the demo's default data).

    python tools/make_synthetic_dataset.py --out data/synthetic_clotho --seed 0 \
        --clips-per-split development=400,validation=64,evaluation=64
"""

import argparse
import json
import time

from hybrid_jax.data.synthetic import dataset as synthetic


def _counts(text: str) -> dict[str, int]:
    counts = {}
    for item in filter(None, text.split(",")):
        split, _, n = item.partition("=")
        if split.strip() not in synthetic.SPLITS or not n.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"expected split=N with split in {synthetic.SPLITS}, got {item!r}"
            )
        counts[split.strip()] = int(n)
    return counts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="output directory (must not exist, or be empty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clips-per-split",
        type=_counts,
        default=None,
        help="e.g. development=400,validation=64,evaluation=64 (missing splits: defaults)",
    )
    p.add_argument("--min-seconds", type=float, default=5.0)
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic dataset")
    args = p.parse_args(argv)
    start = time.perf_counter()
    summary = synthetic.generate(
        args.out,
        seed=args.seed,
        clips_per_split=args.clips_per_split,
        clip_seconds=(args.min_seconds, args.max_seconds),
        overwrite=args.overwrite,
    )
    summary["generation_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
