"""A video's own subtitles as context (``--subtitles auto|FILE|off``), as Video-MME's with-subtitles setting
gives them: only the cues shown at the sampled frames (or within the segment), in time order, within a
token budget.

SRT and WebVTT are parsed here without a dependency: both are cue blocks of ``start --> end`` and text
lines, which a dozen lines read (formatting tags are dropped, VTT's header, NOTE/STYLE/REGION blocks and
cue settings skipped). ``find_sidecar`` is ``auto``: ``clip.srt`` or ``clip.vtt`` beside ``clip.mp4``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vqa_cli.errors import UsageError

SUBTITLE_EXTENSIONS = (".srt", ".vtt")
DEFAULT_SUBTITLE_TOKENS = 512  # the most prompt tokens the subtitle text may take
SUBTITLE_HEADER = "This video's subtitles:"

_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")
_ARROW = re.compile(rf"^\s*({_TIME.pattern})\s*-->\s*({_TIME.pattern})")
_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def _seconds(text: str) -> float:
    m = _TIME.fullmatch(text.strip())
    if m is None:
        raise ValueError(text)
    hours, minutes, seconds, frac = m.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(frac.ljust(3, "0")) / 1000


def parse(text: str) -> list[Cue]:
    """The cues of an SRT or WebVTT text, sorted by start time (blocks without a timing line are skipped)."""
    cues = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")):
        lines = block.strip("\n").split("\n")
        for i, line in enumerate(lines):
            m = _ARROW.match(line)
            if m is None:
                continue
            start, end = _seconds(m.group(1)), _seconds(m.group(6))
            body = " ".join(_TAG.sub("", t).strip() for t in lines[i + 1:] if t.strip())
            if body and end > start:
                cues.append(Cue(start, end, " ".join(body.split())))
            break
    return sorted(cues, key=lambda c: (c.start, c.end))


def read(path: str | Path) -> list[Cue]:
    """The cues of a subtitle file; an unreadable one is a ``UsageError`` naming it."""
    try:
        return parse(Path(path).read_text(encoding="utf-8-sig", errors="replace"))
    except OSError as exc:
        raise UsageError(f"cannot read subtitles {str(path)!r}: {exc.strerror or exc}") from None


def find_sidecar(video: str) -> Path | None:
    """``auto``: the ``.srt`` (else ``.vtt``) file with the video's name beside it, when there is one."""
    base = Path(video)
    for ext in SUBTITLE_EXTENSIONS:
        candidate = base.with_suffix(ext)
        if candidate.is_file():
            return candidate
    return None


def check_choice(value: str | None) -> str:
    """``--subtitles``: ``auto``, ``off`` or an existing file."""
    choice = value or "auto"
    if choice not in ("auto", "off") and not Path(choice).is_file():
        raise UsageError(f"--subtitles takes auto, off or a subtitle file; no such file: {choice!r}")
    return choice


def cues_for(video: str, choice: str) -> list[Cue]:
    """The cues ``--subtitles`` gives ``video``: none for ``off``, the sidecar for ``auto``, else the file."""
    if choice == "off":
        return []
    path = find_sidecar(video) if choice == "auto" else Path(choice)
    return read(path) if path is not None else []


def overlapping(cues: list[Cue], times: list[float], window: tuple[float, float] | None = None) -> list[Cue]:
    """The cues on screen at one of ``times`` (``start <= t < end``) or, with ``window`` ``(start, end)``,
    overlapping it; in time order, each once."""
    chosen = []
    for cue in cues:
        at_frame = any(cue.start <= t < cue.end for t in times)
        in_window = window is not None and cue.start < window[1] and cue.end > window[0]
        if at_frame or in_window:
            chosen.append(cue)
    return chosen


def render(cues: list[Cue], count_tokens: Callable[[str], int], budget: int = DEFAULT_SUBTITLE_TOKENS,
           header: str = SUBTITLE_HEADER) -> tuple[str, int]:
    """The subtitle text of ``cues`` (a header line, then one line per cue in time order) and its tokens.

    Cues are taken in time order while the text stays within ``budget`` tokens (``count_tokens`` of the whole
    text); ``("", 0)`` when no cue fits or there are none."""
    lines: list[str] = []
    text, tokens = "", 0
    for cue in cues:
        candidate = "\n".join([header, *lines, cue.text])
        n = count_tokens(candidate)
        if n > budget:
            break
        lines.append(cue.text)
        text, tokens = candidate, n
    return text, tokens


def context(video: str, choice: str, times: list[float], count_tokens: Callable[[str], int],
            window: tuple[float, float] | None = None, budget: int = DEFAULT_SUBTITLE_TOKENS,
            header: str = SUBTITLE_HEADER) -> tuple[str, int]:
    """The subtitle text (and its tokens) ``--subtitles choice`` gives a clip of ``video`` sampled at ``times``
    (or a segment ``window``): Video-MME's with-subtitles setting in one call, for ``eval`` and the commands."""
    return render(overlapping(cues_for(video, choice), times, window), count_tokens, budget, header)


def with_subtitles(question: str, text: str) -> str:
    """The question with the subtitle text before it: it goes where the time instruction goes, in the first user
    turn, so ``Checkpoint.prompt_ids`` counts exactly what is fed."""
    return f"{text}\n{question}" if text else question
