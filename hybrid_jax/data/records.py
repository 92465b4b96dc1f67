"""Random access to a prepared split: audio by index (zero-copy from the record) plus its text index."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import decode as tfds_decode

import hybrid_jax.data.prepare.preparation  # noqa: F401 - registers the builders with TFDS


class SplitData(Protocol):
    """What the loaders need from a split: N clips, their audio and their text.

    Attributes:
      file_names: [N] names as in the dataset's CSV/JSON.
      captions: [N] lists of captions (>= 1 each).
      keywords: [N] lists of raw keywords / labels / tags (may be empty).
      num_samples: int64 [N] audio lengths at 32 kHz.
      keyword_kind: "keywords", "labels" or "tags".
    """

    file_names: Sequence[str]
    captions: Sequence[Sequence[str]]
    keywords: Sequence[Sequence[str]]
    num_samples: np.ndarray
    keyword_kind: str

    def __len__(self) -> int: ...

    def audio(self, index: int) -> np.ndarray:
        """int16 [num_samples[index]] mono PCM at 32 kHz (may be a read-only view)."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yields (field number, start, end) of the length-delimited fields of a protobuf message."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        wire = tag & 7
        if wire == 2:
            length, pos = _varint(buf, pos)
            yield tag >> 3, pos, pos + length
            pos += length
        elif wire == 0:
            _, pos = _varint(buf, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def bytes_feature(record: bytes, name: str) -> memoryview:
    """The single bytes value of feature ``name`` in a serialized tf.train.Example, without copying.

    Example{features=1: Features{feature=1: map entry{key=1, value=2: Feature{bytes_list=1:
    BytesList{value=1}}}}}. protobuf's parser would copy the ~2 MB audio once per read; this
    walks the wire format and returns a view into ``record``.
    """
    buf, key = memoryview(record), name.encode()
    for field, start, end in _fields(buf, 0, len(buf)):
        if field != 1:
            continue
        for _, entry_start, entry_end in _fields(buf, start, end):
            entry = {f: (s, e) for f, s, e in _fields(buf, entry_start, entry_end)}
            if 1 in entry and buf[slice(*entry[1])] == key and 2 in entry:
                for kind, s, e in _fields(buf, *entry[2]):
                    if kind == 1:
                        for item, vs, ve in _fields(buf, s, e):
                            if item == 1:
                                return buf[vs:ve]
                raise ValueError(f"feature {name!r} is not a bytes feature")
    raise KeyError(f"no feature {name!r} in the record")


class TfdsSplit:
    """A prepared split read through ``tfds.data_source`` (raw records, audio parsed zero-copy)."""

    def __init__(self, dataset: str, data_dir: str | os.PathLike, split: str):
        try:
            self._source = tfds.data_source(
                dataset,
                data_dir=os.fspath(data_dir),
                split=split,
                download=False,
                deserialize_method=tfds_decode.DeserializeMethod.RAW_BYTES,
            )
        except Exception as e:
            raise FileNotFoundError(
                f"{dataset}/{split} is not prepared in {data_dir}: run "
                f"`python -m hybrid_jax.prepare {dataset} --source SRC --data-dir {data_dir}` ({e})"
            ) from e
        metadata = self._source.dataset_info.metadata
        index = metadata["index"][split]
        self.name = f"{dataset}/{split}"
        self.file_names = index["file_name"]
        self.source_ids = index["source_id"]
        self.captions = index["captions"]
        self.keywords = index["keywords"]
        self.num_samples = np.asarray(index["num_samples"], np.int64)
        self.keyword_kind = metadata["keyword_kind"]
        if len(self.file_names) != len(self._source):
            raise ValueError(f"{self.name}: index has {len(self.file_names)} rows, records {len(self._source)}")

    def __len__(self) -> int:
        return len(self.file_names)

    def audio(self, index: int) -> np.ndarray:
        return np.frombuffer(bytes_feature(self._source[index], "audio"), np.int16)


def open_split(dataset: str, data_dir: str | os.PathLike, split: str) -> TfdsSplit:
    """The prepared ``split`` ("train", "validation", "test") of ``dataset`` under ``data_dir``."""
    return TfdsSplit(dataset, data_dir, split)


class InMemorySplit:
    """A split held in memory (tests, tiny experiments); same interface as ``TfdsSplit``."""

    def __init__(
        self,
        audio: Sequence[np.ndarray],
        captions: Sequence[Sequence[str]],
        keywords: Sequence[Sequence[str]] | None = None,
        file_names: Sequence[str] | None = None,
        keyword_kind: str = "keywords",
    ):
        self._audio = [np.asarray(a, np.int16) for a in audio]
        self.captions = [list(c) for c in captions]
        self.keywords = [list(k) for k in keywords] if keywords is not None else [[] for _ in audio]
        self.file_names = list(file_names) if file_names is not None else [f"{i}.wav" for i in range(len(audio))]
        self.num_samples = np.array([len(a) for a in self._audio], np.int64)
        self.keyword_kind = keyword_kind
        self.name = "in-memory"

    def __len__(self) -> int:
        return len(self._audio)

    def audio(self, index: int) -> np.ndarray:
        return self._audio[index]


class ConcatSplit:
    """Several splits as one (e.g. Clotho + AudioCaps training); item ids run on across parts."""

    def __init__(self, parts: Sequence[SplitData]):
        self._parts = list(parts)
        self._offsets = np.cumsum([0] + [len(p) for p in self._parts])
        self.file_names = [n for p in self._parts for n in p.file_names]
        self.captions = [c for p in self._parts for c in p.captions]
        self.keywords = [k for p in self._parts for k in p.keywords]
        self.num_samples = np.concatenate([p.num_samples for p in self._parts])
        kinds = {p.keyword_kind for p in self._parts}
        self.keyword_kind = kinds.pop() if len(kinds) == 1 else "mixed"
        self.name = "+".join(getattr(p, "name", "?") for p in self._parts)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def audio(self, index: int) -> np.ndarray:
        part = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return self._parts[part].audio(index - int(self._offsets[part]))


class CachedSplit:
    """Wraps a split and holds all of its audio in one int16 buffer (read once, then memcpy only).

    Reading through ArrayRecord costs ~3 copies per clip (~600-1,100 30-s clips/s on 2 cores);
    from memory a training batch is a single copy (~3,000/s). Costs RAM = the split's audio
    (Clotho development ~5.5 GB; AudioCaps train ~30 GB), per process.
    """

    def __init__(self, data: SplitData, *, progress: bool = True):
        import tqdm

        self._offsets = np.concatenate([[0], np.cumsum(data.num_samples)]).astype(np.int64)
        self._buffer = np.empty(int(self._offsets[-1]), np.int16)
        for i in tqdm.trange(len(data), desc=f"caching {getattr(data, 'name', 'split')}", disable=not progress):
            self._buffer[self._offsets[i] : self._offsets[i + 1]] = data.audio(i)
        self.file_names, self.captions, self.keywords = data.file_names, data.captions, data.keywords
        self.num_samples, self.keyword_kind = data.num_samples, data.keyword_kind
        self.name = f"cached {getattr(data, 'name', 'split')}"

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def audio(self, index: int) -> np.ndarray:
        return self._buffer[self._offsets[index] : self._offsets[index + 1]]
