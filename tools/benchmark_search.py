"""Search benchmark: the model's own audio rate, the indexing rate, and top-k query latency.

  python tools/benchmark_search.py --config configs/demo.py --out workdirs/bench_search
  python tools/benchmark_search.py --model models/demo --out workdirs/bench_search   # an exported model

1. The audio tower's own rate: ``Model.embed_item_batch`` on batches already in memory (no file
   decoding), in audio seconds per second.
2. Indexing: ``search index`` of ``--files`` generated sound files (``--seconds`` long, a third at
   44.1 kHz stereo so resampling and down-mixing are in the cost): files/s and audio-seconds/s,
   then an unchanged re-run (the incremental scan alone).
3. Query latency: synthetic indexes of random unit vectors of the model's row width at each
   ``--sizes`` (built directly, no audio), one text query, top-10: the median of ``--repeats``
   warm searches (vectors in the page cache), the text embedding timed apart.

``--config`` builds the config's architecture with random weights (the rates do not depend on
the weights; no training needed). Prints a markdown table and writes ``results.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: `python tools/benchmark_search.py` (no install needed)


def random_model_dir(config_path: str, out: pathlib.Path) -> pathlib.Path:
    """The config's architecture with freshly initialised weights, saved as a model directory."""
    import jax
    from ml_collections import config_flags  # noqa: F401 (config files import ml_collections)

    from hybrid_jax import model_dir, schema
    from hybrid_jax.models import build

    namespace: dict = {}
    exec(compile(pathlib.Path(config_path).read_text(), config_path, "exec"), namespace)  # noqa: S102
    config = namespace["get_config"]()
    built = build.build(config.model)
    model = built.model.clone(dtype=jax.numpy.float32)
    example = schema.zeros(schema.TRAIN_FIELDS, 1, schema.num_samples(config.data.clip_seconds), built.tokenizer.max_length)
    keys = {k: jax.random.key(i, impl="rbg") for i, k in enumerate(("params", "dropout", "augment"))}
    variables = jax.device_get(jax.jit(functools.partial(model.init, train=False))(keys, example))
    variables = build.load_pretrained(built, variables)  # the converted text tower, as training starts
    return model_dir.save(out, model, jax.device_get(variables), build.text_checkpoint_dir(config.model.text.checkpoint),
                          max_length=built.tokenizer.max_length, card={"training_data": "none (benchmark)"},
                          segment_seconds=config.data.clip_seconds)


def tower_rate(model, seconds: float = 20.0) -> float:
    """Audio seconds per second of the jitted item embedding on in-memory batches."""
    rng = np.random.default_rng(0)
    batch = {"audio": (rng.standard_normal((model.batch_size, model.segment_samples)) * 3000).astype(np.int16),
             "audio_valid": np.ones(model.batch_size, np.float32),
             **{k: np.zeros((model.batch_size, model.tokenizer.max_length), np.int32) for k in ("meta_ids", "meta_mask", "meta_types")},
             "meta_present": np.zeros(model.batch_size, bool)}
    model.embed_item_batch(batch)  # compile
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.embed_item_batch(batch)
        calls += 1
    return calls * model.batch_size * model.segment_seconds / (time.perf_counter() - started)


def write_collection(folder: pathlib.Path, files: int, seconds: float) -> None:
    import soundfile as sf

    rng = np.random.default_rng(0)
    for i in range(files):
        rate, channels = (44100, 2) if i % 3 == 0 else (32000, 1)
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(len(t))
        wave = np.repeat(wave[:, None], channels, 1) if channels > 1 else wave
        path = folder / f"{i // 100:03d}" / f"sound_{i:05d}.{'flac' if i % 2 else 'wav'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), rate)


