"""Decode, validate, downmix and resample one audio file to 32 kHz mono int16, with clear reasons.

``decode`` reads a whole clip (dataset preparation); ``stream`` and ``stream_waveform`` read a
recording of any length block by block and yield it in fixed-length segments, so memory stays
bounded for hour-long files (the search index, ``hybrid_jax.load_model``).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import struct
from collections.abc import Iterable, Iterator

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


def _check_file(path: pathlib.Path) -> tuple[int, int] | None:
    """The checks before decoding: not empty, a WAV's data chunk complete. -> ``_wav_declared_bytes``."""
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        declared = _wav_declared_bytes(path)
    except (OSError, struct.error) as e:
        raise AudioError(f"unreadable WAV header: {e}") from e
    if declared is not None and declared[1] < declared[0] and declared[0] != 0xFFFFFFFF:
        # 0xFFFFFFFF is the "unknown length" marker streaming writers leave behind.
        raise AudioError(f"truncated: WAV header declares {declared[0]} data bytes, file holds {declared[1]}")
    return declared


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
    declared = _check_file(path)
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


# Source frames read (and resampled) at a time by ``stream``: ~1.4 s at 48 kHz, so a stereo
# 48 kHz block is 0.5 MB of float32 whatever the recording's length.
BLOCK_FRAMES = 1 << 16


def stream(path: str | os.PathLike, segment_samples: int, *,
           block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Yields ``path`` as 32 kHz mono int16 segments of ``segment_samples`` (the last one shorter),
    reading ``block_frames`` source frames at a time: memory is bounded whatever the file's length.

    The checks and conversions are ``decode``'s (empty, truncated, undecodable, non-finite samples
    raise ``AudioError``; channels are averaged, other rates resampled with soxr HQ, streamed, which
    gives the same samples as resampling the whole file). A problem found late in a file (NaN at
    1:20:00) raises after the earlier segments were yielded: the caller drops the recording.
    """
    path = pathlib.Path(path)
    declared = _check_file(path)
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
        reason = getattr(e, "error_string", str(e))
        if reason.startswith("File does not exist") and path.is_file():
            # libsndfile's words for any existing file it cannot parse (e.g. text named .mp3).
            reason = f"not a readable {path.suffix.lower() or 'audio'} file (unrecognised or corrupt data)"
        raise AudioError(f"cannot decode: {reason}") from e
    with f:
        read = [0]

        def blocks() -> Iterator[np.ndarray]:
            while True:
                try:
                    block = f.read(block_frames, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
                    raise AudioError(f"cannot decode after {read[0] / f.samplerate:.1f} s: {e}") from e
                if len(block) == 0:
                    return
                read[0] += len(block)
                yield block

        yield from _segments(blocks(), f.samplerate, segment_samples)
        if f.frames > 0 and read[0] < f.frames and declared is None:
            raise AudioError(f"truncated: header declares {f.frames} frames, decoded {read[0]}")


def stream_waveform(wave: np.ndarray, rate: int, segment_samples: int, *,
                    block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """``stream`` for a waveform in memory: float [-1, 1] or int16/int32 PCM, ``[samples]`` or
    ``[samples, channels]`` (soundfile's layout), at ``rate`` Hz. The same float samples as a file
    give the same segments as ``stream`` of that file."""
    wave = np.asarray(wave)
    if wave.ndim == 1:
        wave = wave[:, None]
    if wave.ndim != 2:
        raise AudioError(f"waveform must be [samples] or [samples, channels], got shape {wave.shape}")
    if wave.shape[1] > 16 and wave.shape[0] <= 16:
        raise AudioError(f"waveform of shape {wave.shape} looks like [channels, samples]; pass its transpose")
    if wave.dtype == np.int16:
        wave = wave.astype(np.float32) / 32768.0
    elif wave.dtype == np.int32:
        wave = (wave / 2.0**31).astype(np.float32)
    elif np.issubdtype(wave.dtype, np.floating):
        wave = wave.astype(np.float32, copy=False)
    else:
        raise AudioError(f"waveform dtype {wave.dtype} is not float or int16/int32 PCM")
    if not rate or rate <= 0:
        raise AudioError(f"sample rate must be positive, got {rate!r}")
    blocks = (wave[i : i + block_frames] for i in range(0, len(wave), block_frames))
    yield from _segments(blocks, int(rate), segment_samples)


def _segments(blocks: Iterable[np.ndarray], rate: int, segment_samples: int) -> Iterator[np.ndarray]:
    """float32 [n, C] blocks at ``rate`` -> int16 mono segments at SAMPLE_RATE (see ``stream``)."""
    buffer = np.empty(segment_samples, np.int16)
    fill = total = 0
    for mono in _mono_32k(blocks, rate):
        pcm = to_int16(mono)
        total += len(pcm)
        while len(pcm):
            take = min(len(pcm), segment_samples - fill)
            buffer[fill : fill + take] = pcm[:take]
            fill, pcm = fill + take, pcm[take:]
            if fill == segment_samples:
                yield buffer.copy()
                fill = 0
    if total == 0:
        raise AudioError("no audio frames (0 samples)")
    if fill:
        yield buffer[:fill].copy()


def _mono_32k(blocks: Iterable[np.ndarray], rate: int) -> Iterator[np.ndarray]:
    """Checked, downmixed, resampled float32 pieces of the blocks (the resampler's tail last)."""
    resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    seen = 0
    for block in blocks:
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise AudioError(f"non-finite (NaN/Inf) samples (first at {(seen + int(np.argmin(finite))) / rate:.2f} s)")
        seen += len(block)
        mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
        yield mono if resampler is None else resampler.resample_chunk(mono)
    if resampler is not None:
        yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)
