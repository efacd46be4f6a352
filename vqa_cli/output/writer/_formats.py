"""Caption records as files people use (``--format``): SRT and WebVTT subtitles, plain text, CSV and an
ffmpeg metadata chapters file. One small class per format, as whisper's writers: ``text(record)`` is the
whole file for one video's record; ``cues(record)`` are its timed captions (a record's ``segments``, or one
cue over the whole video when it has none).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import ClassVar, Literal, get_args

OutputFormat = Literal["jsonl", "srt", "vtt", "txt", "csv", "chapters"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)


def cues(record: dict) -> list[tuple[float, float, str]]:
    """``(start, end, caption)`` of each segment of a caption record, in time order."""
    segments = record.get("segments")
    if segments:
        return [(float(s["start"]), float(s["end"]), (s.get("caption") or s.get("text") or "").strip())
                for s in segments]  # a caption's segments, or a transcript's (``text``)
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


class JsonWriter(FormatWriter):
    """The record itself on one line (``vqa transcribe --format json``: a file per video, JSON Lines on stdout)."""

    extension = "json"

    def text(self, record: dict) -> str:
        return json.dumps(record, ensure_ascii=False) + "\n"


WRITERS: dict[str, type[FormatWriter]] = {w.extension: w for w in (SrtWriter, VttWriter, TxtWriter, CsvWriter,
                                                                   ChaptersWriter, JsonWriter)}


def format_writer(name: str) -> FormatWriter:
    """The writer of ``--format NAME`` (not ``jsonl``, which is the record itself)."""
    return WRITERS[name]()


def sidecar_path(out_dir: str | Path, video: str, name: str) -> Path:
    """``DIR/clip.srt`` for ``clip.mp4`` and ``--format srt``."""
    return Path(out_dir) / f"{Path(video).stem}.{WRITERS[name].extension}"


SUBTITLE_FORMATS = ("srt", "vtt")  # what ``--subtitles auto`` would read back: remembered as vqa's (subtitles)
