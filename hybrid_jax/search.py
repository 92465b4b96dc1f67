"""Search your own sound collection with a trained model: index a folder, then query it.

  python -m hybrid_jax.search --config configs/demo.py --workdir workdirs/demo \\
      --audio_dir my_sounds/ [--metadata my_sounds/tags.csv] --index my_sounds.npz
  python -m hybrid_jax.search --config configs/demo.py --workdir workdirs/demo \\
      --index my_sounds.npz --query "a dog barks while rain falls on a roof" [--top_k 10]

Metadata (optional) is a CSV with columns ``file_name,keywords`` (keywords separated by ``;`` or
spaces); files without a row are indexed from their audio alone. Audio is read with librosa
(mono, resampled to 32 kHz) and cut or zero-padded to the config's ``data.clip_seconds``.
"""
from __future__ import annotations

import csv
import pathlib

import numpy as np

from hybrid_jax import evaluate, metrics, schema
from hybrid_jax.models import fusion

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif")


def read_metadata(path: str | pathlib.Path | None) -> dict[str, str]:
    """file name -> metadata text (keywords joined by spaces)."""
    if not path:
        return {}
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"file_name", "keywords"} <= set(rows[0]):
        raise ValueError(f"{path}: expected the columns file_name,keywords; got {sorted(rows[0])}")
    return {r["file_name"]: " ".join(k.strip() for k in r["keywords"].replace(";", " ").split()) for r in rows}


def load_clips(audio_dir: str | pathlib.Path, clip_seconds: float, sample_rate: int = schema.SAMPLE_RATE):
    """-> (file names, int16 [N, S] audio, float32 [N] valid fraction, skipped [(file, reason)])."""
    from hybrid_jax.models.audio_encoder import read_audio

    window = int(round(clip_seconds * sample_rate))
    names, audio, valid, skipped = [], [], [], []
    for path in sorted(p for p in pathlib.Path(audio_dir).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        try:
            wave = read_audio(path, sample_rate)[:window]
            if wave.size == 0 or not np.isfinite(wave).all():
                raise ValueError("empty audio or NaN samples")
        except Exception as error:  # a broken file is reported, not fatal
            skipped.append((str(path), f"{type(error).__name__}: {error}"))
            continue
        clip = np.zeros(window, np.int16)
        clip[: wave.size] = np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)
        names.append(str(path.relative_to(audio_dir)))
        audio.append(clip)
        valid.append(wave.size / window)
    if not names:
        raise FileNotFoundError(f"{audio_dir}: no readable audio files ({len(skipped)} skipped)")
    return names, np.stack(audio), np.asarray(valid, np.float32), skipped


def build_index(config, workdir, audio_dir, metadata_csv, index_path, checkpoint="best") -> dict:
    """Embeds every audio file of ``audio_dir`` (with its metadata) and saves the index (npz)."""
    from hybrid_jax.models import build

    built = build.build(config.model)
    names, audio, valid, skipped = load_clips(audio_dir, config.data.clip_seconds)
    meta = read_metadata(metadata_csv)
    texts = [meta.get(n, meta.get(pathlib.Path(n).name, "")) for n in names]
    tokens = built.tokenizer.tokenize(texts)
    present = np.array([bool(t.strip()) for t in texts])
    items = {
        "audio": audio, "audio_valid": valid, "meta_present": present,
        "meta_ids": tokens["input_ids"] * present[:, None], "meta_mask": tokens["attention_mask"] * present[:, None],
        "meta_types": tokens["token_type_ids"] * present[:, None],
    }
    example = {**schema.zeros(schema.TRAIN_FIELDS, 1, audio.shape[1], built.tokenizer.max_length),
               **{k: v[:1] for k, v in items.items()}}
    variables, embed_items, _, mesh = evaluate.load_trained(config, workdir, checkpoint, example, built)
    batches = (
        {k: _pad(v[i : i + config.eval.batch_size], config.eval.batch_size) for k, v in items.items()}
        for i in range(0, len(names), config.eval.batch_size)
    )
    embedded = evaluate._embed_batches(embed_items, variables, batches, schema.ITEM_KEYS, len(names), mesh)
    np.savez(index_path, file_names=np.array(names), **{f"item/{k}": v for k, v in embedded.items()})
    for file, reason in skipped:
        print(f"skipped {file}: {reason}")
    print(f"indexed {len(names)} files ({int(present.sum())} with metadata, {len(skipped)} skipped) -> {index_path}")
    return {"indexed": len(names), "with_metadata": int(present.sum()), "skipped": skipped}


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    return x if len(x) == size else np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def query_index(config, workdir, index_path, queries: list[str], top_k=10, checkpoint="best"):
    """-> per query, the [(file name, score)] of the best ``top_k`` items."""
    from hybrid_jax.models import build

    built = build.build(config.model)
    index = np.load(index_path)
    items = {k.split("/", 1)[1]: index[k] for k in index.files if k.startswith("item/")}
    tokens = built.tokenizer.tokenize(queries)
    n = len(queries)
    batch = {"query_ids": tokens["input_ids"], "query_mask": tokens["attention_mask"],
             "query_types": tokens["token_type_ids"]}
    example = {**schema.zeros(schema.TRAIN_FIELDS, n, schema.num_samples(config.data.clip_seconds),
                              built.tokenizer.max_length), **batch}
    variables, _, embed_queries, mesh = evaluate.load_trained(config, workdir, checkpoint, example, built)
    size = max(mesh.devices.size, -(-n // mesh.devices.size) * mesh.devices.size)
    padded = ({k: _pad(v, size) for k, v in batch.items()} for _ in range(1))
    q = evaluate._embed_batches(embed_queries, variables, padded, schema.QUERY_KEYS, n, mesh)
    similarity = np.asarray(fusion.similarity(q, items))
    best = metrics.top_k(similarity, k=min(top_k, similarity.shape[1]))
    names = index["file_names"]
    return [[(str(names[j]), float(similarity[i, j])) for j in row] for i, row in enumerate(best)]


def main(argv):
    del argv
    from absl import flags

    from hybrid_jax import cli

    F = flags.FLAGS
    cli.quiet_terminal()
    cli.log_to_file(pathlib.Path(F.workdir) / "logs" / "search.log")
    if F.audio_dir:
        build_index(F.config, F.workdir, F.audio_dir, F.metadata, F.index, F.checkpoint)
    if F.query:
        for query, hits in zip(F.query, query_index(F.config, F.workdir, F.index, F.query, F.top_k, F.checkpoint)):
            print(f"\n{query}")
            for rank, (name, score) in enumerate(hits, 1):
                print(f"  {rank:2d}. {score:+.3f}  {name}")


if __name__ == "__main__":
    from absl import app, flags

    from hybrid_jax import cli

    cli.define_config_flag("The config the model was trained with.")
    flags.DEFINE_string("workdir", None, "The training run's directory.")
    flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint step directory.")
    flags.DEFINE_string("audio_dir", None, "Index every audio file under this folder.")
    flags.DEFINE_string("metadata", None, "Optional CSV file_name,keywords for the indexed files.")
    flags.DEFINE_string("index", None, "The index file (.npz) to write or query.")
    flags.DEFINE_multi_string("query", None, "Text queries (repeat the flag for several).")
    flags.DEFINE_integer("top_k", 10, "Results per query.")
    flags.mark_flags_as_required(["config", "workdir", "index"])
    app.run(main)
