"""A video's own subtitles as context (``--subtitles auto|asr|FILE|off``), as Video-MME's with-subtitles setting
gives them: only the cues shown at the sampled frames (or within the segment), in time order, within a
token budget.

SRT and WebVTT are parsed here without a dependency: both are cue blocks of ``start --> end`` and text
lines, which a dozen lines read (formatting tags are dropped, VTT's header, NOTE/STYLE/REGION blocks and
cue settings skipped). ``find_sidecar`` is ``auto``: ``clip.srt`` or ``clip.vtt`` beside ``clip.mp4``. ``asr`` (and
``auto`` without a sidecar under ``--asr auto``) is the video's speech: ``model.speech.transcript``'s segments as cues
(``heard``), cached there, so every question, turn, segment and request about a file reads one transcript.

``auto`` never reads vqa's own output back as subtitles (``vqa caption clip.mp4 --format srt > clip.srt``
puts ``clip.srt`` where ``auto`` looks). A candidate is passed over when it is

- empty, or holds no cue (the shell has opened, and emptied, ``clip.srt`` before vqa starts);
- the file this process writes to: its standard output (``os.fstat(1)``: same device and inode) or ``--out``
  (``set_outputs``);
- a file vqa wrote: every SRT or WebVTT file vqa writes (``--format srt|vtt`` to a regular-file stdout, or
  into ``--out-dir``) is remembered by its size and SHA-256 in ``written-files.jsonl`` (``writer._registry``, the
  list of files vqa wrote, which the output policy reads too) in vqa's cache folder (``$VQA_CACHE``, else
  ``$XDG_CACHE_HOME/vqa`` or ``~/.cache/vqa``). The content decides, not the path: a copy or a move is
  still recognised, and a file edited since (a user's corrected captions) is the user's own again. SRT has no comment
  syntax that every player skips, so no marker is put in the files.
"""

from __future__ import annotations

import codecs
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vqa_cli.errors import NoAudioError, UsageError
from vqa_cli.fingerprint import json_sha256
from vqa_cli.settings import SUBTITLES_ASR, SUBTITLES_AUTO, SUBTITLES_OFF

if TYPE_CHECKING:
    from vqa_cli.settings import RunSettings

SUBTITLE_EXTENSIONS = (".srt", ".vtt")
DEFAULT_SUBTITLE_TOKENS = 512  # the most prompt tokens the subtitle text may take
SUBTITLE_HEADER = "This video's subtitles:"

_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d+)")
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
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(frac) / 10 ** len(frac)


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


