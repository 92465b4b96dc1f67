"""Pretrained EfficientAT audio tower for inference: waveform -> log-mel -> MobileNetV3 outputs."""
from __future__ import annotations

import functools
import pathlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_jax.backend import policy as backend_policy
from hybrid_jax.convert import weights
from hybrid_jax.models import frontend, mobilenet
from hybrid_jax.schema import SAMPLE_RATE


def resolve_eval_chunk(eval_chunk: int | str, policy: backend_policy.Policy | None = None) -> int:
    """"auto" -> 1 on CPU (one example at a time keeps activations in cache), else 0 (whole batch),
    by ``policy`` (default: this process's devices, where the encoder's arrays live)."""
    return (policy or backend_policy.local()).eval_chunk(eval_chunk)


def apply_eval(module: mobilenet.MobileNetV3, variables, inputs, eval_chunk: int | str = "auto",
               preprocess=None) -> dict[str, jax.Array]:
    """Eval-mode ``module(preprocess(inputs))``, the network run on ``eval_chunk`` examples at a time.

    On CPU the early activations of a whole batch (65 MB per tensor for mn10 at batch 8, 4x that
    for mn40) fall out of cache between layers; a ``lax.map`` over single examples ran the network
    ~1.5-1.8x faster. The classifier runs on the whole batch (per example it would re-read its
    weights, 78 MB at mn40, for each one). ``preprocess`` (e.g. the mel front end) runs per chunk
    too. ``eval_chunk=0``: everything at once. Eval only: train-mode BN needs batch statistics.
    """
    preprocess = preprocess or (lambda x: x)
    chunk = resolve_eval_chunk(eval_chunk)
    batch = inputs.shape[0]
    if chunk <= 0 or batch <= chunk:
        return module.apply(variables, preprocess(inputs), train=False)

    def pooled(chunk_inputs):
        maps = module.apply(variables, preprocess(chunk_inputs), train=False, method="feature_maps")
        return module.apply(variables, maps, method="pool")

    inputs = jnp.pad(inputs, ((0, -batch % chunk),) + ((0, 0),) * (inputs.ndim - 1))
    out = jax.lax.map(pooled, inputs.reshape(-1, chunk, *inputs.shape[1:]))
    out = jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:])[:batch], out)
    if module.num_classes:
        out["logits"] = module.apply(variables, out["features"], train=False, method="classify")
    return out


@functools.lru_cache(maxsize=None)
def _jitted(module: mobilenet.MobileNetV3, mel_config: frontend.MelConfig, eval_chunk):
    # Keyed on the (hashable) settings, so encoders with equal settings share compiled code.
    def embed_mel(variables, mel):
        return apply_eval(module, variables, mel, eval_chunk)

    def embed(variables, waveform):
        # The front end runs per chunk too: a batch's STFT frames are 4 MB per 10 s clip.
        return apply_eval(module, variables, waveform, eval_chunk,
                          preprocess=lambda w: frontend.log_mel(w, mel_config))

    log_mel = jax.jit(lambda waveform: frontend.log_mel(waveform, mel_config))
    return log_mel, jax.jit(embed_mel), jax.jit(embed)


class AudioEncoder:
    """Eval-mode, float32 audio tower. Calls are jitted (compiled once per input shape).

    ``module``, ``variables`` and ``mel_config`` are public so that the retrieval model can reuse
    the tower (e.g. ``module.apply(variables, mel, train=True, mutable=["batch_stats"])``).
    """

    def __init__(self, module: mobilenet.MobileNetV3, variables: dict[str, Any],
                 mel_config: frontend.MelConfig = frontend.MelConfig(), config: Optional[dict] = None,
                 eval_chunk: int | str = "auto"):
        self.module = module
        self.variables = jax.device_put(variables)
        self.mel_config = mel_config
        self.config = dict(config or {})
        self._log_mel, self._embed_mel, self._embed = _jitted(module, mel_config, eval_chunk)

    def log_mel(self, waveform) -> np.ndarray:
        """[B, L] float32 at 32 kHz -> normalised log-mel [B, n_mels, T]."""
        return np.asarray(self._log_mel(jnp.asarray(waveform, jnp.float32)))

    def embed_mel(self, mel) -> dict[str, np.ndarray]:
        """[B, n_mels, T] -> {"logits" [B, K], "features" [B, C], "sequence" [B, T', C]}."""
        out = self._embed_mel(self.variables, jnp.asarray(mel, jnp.float32))
        return {name: np.asarray(value) for name, value in out.items()}

    def embed(self, waveform) -> dict[str, np.ndarray]:
        """[B, L] float32 at 32 kHz -> {"logits" [B, K], "features" [B, C], "sequence" [B, T', C]}.

        T' = ceil(T / 32): one step per 0.32 s at the default hop.
        """
        out = self._embed(self.variables, jnp.asarray(waveform, jnp.float32))
        return {name: np.asarray(value) for name, value in out.items()}

    def embed_file(self, path: str | pathlib.Path) -> dict[str, np.ndarray]:
        """Reads an audio file (mono mix, resampled to 32 kHz) and embeds it as a batch of one."""
        waveform = read_audio(path, self.mel_config.sample_rate)
        return self.embed(waveform[None, :])


def read_audio(path: str | pathlib.Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Audio file -> mono float32 [L] at ``sample_rate`` (librosa: soundfile reads, soxr resamples)."""
    import librosa

    waveform, _ = librosa.load(str(path), sr=sample_rate, mono=True)
    return waveform.astype(np.float32)


def load(directory: str | pathlib.Path, depthwise: str = "auto",
         eval_chunk: int | str = "auto") -> AudioEncoder:
    """Loads a directory written by ``tools/convert_efficientat.py``.

    ``depthwise`` and ``eval_chunk`` only change speed ("auto" picks per backend, see mobilenet).
    """
    variables, config = weights.load(directory)
    if config.get("head", "mlp") != "mlp":
        raise ValueError(f"{directory}: head {config['head']!r} is not supported")
    module = mobilenet.MobileNetV3(
        width_mult=float(config["width_mult"]),
        num_classes=int(config["num_classes"]),
        depthwise=depthwise,
    )
    mel_config = frontend.MelConfig(**config.get("mel", {}))
    return AudioEncoder(module, variables, mel_config, config, eval_chunk)
