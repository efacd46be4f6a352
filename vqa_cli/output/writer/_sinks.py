"""Where ``--format`` files go: printed to stdout (``PrintSink``), or one file per video in ``--out-dir`` beside a
JSON Lines index (``SidecarSink``); both remember the subtitle files they write as vqa's (``_registry``)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Protocol, TextIO

from vqa_cli.output.writer._files import write_text
from vqa_cli.output.writer._formats import SUBTITLE_FORMATS, CsvWriter, format_writer, sidecar_path
from vqa_cli.output.writer._guard import vqa_wrote
from vqa_cli.output.writer._registry import remember as remember_written


class RecordSink(Protocol):
    """What takes records one at a time (a ``JsonlWriter``, another sink)."""

    def write(self, record: dict) -> None: ...


def _stdout_file() -> os.stat_result | None:
    """The regular file ``sys.stdout`` writes to (``> clip.srt``), if it does."""
    try:
        st = os.fstat(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a replaced sys.stdout without a descriptor
        return None
    return st if stat.S_ISREG(st.st_mode) else None


class PrintSink:
    """``--out -`` with a ``--format``: each record's file printed as it is written (error records are left to
    the summary and the notices). An SRT or WebVTT file printed to a regular file (``> clip.srt``) that holds
    exactly what was printed is remembered as vqa's (``_registry.remember``)."""

    def __init__(self, name: str, stream: TextIO | None = None) -> None:
        self.format, self.stream, self.first = format_writer(name), stream, True
        self.printed = bytearray()  # what went to a regular-file stdout, to remember it
        start = _stdout_file() if stream is None and name in SUBTITLE_FORMATS else None
        self.remember = start is not None and start.st_size == 0  # appended to a user's file (>>): not ours alone

    def write(self, record: dict) -> None:
        if record.get("error") is not None:
            return
        stream = self.stream or sys.stdout
        text = (self.format.text(record, header=self.first) if isinstance(self.format, CsvWriter)
                else self.format.text(record))
        self.first = False
        stream.write(text)
        stream.flush()
        if self.remember:
            self._remember(text, stream)

    def _remember(self, text: str, stream: TextIO) -> None:
        self.printed += text.encode(getattr(stream, "encoding", None) or "utf-8")
        st = _stdout_file()
        if st is not None and st.st_size == len(self.printed):  # the file is what vqa printed, and only that
            where = f"/proc/self/fd/{sys.stdout.fileno()}"  # its name, where the system tells it
            remember_written(bytes(self.printed), os.path.realpath(where) if os.path.exists(where) else None)


class SidecarSink:
    """``--out-dir``: each caption's file written atomically (temporary file, then rename) beside the others,
    then its record, with ``output`` naming that file, appended to the JSON Lines index (``inner``).

    Each file is remembered as vqa's (``_registry``), so a later run replaces it and ``--subtitles auto`` never
    reads it back; a file there that vqa did not write (``check_sidecars`` refused it before the run; this
    checks again at the write) is replaced only with ``force``. A failed write (a full disk) is one line, exit 1,
    the temporary file removed and nothing appended to the index: the next run writes that video again."""

    def __init__(self, name: str, out_dir: str | Path, inner: RecordSink, force: bool = False) -> None:
        self.name, self.out_dir, self.inner, self.force = name, Path(out_dir), inner, force
        self.format = format_writer(name)

    def write(self, record: dict) -> None:
        if record.get("error") is None:
            path = sidecar_path(self.out_dir, record["video"], self.name)
            if not self.force and path.is_file() and path.stat().st_size:
                vqa_wrote("give --force to replace it, or choose another --out-dir")(str(path), "--out-dir")
            write_text(path, self.format.text(record), remember=True)
            record = {**record, "output": str(path)}
        self.inner.write(record)
