"""JSON Lines output: one record per line, appended and flushed as whole lines.

Reading tolerates what a killed run leaves behind: a partial last line (no newline, or not
valid JSON) is dropped, and ``rewrite`` puts the file back in order atomically.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any


def read_records(path: str | Path) -> tuple[list[dict], bool]:
    """(complete records, whether anything had to be dropped) of an existing JSONL file."""
    p = Path(path)
    if not p.is_file():
        return [], False
    records: list[dict] = []
    dropped = False
    with p.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                dropped = True  # a line cut off by a kill
                break
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                dropped = True
                continue
            if isinstance(obj, dict):
                records.append(obj)
            else:
                dropped = True
    return records, dropped


def rewrite(path: str | Path, records: list[dict]) -> None:
    """Replace the file's contents with ``records`` atomically (temp file + rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


class JsonlWriter:
    """Appends records as single lines to a file (or stdout for ``-``), flushing each one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str]
        if path == "-":
            self._file = sys.stdout
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        # One write call per record: a kill leaves at most one partial line, never a mix.
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not sys.stdout:
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
