"""Opens the prepared datasets a config names: the training loader and the evaluation sets."""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable

from absl import logging
from ml_collections import ConfigDict

from hybrid_jax.data import eval_data, pipeline, records
from hybrid_jax.data.eval_data import EvalData
from hybrid_jax.data.prepare import preparation
from hybrid_jax.data.synthetic import dataset as synthetic


@dataclasses.dataclass
class Datasets:
    train_loader: pipeline.TrainLoader
    val: EvalData
    test: EvalData
    val_name: str
    test_name: str
    test_split: str
    val_split: str = "validation"
    to_global: Callable = staticmethod(pipeline.to_global)


def loader_metadata(kind: str) -> str:
    """Config metadata kind -> pipeline kind. "tags" means each dataset's own tags (Clotho
    keywords, AudioCaps AudioSet labels, WavCaps FreeSound tags), all stored as keywords."""
    return "keywords" if kind == "tags" else kind


def ensure_synthetic(data_config: ConfigDict) -> None:
    """Generates the offline synthetic Clotho-format set and prepares it, unless already done."""
    source = pathlib.Path(data_config.synthetic_dir)
    if not source.is_dir():
        logging.info("generating the synthetic dataset into %s", source)
        synthetic.generate(
            source,
            seed=data_config.synthetic_seed,
            clips_per_split=dict(data_config.synthetic_clips),
            clip_seconds=tuple(data_config.synthetic_seconds),
        )
    if not preparation.is_prepared(data_config.name, data_config.data_dir):
        preparation.prepare(data_config.name, source, data_config.data_dir)


def _split(name: str, data_dir: str, split: str, cache: bool):
    if not preparation.is_prepared(name, data_dir):
        raise FileNotFoundError(
            f"dataset {name!r} is not prepared under {data_dir}: run "
            f"`python -m hybrid_jax.prepare {name} --source SRC --data-dir {data_dir}` first"
        )
    data = records.open_split(name, data_dir, split)
    return records.CachedSplit(data) if cache else data


def open_datasets(config: ConfigDict, tokenize: Callable) -> Datasets:
    d = config.data
    if d.get("synthetic", False):
        ensure_synthetic(d)
    cache = d.get("cache_in_memory", False)
    parts = [_split(d.name, d.data_dir, d.train_split, cache)]
    parts += [_split(name, d.data_dir, "train", cache) for name in d.extra_train]
    train = parts[0] if len(parts) == 1 else records.ConcatSplit(parts)
    metadata = loader_metadata(d.metadata)
    loader = pipeline.TrainLoader(
        train,
        tokenize,
        global_batch_size=config.train.batch_size,
        clip_seconds=d.clip_seconds,
        metadata=metadata,
        metadata_dropout=d.metadata_dropout,
        seed=config.train.seed,
        worker_count=d.worker_count,
    )
    eval_name, val = open_eval_split(config, tokenize, d.val_split)
    _, test = open_eval_split(config, tokenize, d.test_split)
    return Datasets(loader, val, test, eval_name, eval_name, d.test_split, d.val_split)


def open_eval_split(config: ConfigDict, tokenize: Callable, split: str) -> tuple[str, EvalData]:
    """(dataset name, EvalData) of ``split`` of the evaluation dataset (data.eval_name or data.name)."""
    d = config.data
    eval_name = d.eval_name or d.name
    metadata = loader_metadata(d.metadata)
    if metadata == "labels" and eval_name != d.name:
        metadata = "keywords"  # e.g. trained with AudioSet labels, tested on Clotho keywords
    return eval_name, eval_data.eval_data(
        _split(eval_name, d.data_dir, split, False), tokenize, clip_seconds=d.clip_seconds, metadata=metadata
    )