# ---- reading a subtitle file: its encoding --------------------------------------------------------------
FALLBACK_ENCODING = "cp1252"  # what a subtitle file that is not UTF-8 (and has no BOM) is read as, with a warning
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),  # before UTF-16: FF FE 00 00
         (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_warned: set[tuple[str, str]] = set()  # (file, warning): each said once a process (eval reads a file per question)


def _warn_once(path: str | Path, message: str) -> None:
    from vqa_cli import console

    if (str(path), message) not in _warned:
        _warned.add((str(path), message))
        console.info(f"warning: subtitles {str(path)!r} {message}")


def _bom(data: bytes) -> tuple[str, int] | None:
    """The encoding a byte-order mark at the start of ``data`` declares, and the mark's length."""
    for mark, encoding in _BOMS:
        if data.startswith(mark):
            return encoding, len(mark)
    return None


def decode(data: bytes, path: str | Path = "", encoding: str | None = None, *, warn: bool = True) -> str | None:
    """A subtitle file's text, or None when it is not text (then: no subtitles).

    A byte-order mark decides (UTF-8, UTF-16 or UTF-32, either byte order); else ``encoding``
    (``--subtitle-encoding``) when given; else UTF-8, and a file that is not UTF-8 is read as cp1252 (Windows'
    Western European, a superset of Latin-1's printable characters) with a warning naming the file. Bytes the
    declared encoding cannot read become U+FFFD, with a warning. Text holding a NUL character is not text (a
    binary file named .srt, or UTF-16 without a BOM: give ``--subtitle-encoding utf-16-le``). ``warn``: say
    each warning (once a file); False for a quiet look (``own_output``)."""
    say = (lambda message: _warn_once(path, message)) if warn else (lambda message: None)
    bom = _bom(data)
    declared = bom[0] if bom else encoding
    body = data[bom[1]:] if bom else data
    if declared:
        try:
            text = body.decode(declared)
        except UnicodeDecodeError as exc:
            say(f"are not valid {declared} (byte {exc.start + (bom[1] if bom else 0)}: {exc.reason}): "
                "unreadable bytes became U+FFFD")
            text = body.decode(declared, errors="replace")
    elif b"\0" in body:
        text = "\0"  # not text: said below, without a fallback's warning first
    else:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = body.decode(FALLBACK_ENCODING, errors="replace")
            say(f"are not UTF-8: read as {FALLBACK_ENCODING} (--subtitle-encoding names the file's encoding)")
    if "\0" in text:
        say("are not text (NUL bytes): no subtitles from it" + ("" if declared else
            "; if it is UTF-16 without a byte-order mark, give --subtitle-encoding utf-16-le (or -be)"))
        return None
    return text


def read(path: str | Path, encoding: str | None = None) -> list[Cue]:
    """The cues of a subtitle file (its text: ``decode``; a file that is not text has none, with a warning); an
    unreadable one is a ``UsageError`` naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read subtitles {str(path)!r}: {exc.strerror or exc}") from None
    text = decode(data, path, encoding)
    cues = parse(text) if text is not None else []
    if text is not None and not cues:  # (``auto`` passes such a file over before: this is a FILE given)
        _warn_once(path, "hold no SRT or WebVTT cue (a line 00:00:01,000 --> 00:00:02,000 and text): no subtitles "
                   "from it")
    return cues


def find_sidecar(video: str) -> Path | None:
    """``auto``: the ``.srt`` (else ``.vtt``) file with the video's name beside it, when there is one that is not
    vqa's own output (see the module docstring: empty, this process's stdout or ``--out``, or written by vqa)."""
    base = Path(video)
    for ext in SUBTITLE_EXTENSIONS:
        candidate = base.with_suffix(ext)
        if candidate.is_file() and not own_output(candidate):
            return candidate
    return None


# ---- vqa's own output is never read back as subtitles ------------------------------------------------------
WRITTEN_FILE = "written-files.jsonl"  # writer._registry's list, in vqa's cache folder
_WRITTEN_KEEP = 5000  # entries kept when the list is trimmed
_outputs: set[str] = set()  # resolved paths this run writes (--out)


def set_outputs(paths: list[str]) -> None:
    """The files this run writes besides stdout (``--out``): ``auto`` never takes one of them as subtitles."""
    _outputs.clear()
    _outputs.update(os.path.realpath(p) for p in paths if p and p != "-")


def _stdout_stats() -> list[os.stat_result]:
    found = []
    fds = {1}
    try:
        fds.add(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a replaced sys.stdout (tests, notebooks) has no descriptor
        pass
    for fd in fds:
        try:
            found.append(os.fstat(fd))
        except OSError:
            pass
    return found


def own_output(path: Path) -> bool:
    """Whether ``path`` is not subtitles to read: empty or without a cue, this process's stdout or ``--out``, or a
    file vqa wrote (``remember_written``)."""
    try:
        st = path.stat()
    except OSError:
        return False
    if any(os.path.samestat(st, out) for out in _stdout_stats()) or os.path.realpath(path) in _outputs:
        return True
    try:
        data = path.read_bytes()
    except OSError:
        return False  # unreadable: reading it says so (read)
    text = decode(data, path, warn=False)  # not text: not passed over, so reading it says so (read)
    if text is not None and not parse(text):
        return True
    return _is_written(data)


def remember_written(data: bytes, path: str | None = None) -> None:
    """Remember a subtitle file vqa wrote (its bytes ``data``), so that ``auto`` never reads it back as subtitles
    (``writer.remember_written``: the one list of files vqa wrote, which the output policy reads too)."""
    from vqa_cli.output.writer import remember_written as remember

    remember(data, path, keep=_WRITTEN_KEEP)


def _is_written(data: bytes) -> bool:
    from vqa_cli.output.writer import wrote

    return wrote(data)


def cues_for(video: str, choice: str, encoding: str | None = None, *, run: RunSettings | None = None) -> list[Cue]:
    """The cues ``--subtitles`` gives ``video``: none for ``off``, the sidecar for ``auto``, the transcript of its
    speech for ``asr`` (and for ``auto`` without a sidecar under ``--asr auto``), else the file; ``encoding``:
    ``--subtitle-encoding`` (see ``decode``). ``run``: the run's settings, for a transcript (``heard``)."""
    if choice == SUBTITLES_OFF:
        return []
    if choice == SUBTITLES_ASR:
        return heard(video, run)
    path = find_sidecar(video) if choice == SUBTITLES_AUTO else Path(choice)
    if path is None and choice == SUBTITLES_AUTO and run is not None and run.asr == "auto":
        try:
            return heard(video, run)
        except NoAudioError:  # --asr auto: a video without sound says nothing (--subtitles asr: an error)
            if run.speech.audio_stream is not None:  # the stream named is not there: said
                raise
            return []
    return read(path, encoding) if path is not None else []


