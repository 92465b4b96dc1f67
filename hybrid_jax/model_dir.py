"""A trained model you can take away: the model directory format (architecture, weights, tokenizer, card).

A model directory holds

* ``model.json``: ``{"format": 1, "model": <every RetrievalModel setting>, "max_length": L,
  "segment_seconds": s or null, "variables_sha256": ...}``; enough to rebuild ``RetrievalModel``
  without a training config, a checkpoint or data. ``segment_seconds`` is the clip length the model
  was trained on: ``hybrid_jax.load_model`` embeds longer recordings in segments of that length;
* ``variables.safetensors``: ``params`` and ``batch_stats`` only (no optimizer state), keyed by
  their path (``params/audio_tower/mobilenet/features_0/conv/kernel``), float32;
* the tokenizer files (``vocab.txt`` and/or ``tokenizer.json``, ...);
* ``card.json`` and ``README.md``: the model card (training data, config, metrics, date, version).

``tools``' converters and ``hybrid_jax.export`` write it; ``load`` reads it.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import pathlib
import shutil
from typing import Any, Mapping

import jax.numpy as jnp

from hybrid_jax.convert import weights
from hybrid_jax.models import frontend
from hybrid_jax.models.bert import BertConfig
from hybrid_jax.models.retrieval import AudioSettings, PoolingSettings, RetrievalModel

FORMAT = 1
MODEL_FILE = "model.json"
CARD_FILE = "card.json"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_NESTED = {"audio": AudioSettings, "text": BertConfig, "pooling": PoolingSettings}


def model_to_dict(model: RetrievalModel) -> dict[str, Any]:
    """Every constructor field of ``model`` as JSON-able values (dtypes by name).

    The CNN kernels and the STFT are written as "auto": they change speed, not values, and the
    loading host's backend policy picks them (a model exported on a CPU runs the TPU kernels
    on a TPU)."""
    out = {}
    for field in dataclasses.fields(RetrievalModel):
        if field.name in ("parent", "name"):
            continue
        value = getattr(model, field.name)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
            if field.name == "audio":
                value["depthwise"] = value["stft"] = "auto"
        elif field.name == "dtype":
            value = jnp.dtype(value).name
        out[field.name] = value
    return out


def _build(cls, values: Mapping[str, Any], where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown settings {unknown} (written by a newer hybrid_jax?)")
    kwargs = dict(values)
    if cls is AudioSettings and isinstance(kwargs.get("mel"), Mapping):
        kwargs["mel"] = _build(frontend.MelConfig, kwargs["mel"], f"{where}.mel")
    return cls(**kwargs)


def model_from_dict(values: Mapping[str, Any]) -> RetrievalModel:
    """Inverse of ``model_to_dict``; names any setting this version does not know."""
    kwargs = {}
    for key, value in values.items():
        if key in _NESTED:
            value = _build(_NESTED[key], value, f"model.{key}")
        elif key == "dtype":
            value = jnp.dtype(value)
        kwargs[key] = value
    return _build(RetrievalModel, kwargs, "model")


def save(directory: str | pathlib.Path, model: RetrievalModel, variables: Mapping[str, Any],
         tokenizer_dir: str | pathlib.Path, *, max_length: int, card: Mapping[str, Any],
         segment_seconds: float | None = None) -> pathlib.Path:
    """Writes a model directory. ``variables``: {"params": ..., "batch_stats": ...} (host or device
    arrays); ``tokenizer_dir``: a folder with the tokenizer files; ``card``: the model card fields;
    ``segment_seconds``: the training clip length (None: unknown, then long recordings are cut at
    the longest segment the pooling transformer takes)."""
    directory = pathlib.Path(directory)
    tokenizer_dir = pathlib.Path(tokenizer_dir)
    files = [n for n in TOKENIZER_FILES if (tokenizer_dir / n).is_file()]
    if not {"vocab.txt", "tokenizer.json"} & set(files):
        raise FileNotFoundError(f"{tokenizer_dir}: no vocab.txt or tokenizer.json to ship with the model")
    directory.mkdir(parents=True, exist_ok=True)
    kept = {k: variables[k] for k in ("params", "batch_stats") if k in variables and variables[k]}
    variables_file = weights.save_variables(directory, kept)
    spec = {"format": FORMAT, "model": model_to_dict(model), "max_length": int(max_length),
            "segment_seconds": None if segment_seconds is None else float(segment_seconds),
            "variables_sha256": _sha256(variables_file)}
    (directory / MODEL_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    for name in files:
        if (tokenizer_dir / name).resolve() != (directory / name).resolve():
            shutil.copyfile(tokenizer_dir / name, directory / name)
    card = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "hybrid_jax_version": _version(), **card}
    (directory / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    (directory / "README.md").write_text(_card_markdown(card, spec))
    return directory


@dataclasses.dataclass
class Loaded:
    """What a model directory holds, read back."""

    model: RetrievalModel
    variables: dict[str, Any]  # {"params": ..., "batch_stats": ...} as numpy arrays
    tokenizer: Any  # hybrid_jax.models.text.Tokenizer
    card: dict[str, Any]
    segment_seconds: float | None = None  # training clip length, if recorded
    fingerprint: str = ""  # sha256 of model.json (which holds the weights' sha256): names the model


def load(directory: str | pathlib.Path) -> Loaded:
    """Reads a model directory; names the missing file or unknown setting on error."""
    from hybrid_jax.models.text import Tokenizer

    directory = pathlib.Path(directory)
    path = directory / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; a model directory is written by "
                                "`python -m hybrid_jax.export` or tools/convert_salsa.py")
    text = path.read_text()
    spec = json.loads(text)
    if spec.get("format") != FORMAT:
        raise ValueError(f"{path}: model directory format {spec.get('format')!r}, this version reads {FORMAT}")
    model = model_from_dict(spec["model"])
    variables = weights.load_variables(directory)
    variables.setdefault("batch_stats", {})
    card = json.loads((directory / CARD_FILE).read_text()) if (directory / CARD_FILE).is_file() else {}
    return Loaded(model, variables, Tokenizer.from_pretrained(directory, spec["max_length"]), card,
                  spec.get("segment_seconds"), hashlib.sha256(text.encode()).hexdigest())


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("hybrid_jax")
    except metadata.PackageNotFoundError:
        return "unknown"


def _card_markdown(card: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    model = spec["model"]
    lines = ["# hybrid_jax retrieval model", "",
             f"Fusion: `{model['fusion']}`; retrieval space {model['embed_dim']}-d; text encoder "
             f"{model['text']['num_hidden_layers']} layers x {model['text']['hidden_size']}; audio "
             f"MobileNetV3 width {model['audio']['width_mult']}.", "",
             "Load with `hybrid_jax.load_model(<this folder>)`.", "", "| field | value |", "| --- | --- |"]
    lines += [f"| {k} | {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v} |"
              for k, v in sorted(card.items())]
    return "\n".join(lines) + "\n"
