"""The caption store: one JSON Lines output (or, under ``accelerate launch``, one part file per process
merged into it), what is already done in it, its repair, and the clean-up after a run."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from vqa_cli.output.writer._files import Output, Repair, read_output, read_records, repair, rewrite


def part_path(out: str, index: int, count: int) -> str:
    """The part file process ``index`` of ``count`` writes beside ``out`` (the one place its name is spelled)."""
    return f"{out}.part{index}of{count}"


def part_paths(out: str, count: int) -> list[str]:
    return [part_path(out, i, count) for i in range(count)]


def same_file(a: str, b: str) -> bool:
    """Whether two output paths name the same file, existing or not (symlinks followed; hard links too)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return False


def captioned(path: str, sid: str) -> set[str]:
    """Videos with a caption under settings ``sid`` in an existing output (read only)."""
    return captioned_in(read_records(path) if path != "-" else [], sid)


def captioned_in(records: Iterable[dict], sid: str) -> set[str]:
    """Videos with a caption under settings ``sid`` among ``records``."""
    return {r.get("video") for r in records if r.get("settings_id") == sid and r.get("error") is None}


def resume(out: str, videos: list[str], sid: str, existing: Output | None = None) -> tuple[list[str], Repair]:
    """Videos still to caption, after making the file's last line whole (see ``repair``); ``existing``:
    the file as already read.

    Error records stay until a later record of the same video and settings supersedes them
    (``compact``): a run killed before retrying a video loses nothing.
    """
    if out == "-":
        return videos, Repair()
    existing = existing if existing is not None else read_output(out)
    repaired = repair(out, existing)
    done = captioned_in(existing.records, sid)
    return [v for v in videos if v not in done], repaired


def superseded(records: list[dict], resolved: Callable[[dict], bool] = lambda rec: False) -> list[int]:
    """Positions of error records a later record of the same (video, settings) replaces, or that
    ``resolved`` says are settled (an unreadable folder that a later run could read)."""
    last: dict[tuple, int] = {}
    for i, rec in enumerate(records):
        last[(rec.get("video"), rec.get("settings_id"))] = i
    return [i for i, rec in enumerate(records) if rec.get("error") is not None
            and (last[(rec.get("video"), rec.get("settings_id"))] != i or resolved(rec))]


def compact(out: str, resolved: Callable[[dict], bool] = lambda rec: False) -> int:
    """Drop superseded error records (see ``superseded``) with one atomic rewrite; how many were dropped."""
    if out == "-" or not Path(out).exists():
        return 0
    records = read_records(out)
    drop = set(superseded(records, resolved))
    if drop:
        rewrite(out, [r for i, r in enumerate(records) if i not in drop])
    return len(drop)


def merge_parts(out: str, parts: list[str], key: Callable[[dict], tuple] | None = None) -> None:
    """Fold part files into ``out``: one record per ``key`` (by default (video, settings): eval's records are
    one per (settings, question)), an answer beating an error."""
    key = key or (lambda rec: (rec.get("video"), rec.get("settings_id")))
    records = read_records(out)
    for part in parts:
        records.extend(read_records(part))
    merged: dict[tuple, dict] = {}
    for rec in records:  # in order: a later record replaces an earlier error, never an earlier answer
        k = key(rec)
        if k not in merged or merged[k].get("error") is not None:
            merged[k] = rec
    rewrite(out, list(merged.values()))
    for part in parts:
        Path(part).unlink(missing_ok=True)