def heard(video: str, run: RunSettings | None = None) -> list[Cue]:
    """The transcript of ``video``'s speech as cues (``model.speech.transcript``: cached on disk by the file, the
    model and the speech settings), within the run's ``--start``/``--end``, on the run's device."""
    from vqa_cli.model.speech import transcript
    from vqa_cli.settings import SpeechSettings

    speech = run.speech if run is not None else SpeechSettings()
    segments = transcript(video, speech, device=run.device if run else None, start=run.start if run else None,
                          end=run.end if run else None)
    cues = [Cue(float(s.start), float(s.end), " ".join(s.text.split())) for s in segments]
    return sorted((c for c in cues if c.text and c.end > c.start), key=lambda c: (c.start, c.end))


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
    text: the model's tokenizer). The first cue that does not fit whole is cut to the tokens left (its longest
    start that fits, ending in ``…``), and the cues after it are left out: the text stays a prefix, in time
    order, of what an unlimited budget gives, so one over-long cue never drops the others before it.
    ``("", 0)`` when not even the header and a word fit, or there are no cues."""
    lines: list[str] = []
    text, tokens = "", 0
    for cue in cues:
        candidate = "\n".join([header, *lines, cue.text])
        n = count_tokens(candidate)
        if n > budget:
            cut = _cut(cue.text, lambda part: "\n".join([header, *lines, part]), count_tokens, budget)
            if cut:
                candidate = "\n".join([header, *lines, cut])
                text, tokens = candidate, count_tokens(candidate)
            break
        lines.append(cue.text)
        text, tokens = candidate, n
    return text, tokens


ELLIPSIS = "…"  # ends a cue cut to the budget


def _cut(cue: str, whole: Callable[[str], str], count_tokens: Callable[[str], int], budget: int) -> str:
    """The longest start of ``cue`` (then ``…``) whose ``whole`` text is within ``budget`` tokens; "" when none.
    A binary search over the characters: a longer start never has fewer tokens, but for the rare merge."""
    def fits(k: int) -> bool:
        return count_tokens(whole(cue[:k].rstrip() + ELLIPSIS)) <= budget

    low, high = 0, len(cue) - 1  # the longest fitting start is cue[:low]
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return cue[:low].rstrip() + ELLIPSIS if cue[:low].strip() else ""


def context(video: str, choice: str, times: list[float], count_tokens: Callable[[str], int],
            window: tuple[float, float] | None = None, budget: int = DEFAULT_SUBTITLE_TOKENS,
            header: str = SUBTITLE_HEADER, encoding: str | None = None, *, run: RunSettings | None = None
            ) -> tuple[str, int]:
    """The subtitle text (and its tokens) ``--subtitles choice`` gives a clip of ``video`` sampled at ``times``
    (or a segment ``window``): Video-MME's with-subtitles setting in one call, for ``eval`` and the commands;
    ``encoding``: ``--subtitle-encoding``; ``run``: the run's settings (``cues_for``)."""
    return render(overlapping(cues_for(video, choice, encoding, run=run), times, window), count_tokens, budget,
                  header)


WIRE_FIELD = "subtitles"  # a chat request's cues for ``vqa serve``: [[start, end, text], ...] (``--server``)
WIRE_CHOICES = (SUBTITLES_ASR, SUBTITLES_OFF)  # or, instead of cues: the server transcribes, or gives none
MAX_WIRE_CUES = 20_000


def to_wire(cues: list[Cue]) -> list[list]:
    """Cues as a request's ``subtitles`` field."""
    return [[c.start, c.end, c.text] for c in cues]


def from_wire(value: object) -> list[Cue]:
    """A request's ``subtitles`` field as cues (sorted); a malformed one is a ``UsageError``."""
    if value is None:
        return []
    shape = "subtitles must be a list of [start, end, text] cues (seconds, seconds, a string)"
    if not isinstance(value, list) or len(value) > MAX_WIRE_CUES:
        raise UsageError(f"{shape}, at most {MAX_WIRE_CUES}")
    cues = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], str)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in item[:2])):
            raise UsageError(f"{shape}, not {item!r}"[:200])
        if item[1] > item[0] and item[2].strip():
            cues.append(Cue(float(item[0]), float(item[1]), " ".join(item[2].split())))
    return sorted(cues, key=lambda c: (c.start, c.end))


def digest(cues: list[Cue]) -> str:
    """What identifies ``cues`` (for feature-cache keys under ``--guide``, whose question holds them); "" for none."""
    if not cues:
        return ""
    return json_sha256(to_wire(cues), sort_keys=False)


def into_turns(turns: list[dict], cues: list[Cue], times: list[float], count_tokens: Callable[[str], int],
               budget: int = DEFAULT_SUBTITLE_TOKENS) -> int:
    """The subtitle text of the ``cues`` on screen at ``times`` put before the first user turn's text (as
    ``with_subtitles``: where ``vqa caption`` puts it), within ``budget``; the tokens it took."""
    text, tokens = render(overlapping(cues, times), count_tokens, budget)
    if text:
        first = next(t for t in turns if t["role"] == "user")
        first["text"] = with_subtitles(first["text"], text)
    return tokens


def with_subtitles(question: str, text: str) -> str:
    """The question with the subtitle text before it: it goes where the time instruction goes, in the first user
    turn, so ``Checkpoint.prompt_ids`` counts exactly what is fed."""
    return f"{text}\n{question}" if text else question
