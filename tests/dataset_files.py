"""Writers of tiny dataset files in their real on-disk formats, for the preparation and pipeline tests."""
from __future__ import annotations

import csv
import io
import json
import pathlib

import numpy as np
import soundfile as sf


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    """float32 [T] or [T, C] sine; each channel at a different phase so a downmix is checkable."""
    t = np.arange(int(round(seconds * rate))) / rate
    waves = [amp * np.sin(2 * np.pi * freq * t + c) for c in range(channels)]
    return np.stack(waves, axis=1).astype(np.float32) if channels > 1 else waves[0].astype(np.float32)


def write_audio(path: pathlib.Path, seconds: float = 1.0, rate: int = 44100, channels: int = 1, **kw) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate, channels, **kw), rate)
    return path


def write_bad_audio(folder: pathlib.Path) -> dict[str, str]:
    """Writes the broken files met in the wild -> {file name: words expected in the reject reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    sf.write(good, tone(1.0, 44100), 44100, format="WAV", subtype="PCM_16")
    data = good.getvalue()
    (folder / "truncated.wav").write_bytes(data[: len(data) // 3])
    (folder / "empty.wav").write_bytes(b"")
    (folder / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    sf.write(folder / "zero_frames.wav", np.zeros((0,), np.float32), 44100)
    nan = tone(1.0, 44100)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, 44100, subtype="FLOAT")
    return {
        "truncated.wav": "truncated",
        "empty.wav": "empty",
        "garbage.wav": "cannot decode",
        "zero_frames.wav": "0 samples",
        "nan.wav": "NaN",
    }


def write_csv(path: pathlib.Path, header: list[str], rows: list[list[str]], *, encoding: str = "utf-8",
              newline: str = "\n", bom: bool = False) -> pathlib.Path:
    """A CSV with minimal quoting, in the given encoding and line ending (optionally with a BOM)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode(encoding))
    return path


CLOTHO_CAPTION_HEADER = ["file_name"] + [f"caption_{k}" for k in range(1, 6)]
CLOTHO_METADATA_HEADER = ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license"]


def clotho_captions(name: str) -> list[str]:
    return [name] + [f"a sound called {name.strip()}, take {k}" for k in range(1, 6)]


def clotho_metadata(name: str, keywords: str = "birds;forest", sound_id: str = "123") -> list[str]:
    return [name, keywords, sound_id, f"https://freesound.org/people/x/sounds/{sound_id}/", "[0, 100]", "x",
            "http://creativecommons.org/licenses/by/3.0/"]


def write_json(path: pathlib.Path, obj) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def fake_tokenize(texts: list[str], length: int = 8) -> dict[str, np.ndarray]:
    """Deterministic stand-in for the BERT tokenizer: word -> stable id, [N, length] int32."""
    ids = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
        words = [sum(map(ord, w)) % 997 + 1 for w in text.lower().split()][:length]
        ids[row, : len(words)] = words
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32), "token_type_ids": np.zeros_like(ids)}
