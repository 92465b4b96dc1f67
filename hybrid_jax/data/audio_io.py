"""Decode, validate, downmix and resample one audio file to 32 kHz mono int16, with clear reasons."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import struct

import numpy as np
import soundfile as sf
import soxr

from hybrid_jax.schema import SAMPLE_RATE

# Formats libsndfile (>= 1.1) decodes; anything else on disk is not audio to us.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")


class AudioError(Exception):
    """A file that cannot become a training clip; ``str(error)`` is the reason for the report."""


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One decoded clip.

    Attributes:
      samples: int16 [S] mono PCM at ``SAMPLE_RATE``.
      source_rate: sample rate found in the file (resampled when != SAMPLE_RATE).
      source_channels: channel count found in the file (averaged when > 1).
      cropped_from: length in seconds before cropping to ``max_seconds``, else None.
    """

    samples: np.ndarray
    source_rate: int
    source_channels: int
    cropped_from: float | None

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def _wav_declared_bytes(path: pathlib.Path) -> tuple[int, int] | None:
    """(declared, present) byte counts of a RIFF WAV's data chunk, or None if it is not RIFF.

    libsndfile silently shortens a truncated WAV to the bytes present, so an interrupted
    extraction would pass as a shorter clip; the header still says how long it should be.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                return chunk_size, size - pos - 8
            pos += 8 + chunk_size + (chunk_size & 1)
    return None


def to_int16(wave: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 PCM (clipped), the storage format of every prepared clip."""
    return np.clip(np.rint(wave * 32767.0), -32768, 32767).astype(np.int16)


def decode(
    path: str | os.PathLike,
    *,
    min_seconds: float = 0.0,
    max_seconds: float | None = None,
) -> Decoded:
    """Reads ``path`` -> ``Decoded`` (32 kHz mono int16), or raises ``AudioError`` with the reason.

    Stereo is averaged and other rates are resampled (soxr HQ) rather than rejected; clips
    shorter than the training window are kept (the loader pads them). Rejected: unreadable,
    empty, truncated, non-finite samples, shorter than ``min_seconds``.
    """
    path = pathlib.Path(path)
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        declared = _wav_declared_bytes(path)
    except (OSError, struct.error) as e:
        raise AudioError(f"unreadable WAV header: {e}") from e
    if declared is not None and declared[1] < declared[0] and declared[0] != 0xFFFFFFFF:
        # 0xFFFFFFFF is the "unknown length" marker streaming writers leave behind.
        raise AudioError(f"truncated: WAV header declares {declared[0]} data bytes, file holds {declared[1]}")
    try:
        info = sf.info(str(path))
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
        raise AudioError(f"cannot decode: {e}") from e
    if wave.shape[0] == 0:
        raise AudioError("no audio frames (0 samples)")
    if info.frames > 0 and wave.shape[0] < info.frames and declared is None:
        raise AudioError(f"truncated: header declares {info.frames} frames, decoded {wave.shape[0]}")
    if not np.isfinite(wave).all():
        raise AudioError("non-finite (NaN/Inf) samples")
    channels = wave.shape[1]
    mono = wave.mean(axis=1) if channels > 1 else wave[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    seconds = len(mono) / SAMPLE_RATE
    if len(mono) == 0 or seconds < min_seconds:
        raise AudioError(f"too short: {seconds:.3f} s < min_seconds={min_seconds}")
    cropped_from = None
    if max_seconds is not None and seconds > max_seconds:
        # Very long uploads (WavCaps reaches hours) are cut to their start, not dropped.
        mono = mono[: int(round(max_seconds * SAMPLE_RATE))]
        cropped_from = seconds
    return Decoded(to_int16(mono), int(rate), int(channels), cropped_from)