def synthetic_index(directory: pathlib.Path, size: int, width: int, fusion: str) -> None:
    from hybrid_jax import index as index_lib

    if (directory / index_lib.HEADER).is_file():
        with index_lib.Index(directory) as existing:
            if len(existing) == size:
                return
    header = {"model": None, "fingerprint": "synthetic", "fusion": fusion, "width": width, "audio_dir": "/synthetic"}
    rng = np.random.default_rng(size)
    with index_lib.Index(directory, write=True, header=header) as index:
        for start in range(len(index), size, 100_000):
            count = min(100_000, size - start)
            vectors = rng.standard_normal((count, width)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            if fusion == "mid":
                vectors[:, -1] = 1.0  # meta_present
            index.add([index_lib.Record(f"{start + i:07d}.wav", 1, 1, "", 10.0, v) for i, v in enumerate(vectors)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="config whose architecture to benchmark (random weights)")
    parser.add_argument("--model", help="an exported model directory instead of --config")
    parser.add_argument("--out", required=True, help="working folder (audio, indexes, results.json)")
    parser.add_argument("--files", type=int, default=300, help="generated files to index")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each generated file")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="index sizes for the query latency")
    parser.add_argument("--repeats", type=int, default=7, help="searches per size (the median is reported)")
    parser.add_argument("--batch-size", type=int, default=16, help="segments per model call")
    args = parser.parse_args()
    if bool(args.config) == bool(args.model):
        parser.error("give --config or --model")

    from hybrid_jax import index as index_lib
    from hybrid_jax import packed, search
    from hybrid_jax.inference import load_model

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    model_path = pathlib.Path(args.model) if args.model else out / "model"
    if args.config and not (model_path / "model.json").is_file():
        random_model_dir(args.config, model_path)
    model = load_model(model_path, batch_size=args.batch_size)
    results = {"model": str(model_path), "fusion": model.fusion, "row_width": model.item_width,
               "segment_seconds": model.segment_seconds, "batch_size": model.batch_size, "uptime_before": load_before}

    results["tower_audio_seconds_per_second"] = tower_rate(model)
    audio = out / "audio"
    if not audio.is_dir():
        write_collection(audio, args.files, args.seconds)
    index_dir = out / "index"
    if index_dir.exists():
        import shutil

        shutil.rmtree(index_dir)
    report = search.update_index(model, audio, index_dir, progress=False)
    results["index_files_per_second"] = report["files_per_second"]
    results["index_audio_seconds_per_second"] = report["audio_seconds_per_second"]
    results["index_files"] = len(report["indexed"])
    started = time.perf_counter()
    search.update_index(model, audio, index_dir, progress=False, say=lambda _: None)
    results["rescan_unchanged_seconds"] = time.perf_counter() - started

    query = model.embed_text(["a dog barks while rain falls on a roof"])
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        model.embed_text(["a dog barks while rain falls on a roof"])
        times.append(time.perf_counter() - started)
    results["embed_text_ms"] = 1000 * float(np.median(times))
    score = functools.partial(packed.scores, model.fusion)
    results["query_ms"] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        directory = out / f"synthetic_{size}"
        synthetic_index(directory, size, model.item_width, model.fusion)
        with index_lib.Index(directory) as index:
            index.search(query, 10, score)  # page the vectors in
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                _, rows = index.search(query, 10, score)
                index.describe(rows[0])
                times.append(time.perf_counter() - started)
        results["query_ms"][size] = 1000 * float(np.median(times))
    results["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"\nmodel {model_path} ({model.fusion} fusion, rows of {model.item_width} floats, "
          f"{model.segment_seconds:g} s segments, batch {model.batch_size})")
    print("| measure | value |\n| --- | --- |")
    print(f"| audio tower alone (in-memory batches) | {results['tower_audio_seconds_per_second']:.0f} audio-s/s |")
    print(f"| indexing {results['index_files']} files of {args.seconds:g} s | {results['index_files_per_second']:.1f} "
          f"files/s, {results['index_audio_seconds_per_second']:.0f} audio-s/s |")
    print(f"| re-run, nothing changed | {results['rescan_unchanged_seconds']:.2f} s |")
    print(f"| embed one text query | {results['embed_text_ms']:.1f} ms |")
    for size, ms in results["query_ms"].items():
        print(f"| top-10 over {size:,} items | {ms:.1f} ms |")
    print(f"\nuptime before: {load_before}\nuptime after:  {results['uptime_after']}")


if __name__ == "__main__":
    main()
