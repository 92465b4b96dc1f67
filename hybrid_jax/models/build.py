"""Builds the retrieval model from a config and loads the converted pretrained towers into it."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np

from hybrid_jax.backend import policy as backend_policy
from hybrid_jax.convert import weights
from hybrid_jax.models import frontend, pretrained, text
from hybrid_jax.models import text_encoder as text_encoder_lib
from hybrid_jax.models.bert import BertConfig
from hybrid_jax.models.retrieval import AudioSettings, PoolingSettings, RetrievalModel

MINILM = "minilm"  # config.model.text.checkpoint value for the packaged offline MiniLM


def compute_dtype(name: str, policy: backend_policy.Policy | None = None):
    """"auto": bfloat16 on accelerators, float32 on CPU (XLA:CPU bf16 convs are slow), by
    ``policy`` (default: this process's devices); "float32"/"bfloat16" as named."""
    return (policy or backend_policy.local()).dtype(name)


def _require_dir(path: str, what: str) -> pathlib.Path:
    directory = pathlib.Path(path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{what} checkpoint {directory} not found: convert the released weights first "
            f"(see README, 'Pretrained weights') or set the config key to its location"
        )
    return directory


def text_checkpoint_dir(path: str) -> pathlib.Path:
    """The converted BERT directory; "minilm" converts the packaged MiniLM once into a cache."""
    if path != MINILM:
        return _require_dir(path, "text (config.model.text.checkpoint)")
    from hybrid_jax.convert import bert as convert_bert

    cache_root = os.environ.get("HYBRID_JAX_CACHE") or pathlib.Path.home() / ".cache" / "hybrid_jax"
    cache = pathlib.Path(cache_root) / "minilm"
    if not (cache / "variables.safetensors").is_file():
        # Converted beside the cache and renamed into place, so that concurrent jobs on one
        # machine never read a half-written directory (the first rename wins; the others drop theirs).
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = pathlib.Path(tempfile.mkdtemp(prefix="minilm.", dir=cache.parent))
        convert_bert.convert_checkpoint(text.minilm_package_dir(), partial)
        try:
            partial.rename(cache)
        except OSError:  # another job was first, or an incomplete directory is in the way
            shutil.rmtree(partial)
            if not (cache / "variables.safetensors").is_file():
                raise FileExistsError(f"{cache} exists without variables.safetensors (an interrupted "
                                      f"conversion?): remove it and run again") from None
    return cache


@dataclasses.dataclass
class Built:
    """The model plus what is needed to initialise it from pretrained towers."""

    model: RetrievalModel
    tokenizer: Any  # hybrid_jax.models.text.Tokenizer
    audio_variables: dict | None  # converted MobileNetV3 variables (None: random init)
    text_variables: dict  # converted BERT variables


def config_mel(audio_cfg: ml_collections.ConfigDict) -> frontend.MelConfig:
    """The front end of a randomly initialised audio tower (``config.model.audio``)."""
    return frontend.MelConfig(
        n_mels=audio_cfg.n_mels,
        freq_mask_bins=audio_cfg.freq_mask_bins,
        time_mask_frames=audio_cfg.time_mask_frames,
        fmin_aug_range=10 if audio_cfg.jitter_band_edges else 1,
        fmax_aug_range=2000 if audio_cfg.jitter_band_edges else 0,
        fmax=15000.0,
    )


def checkpoint_mel(mel: frontend.MelConfig, saved: frontend.MelConfig) -> frontend.MelConfig:
    """A converted tower's own front end (``saved``) with the config's training augmentation."""
    return dataclasses.replace(
        saved,
        freq_mask_bins=mel.freq_mask_bins,
        time_mask_frames=mel.time_mask_frames,
        fmax=saved.fmax_hz,
        fmin_aug_range=mel.fmin_aug_range,
        fmax_aug_range=mel.fmax_aug_range,
    )


def retrieval_model(model_config: ml_collections.ConfigDict, policy: backend_policy.Policy, *,
                    width_mult: float, mel: frontend.MelConfig, text_config) -> RetrievalModel:
    """``RetrievalModel`` of ``config.model`` with every backend choice resolved by ``policy``
    (the CNN kernels, the STFT and the compute dtype), for the given tower architectures."""
    audio_cfg, text_cfg = model_config.audio, model_config.text
    return RetrievalModel(
        audio=AudioSettings(
            width_mult=width_mult,
            window_seconds=audio_cfg.window_seconds,
            mel=mel,
            depthwise=policy.kernels(audio_cfg.depthwise),
            stft=policy.stft,
            bn_momentum=audio_cfg.bn_momentum,
            remat=audio_cfg.remat,
            tokens=audio_cfg.get("tokens", "frame"),  # configs written before the key: frame tokens
        ),
        text=text_config,
        pooling=PoolingSettings(**model_config.pooling.to_dict()),
        fusion=model_config.fusion.mode,
        embed_dim=model_config.fusion.embed_dim,
        separate_metadata_encoder=text_cfg.separate_metadata_encoder,
        text_trainable=text_cfg.trainable,
        text_remat=text_cfg.remat,
        learn_temperature=model_config.learn_temperature,
        initial_temperature=model_config.temperature,
        loss=model_config.loss,
        dtype=policy.dtype(model_config.dtype),
    )


def architecture(model_config: ml_collections.ConfigDict, policy: backend_policy.Policy,
                 text_config=None) -> RetrievalModel:
    """The model of ``config.model`` from the towers' settings alone: no weights are read.

    A converted audio tower gives its width and front end (``config.json``); without one,
    ``audio.width_mult`` and the config's front end. The text tower's ``BertConfig`` comes from
    ``text_config`` if given, else from the converted directory (or the packaged MiniLM).
    """
    audio_cfg, text_cfg = model_config.audio, model_config.text
    mel, width = config_mel(audio_cfg), audio_cfg.width_mult
    if audio_cfg.checkpoint and model_config.fusion.mode != "metadata_only":
        directory = _require_dir(audio_cfg.checkpoint, "audio (config.model.audio.checkpoint)")
        saved = json.loads((directory / weights.CONFIG_FILE).read_text())
        width = float(saved["width_mult"])
        mel = checkpoint_mel(mel, frontend.MelConfig(**saved.get("mel", {})))
    if text_config is None:
        if text_cfg.checkpoint == MINILM:
            hf = json.loads((text.minilm_package_dir() / "config.json").read_text())
        else:
            directory = _require_dir(text_cfg.checkpoint, "text (config.model.text.checkpoint)")
            hf = json.loads((directory / weights.CONFIG_FILE).read_text())["hf_config"]
        text_config = BertConfig.from_hf(hf, dropout=text_cfg.dropout)
    return retrieval_model(model_config, policy, width_mult=width, mel=mel, text_config=text_config)


def build(model_config: ml_collections.ConfigDict, policy: backend_policy.Policy | None = None) -> Built:
    """Reads the converted towers named in ``config.model`` and constructs ``RetrievalModel``.

    ``policy``: the backend choices of the devices the model will run on (the commands pass the
    one of their mesh, ``policy.of_mesh``); default: this process's devices."""
    policy = policy or backend_policy.local()
    audio_cfg, text_cfg = model_config.audio, model_config.text
    mel = config_mel(audio_cfg)
    audio_variables, width = None, audio_cfg.width_mult
    if audio_cfg.checkpoint and model_config.fusion.mode != "metadata_only":
        encoder = pretrained.load_audio_encoder(_require_dir(audio_cfg.checkpoint, "audio (config.model.audio.checkpoint)"))
        width = encoder.module.width_mult
        mel = checkpoint_mel(mel, encoder.mel_config)
        audio_variables = encoder.variables
    text_encoder = text_encoder_lib.load(
        text_checkpoint_dir(text_cfg.checkpoint), max_length=text_cfg.max_length, dropout=text_cfg.dropout
    )
    model = retrieval_model(model_config, policy, width_mult=width, mel=mel, text_config=text_encoder.config)
    return Built(model, text_encoder.tokenizer, audio_variables, text_encoder.variables)


def _graft(target: dict, source: dict, where: str) -> dict:
    """Copies ``source`` arrays into the matching subtree of ``target``; every target leaf must be
    provided with the same shape (extra source leaves, e.g. a classifier head, are ignored)."""
    out = {}
    for key, value in target.items():
        path = f"{where}/{key}"
        if key not in source:
            raise ValueError(f"pretrained weights lack {path}")
        if isinstance(value, dict):
            out[key] = _graft(value, source[key], path)
        else:
            got = np.asarray(source[key])
            if got.shape != value.shape:
                raise ValueError(f"pretrained {path} has shape {got.shape}, the model expects {value.shape}")
            # Placed like the initialised leaf, so a sharded state stays sharded.
            out[key] = jax.device_put(got.astype(value.dtype), getattr(value, "sharding", None))
    return out


def load_pretrained(built: Built, variables: dict) -> dict:
    """Returns ``variables`` with the converted towers grafted in (the rest stays as initialised)."""
    params = dict(variables["params"])
    batch_stats = dict(variables.get("batch_stats", {}))
    encoders = ["bert"] + (["meta_bert"] if "meta_bert" in params else [])
    for name in encoders:
        params[name] = _graft(params[name], built.text_variables["params"], f"params/{name}")
    if built.audio_variables is not None and "audio_tower" in params:
        tower = dict(params["audio_tower"])
        tower["mobilenet"] = _graft(tower["mobilenet"], built.audio_variables["params"], "params/audio_tower/mobilenet")
        params["audio_tower"] = tower
        stats = dict(batch_stats["audio_tower"])
        stats["mobilenet"] = _graft(
            stats["mobilenet"], built.audio_variables["batch_stats"], "batch_stats/audio_tower/mobilenet"
        )
        batch_stats["audio_tower"] = stats
    return {"params": params, "batch_stats": batch_stats}
