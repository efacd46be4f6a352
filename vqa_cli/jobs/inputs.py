"""Which videos a run takes: files, folders (recursive), ``-`` for paths on stdin, and shares of them.

``expand_inputs`` turns the command line's paths into videos (and the folders it could not read);
``parse_shard``/``in_shard`` split them stably between cluster jobs and processes.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vqa_cli.errors import InputNotFoundError, UsageError
from vqa_cli.video import VIDEO_EXTENSIONS


@dataclass
class Inputs:
    """The videos named by the inputs, and the folders the walk could not read (``(folder, reason)``)."""

    videos: list[str]
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def stdin_paths(stream: Iterable[str]) -> list[str]:
    """One path per line: only the line ending is removed (names may start or end with spaces);
    blank lines are skipped."""
    out = []
    for line in stream:
        path = line.removesuffix("\n").removesuffix("\r")
        if path.strip():
            out.append(path)
    return out


def walk_videos(folder: Path, unreadable: list[tuple[str, str]]) -> list[str]:
    """Video files under ``folder`` (recursive, sorted); folders that cannot be read go to ``unreadable``."""

    def failed(exc: OSError) -> None:
        unreadable.append((str(exc.filename or folder), exc.strerror or str(exc)))

    found = []
    for root, _, files in os.walk(folder, onerror=failed):
        found.extend(os.path.join(root, f) for f in files
                     if Path(f).suffix.lower() in VIDEO_EXTENSIONS and os.path.isfile(os.path.join(root, f)))
    return sorted(found)


def expand_inputs(paths: Iterable[str], stdin: Iterable[str] | None = None) -> Inputs:
    """Videos named by ``paths``: files as given, folders searched recursively, ``-`` = stdin lines."""
    out: list[str] = []
    unreadable: list[tuple[str, str]] = []
    for p in paths:
        if p == "-":
            out.extend(stdin_paths(stdin or sys.stdin))
            continue
        path = Path(p)
        if path.is_dir():
            out.extend(walk_videos(path, unreadable))
        elif path.exists():
            out.append(p)
        else:
            raise InputNotFoundError(f"no such file or folder: {p!r}")
    seen: set[str] = set()
    return Inputs([p for p in out if not (p in seen or seen.add(p))], unreadable)  # same path twice -> one record


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` (0 <= I < N) -> (I, N)."""
    if not text:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), not {text!r}")
    return index, count


def in_shard(video: str, index: int, count: int, salt: str = "") -> bool:
    """A stable split by the path's hash: the same on every machine and for any input order.

    ``salt`` makes independent splits: accelerate's processes split a ``--shard`` evenly again.
    """
    return int(hashlib.sha1((salt + video).encode()).hexdigest(), 16) % count == index
