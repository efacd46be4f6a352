"""JSON Lines files: read what a killed run leaves, repair the last line, rewrite atomically, append."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vqa_cli.atomic import replace_atomically
from vqa_cli.errors import OutputRefusedError, OutputWriteError
from vqa_cli.output.writer._registry import remember as note

RECORD_KEYS = frozenset({"video", "error", "settings_id"})  # every vqa record has these
SUMMARY_KEYS = frozenset({"videos", "processed", "ok", "errors"})  # every vqa --summary has these
MAX_LINE_BYTES = 1 << 24  # longer "lines" are not vqa records (a binary file, say): no need to read them whole
MIN_FREE_BYTES = 1 << 20  # less than this free on the output's file system counts as a full disk


@dataclass
class Output:
    """The complete records of an existing JSON Lines file and the state of its last line."""

    records: list[dict] = field(default_factory=list)
    newline_missing: bool = False  # the last line is a complete record without its newline
    cut_bytes: int = 0  # bytes of an unparsable, cut-off last line (a write killed half-way)
    good_size: int = 0  # bytes of the complete lines (the file's size after a repair, before a newline)


@dataclass
class Repair:
    """What ``repair`` changed, for the run's summary."""

    dropped_lines: int = 0
    newline_added: bool = False

    def to_dict(self) -> dict:
        reason = "a cut-off last line left by an interrupted run" if self.dropped_lines else None
        return {"dropped_lines": self.dropped_lines, "reason": reason, "newline_added": self.newline_added}


def _where(path: str | Path) -> str:
    return f"'{path}'" if str(path).isprintable() else repr(str(path))


@contextlib.contextmanager
def _writing(path: str | Path, what: str = "write") -> Iterator[None]:
    """Turn an OSError while changing an output into one line (``OutputWriteError``, exit 1)."""
    try:
        yield
    except OSError as exc:
        raise OutputWriteError(f"cannot {what} {_where(path)}: {exc.strerror or exc}") from None


def _is_record(obj: Any, keys: frozenset[str]) -> bool:
    return isinstance(obj, dict) and keys <= obj.keys()


def record_kind(record: dict) -> str:
    """What wrote a vqa record: ``eval`` (one per question: ``qid``), ``transcribe`` (``transcript``) or ``caption``
    (one per video)."""
    return "eval" if "qid" in record else "transcribe" if "transcript" in record else "caption"


def read_output(path: str | Path, keys: frozenset[str] = RECORD_KEYS, kind: str | None = None) -> Output:
    """Records of an existing vqa JSON Lines file (an empty ``Output`` when there is no file).

    Raises ``OutputRefusedError`` when a complete line is not a vqa record: the file is someone
    else's (or damaged in a way vqa did not cause), and nothing may be written to it; with ``kind``
    (``record_kind``), also when a record is of another kind: one file holds one kind of record.
    """
    p = Path(path)
    out = Output()
    if not p.exists():
        return out
    with p.open("rb") as f:
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES), b""), start=1):
            complete = raw.endswith(b"\n")
            line = raw.strip()
            if not line:  # a blank line
                out.good_size += len(raw) if complete else 0
                continue
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                obj = ...
            if not complete and obj is ... and line.startswith(b"{") and len(raw) < MAX_LINE_BYTES - 1:
                out.cut_bytes = len(raw)  # a record cut off by a kill: the only thing a repair drops
                break
            if not _is_record(obj, keys):
                what = "not JSON" if obj is ... else "not a vqa record"
                raise OutputRefusedError(f"{_where(path)} is not a vqa JSON Lines file (line {number} is {what}): "
                                         "refusing to write to it; choose another --out")
            if kind is not None and record_kind(obj) != kind:
                raise OutputRefusedError(f"{_where(path)} holds {record_kind(obj)} records (line {number}) and this "
                                         f"command writes {kind} records: refusing to mix them; choose another --out")
            out.records.append(obj)
            out.good_size += len(raw)
            out.newline_missing = not complete
    return out


def read_records(path: str | Path) -> list[dict]:
    """The complete records of a vqa JSON Lines file (see ``read_output``)."""
    return read_output(path).records


def repair(path: str | Path, existing: Output | None = None) -> Repair:
    """Make the last line whole: add a complete record's missing newline, cut an unparsable cut-off line."""
    existing = existing if existing is not None else read_output(path)
    done = Repair()
    with _writing(path, "repair"):
        if existing.cut_bytes:
            with open(path, "r+b") as f:
                f.truncate(existing.good_size)
            done.dropped_lines = 1
        if existing.newline_missing:
            with open(path, "ab") as f:
                f.write(b"\n")
            done.newline_added = True
    return done


def rewrite(path: str | Path, records: Iterable[dict]) -> None:
    """Replace the file's contents with ``records`` atomically, keeping its permissions.

    The temporary file is created exclusively (never through an existing name or a symlink)
    beside the real file, so a symlinked ``path`` keeps its link and gets new contents.
    """
    with _writing(path, "rewrite"):
        lines = (json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
        replace_atomically(Path(os.path.realpath(path)), lines)


def write_json(path: str | Path, obj: dict, *, remember: bool = False) -> None:
    """Write one JSON document atomically (creating parent folders), e.g. a ``--summary``; ``remember``: note it in
    the list of files vqa wrote (``_registry``), so that it may be replaced later (a chat ``/save``)."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n", remember=remember)


def write_text(path: str | Path, text: str | bytes, *, remember: bool = False) -> None:
    """Write a whole file (text as UTF-8, or bytes) atomically, creating parent folders; a failure (a full disk) is
    ``OutputWriteError`` (exit 1) with the temporary file removed and the old file, if any, intact. ``remember``:
    see ``write_json``."""
    real = Path(os.path.realpath(path))
    with _writing(path):
        real.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(real, [text], binary=isinstance(text, bytes))
    if remember:
        note(text if isinstance(text, bytes) else text.encode("utf-8"), str(real))


class JsonlWriter:
    """Appends records as single lines to a file (or stdout for ``-``), each in one write, flushed.

    A write the disk refuses (full, quota, file size limit) is undone back to the last whole record
    and raised as ``OutputWriteError``: the records written so far stay intact.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self._fd: int | None = None
        self._stdout: IO[str] | None = None
        if path == "-":
            self._stdout = sys.stdout
        else:
            real = Path(os.path.realpath(path))
            with _writing(path, "open"):
                real.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(real, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self._stdout is not None:
            self._stdout.write(line)
            self._stdout.flush()
            self.written += 1
            return
        assert self._fd is not None
        data = line.encode("utf-8")
        good = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, good)  # no partial line left behind
            raise OutputWriteError(f"cannot write to {_where(self.path)}: {exc.strerror or exc}; the {self.written} "
                                   "records written by this run before it are intact") from None
        self.written += 1

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
