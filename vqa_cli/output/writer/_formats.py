"""Caption records as files people use (``--format``): SRT and WebVTT subtitles, plain text, CSV and an
ffmpeg metadata chapters file. One small class per format, as whisper's writers: ``text(record)`` is the
whole file for one video's record; ``cues(record)`` are its timed captions (a record's ``segments``, or one
cue over the whole video when it has none).
"""

from __future__ import annotations

import csv
import io
import os
import stat
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

OutputFormat = Literal["jsonl", "srt", "vtt", "txt", "csv", "chapters"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)


def cues(record: dict) -> list[tuple[float, float, str]]:
    """``(start, end, caption)`` of each segment of a caption record, in time order."""
    segments = record.get("segments")
    if segments:
        return [(float(s["start"]), float(s["end"]), (s.get("caption") or "").strip()) for s in segments]
    return [(0.0, float(record.get("duration") or 0.0), (record.get("caption") or "").strip())]


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _one_block(text: str) -> str:
    """A caption as a subtitle cue's text: no blank lines (they end a cue) and no ``-->``."""
    lines = [line.strip() for line in text.replace("-->", "->").splitlines() if line.strip()]
    return "\n".join(lines) or "..."


class FormatWriter:
    extension: ClassVar[str]

    def text(self, record: dict) -> str:
        raise NotImplementedError


class SrtWriter(FormatWriter):
    extension = "srt"

    def text(self, record: dict) -> str:
        return "".join(f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{_one_block(t)}\n\n"
                       for i, (a, b, t) in enumerate(cues(record), start=1))


class VttWriter(FormatWriter):
    extension = "vtt"

    def text(self, record: dict) -> str:
        return "WEBVTT\n\n" + "".join(f"{_clock(a, '.')} --> {_clock(b, '.')}\n{_one_block(t)}\n\n"
                                      for a, b, t in cues(record))


class TxtWriter(FormatWriter):
    extension = "txt"

    def text(self, record: dict) -> str:
        return "".join(" ".join(t.split()) + "\n" for _, _, t in cues(record))


class CsvWriter(FormatWriter):
    extension = "csv"
    header = ("video", "start", "end", "caption")

    def text(self, record: dict, header: bool = True) -> str:
        out = io.StringIO()
        rows = csv.writer(out, lineterminator="\n")
        if header:
            rows.writerow(self.header)
        for a, b, t in cues(record):
            rows.writerow((record.get("video"), f"{a:.3f}", f"{b:.3f}", t))
        return out.getvalue()


class ChaptersWriter(FormatWriter):
    """ffmpeg's metadata format (``ffmpeg -i clip.mp4 -i clip.chapters -map_chapters 1 ...``)."""

    extension = "chapters"

    @staticmethod
    def _escape(text: str) -> str:
        for ch in ("\\", "=", ";", "#"):
            text = text.replace(ch, "\\" + ch)
        return " ".join(text.split())

    def text(self, record: dict) -> str:
        blocks = [";FFMETADATA1\n"]
        for a, b, t in cues(record):
            blocks.append(f"\n[CHAPTER]\nTIMEBASE=1/1000\nSTART={round(a * 1000)}\nEND={round(b * 1000)}\n"
                          f"title={self._escape(t)}\n")
        return "".join(blocks)


WRITERS: dict[str, type[FormatWriter]] = {w.extension: w for w in (SrtWriter, VttWriter, TxtWriter, CsvWriter,
                                                                   ChaptersWriter)}


def format_writer(name: str) -> FormatWriter:
    """The writer of ``--format NAME`` (not ``jsonl``, which is the record itself)."""
    return WRITERS[name]()


def sidecar_path(out_dir: str | Path, video: str, name: str) -> Path:
    """``DIR/clip.srt`` for ``clip.mp4`` and ``--format srt``."""
    return Path(out_dir) / f"{Path(video).stem}.{WRITERS[name].extension}"


SUBTITLE_FORMATS = ("srt", "vtt")  # what ``--subtitles auto`` would read back: remembered as vqa's (subtitles)


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

    def __init__(self, name: str, stream: Any = None) -> None:
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

    def _remember(self, text: str, stream: Any) -> None:
        from vqa_cli.output.writer._registry import remember as remember_written

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

    def __init__(self, name: str, out_dir: str | Path, inner: Any, force: bool = False) -> None:
        self.name, self.out_dir, self.inner, self.force = name, Path(out_dir), inner, force
        self.format = format_writer(name)

    def write(self, record: dict) -> None:
        if record.get("error") is None:
            from vqa_cli.output.writer._files import write_text
            from vqa_cli.output.writer._guard import vqa_wrote

            path = sidecar_path(self.out_dir, record["video"], self.name)
            if not self.force and path.is_file() and path.stat().st_size:
                vqa_wrote("give --force to replace it, or choose another --out-dir")(str(path), "--out-dir")
            write_text(path, self.format.text(record), remember=True)
            record = {**record, "output": str(path)}
        self.inner.write(record)
