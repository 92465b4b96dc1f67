"""Robust CSV reading for the dataset files as found on disk (encodings, BOM, CRLF, delimiters, comments)."""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Table:
    """A parsed CSV file.

    Attributes:
      rows: one dict per data row, keyed by the (stripped) header names; short rows are
        padded with "" and surplus cells are dropped so every row has every column.
      header: the column names in file order.
      encoding: the codec that decoded the bytes ("utf-8", "cp1252" or "latin-1").
      delimiter: the delimiter that was used.
    """

    rows: list[dict[str, str]]
    header: list[str]
    encoding: str
    delimiter: str


def decode_bytes(data: bytes) -> tuple[str, str]:
    """bytes -> (text, encoding): strict UTF-8 first (BOM stripped), then cp1252, then latin-1.

    Clotho's metadata CSVs are ISO-8859-1 and Excel re-saves add a BOM; cp1252 repairs the
    smart quotes latin-1 would turn into control characters, and latin-1 decodes any byte.
    """
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return text, "utf-8" if encoding == "utf-8-sig" else encoding
    raise AssertionError("latin-1 decodes every byte")


def sniff_delimiter(header_line: str, candidates: str = ",;\t") -> str:
    """The candidate that occurs most often outside quotes in the header line (',' on ties).

    csv.Sniffer guesses from the data rows and is fooled by captions full of commas; the
    header alone is reliable (``clotho_metadata_test.csv`` uses ';').
    """
    counts = dict.fromkeys(candidates, 0)
    quoted = False
    for char in header_line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(candidates, key=lambda c: (counts[c], c == ","))
    return best if counts[best] else ","


def read_table(
    path: str | os.PathLike,
    *,
    fieldnames: Sequence[str] | None = None,
    comment: str | None = None,
    skip_initial_space: bool = False,
) -> Table:
    """Reads a CSV file robustly -> ``Table``.

    Args:
      path: the file.
      fieldnames: column names for files without a header row (then every line is data).
      comment: lines starting with this prefix are skipped (AudioSet segment files start
        with three ``# `` lines; skipping every such line is robust to their count).
      skip_initial_space: ignore spaces after a delimiter (AudioSet rows are separated by
        comma+space, and the quoted label list is only recognised as quoted this way).
    """
    text, encoding = decode_bytes(pathlib.Path(path).read_bytes())
    if comment is not None:
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(comment))
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = sniff_delimiter(first_line)
    # newline="" lets csv handle CRLF (AudioCaps v1), lone CR and newlines inside quotes.
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=skip_initial_space
    )
    records = [record for record in reader if any(cell.strip() for cell in record)]
    if fieldnames is None and not records:
        return Table([], [], encoding, delimiter)
    if fieldnames is None:
        header = [name.strip() for name in records[0]]
        records = records[1:]
    else:
        header = list(fieldnames)
    width = len(header)
    rows = [dict(zip(header, (record + [""] * width)[:width])) for record in records]
    return Table(rows, header, encoding, delimiter)


def require_columns(table: Table, columns: Sequence[str], path: str | os.PathLike) -> None:
    """Raises ValueError naming the file when ``table`` lacks one of ``columns``."""
    missing = [c for c in columns if c not in table.header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; header is {table.header}")
