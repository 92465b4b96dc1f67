"""Finds the audio file on disk for a name in a CSV/JSON: exact, then stripped, then known substitutions."""
from __future__ import annotations

import html
import os
import pathlib
import re
from collections.abc import Iterable

from hybrid_jax.data.audio_io import AUDIO_EXTENSIONS


def _colon_to_underscore(name: str) -> str:
    # Clotho v2.1 renamed "a: b.wav" to "a_b.wav" (the colon and the spaces around it).
    return re.sub(r"\s*:\s*", "_", name)


# (rule name, function) tried in order after the exact and the stripped match.
_SUBSTITUTIONS = (
    ("':' -> '_'", _colon_to_underscore),
    ("'&amp;' -> '&'", html.unescape),
    ("'&' -> '&amp;'", lambda name: name.replace("&", "&amp;")),
)


class AudioFiles:
    """Every audio file under some folders (symlinks followed), looked up by name or stem.

    I/O always uses the exact on-disk path; lookups record which files were claimed so the
    files nobody asked for can be reported.
    """

    def __init__(self, roots: Iterable[str | os.PathLike]):
        self.by_name: dict[str, pathlib.Path] = {}
        self.by_stem: dict[str, list[pathlib.Path]] = {}
        self.duplicate_names: list[str] = []
        for root in roots:
            for folder, _, names in os.walk(root, followlinks=True):
                for name in sorted(names):
                    if not name.lower().endswith(AUDIO_EXTENSIONS) or name.startswith("._"):
                        continue
                    path = pathlib.Path(folder) / name
                    if name in self.by_name:
                        self.duplicate_names.append(str(path))
                        continue
                    self.by_name[name] = path
                    self.by_stem.setdefault(os.path.splitext(name)[0], []).append(path)
        self._stripped = {}
        for name, path in self.by_name.items():
            self._stripped.setdefault(name.strip(), path)
        self.claimed: set[pathlib.Path] = set()

    def __len__(self) -> int:
        return len(self.by_name)

    def find(self, name: str) -> tuple[pathlib.Path, str | None] | None:
        """CSV name -> (on-disk path, fix applied or None), or None when no file matches.

        Order: exact; stripped on both sides (Clotho names with a leading space); then the
        known renames (``:`` -> ``_``, ``&amp;`` <-> ``&``), each also stripped.
        """
        if name in self.by_name:
            return self.by_name[name], None
        stripped = name.strip()
        if stripped in self._stripped:
            return self._stripped[stripped], f"matched after stripping spaces: {name!r}"
        for rule, substitute in _SUBSTITUTIONS:
            candidate = substitute(stripped)
            if candidate != stripped and candidate in self._stripped:
                return self._stripped[candidate], f"matched by {rule}: {name!r} -> {candidate!r}"
        return None

    def find_stem(self, stem: str) -> pathlib.Path | None:
        """The first file whose name without extension is ``stem`` (any audio extension)."""
        paths = self.by_stem.get(stem)
        return paths[0] if paths else None

    def claim(self, path: pathlib.Path) -> None:
        self.claimed.add(path)

    def unclaimed(self) -> list[str]:
        """Files no row asked for (reported, never read), sorted."""
        return sorted(str(p) for p in self.by_name.values() if p not in self.claimed)
