"""``vqa caption``: caption many videos into JSON Lines, resumably.

Inputs are files, folders (recursive, known video extensions, sorted) or ``-`` for paths on
stdin. Each video gets exactly one record; a video that fails gets a record with ``error`` and
the run goes on. Re-running with the same ``--out`` skips videos already captioned with the
same settings, retries those that failed (their old error records are dropped), and repairs a
partial last line left by a killed run. The next video decodes while the model works.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vqa_cli import console, writer
from vqa_cli.errors import EXIT_FAILURE, EXIT_OK, InputNotFoundError, UsageError, describe, one_line
from vqa_cli.video import VIDEO_EXTENSIONS, Clip, sample_frames

DECODE_AHEAD = 2  # videos decoded ahead of the model: bounds memory to a few clips of frames


def expand_inputs(paths: Iterable[str], stdin: Any = None) -> list[str]:
    """Videos named by ``paths``: files as given, folders searched recursively, ``-`` = stdin lines."""
    out: list[str] = []
    for p in paths:
        if p == "-":
            for line in (stdin or sys.stdin):
                line = line.strip()
                if line:
                    out.append(line)
            continue
        path = Path(p)
        if path.is_dir():
            found = sorted(
                str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS
            )
            out.extend(found)
        elif path.exists():
            out.append(p)
        else:
            raise InputNotFoundError(f"no such file or folder: {p!r}")
    # Same path twice -> one record.
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def settings_id(identity: dict, prompt: str) -> str:
    """A short stable hash of everything that decides a caption."""
    blob = json.dumps({"settings": identity, "prompt": prompt}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resume(out: str, videos: list[str], sid: str) -> list[str]:
    """Videos still to caption; rewrites ``out`` without old error records and partial lines."""
    if out == "-":
        return videos
    records, damaged = writer.read_records(out)
    done = {r.get("video") for r in records if r.get("settings_id") == sid and r.get("error") is None}
    kept = [r for r in records if not (r.get("settings_id") == sid and r.get("error") is not None
                                       and r.get("video") in set(videos) - done)]
    if damaged or len(kept) != len(records):
        writer.rewrite(out, kept)
    return [v for v in videos if v not in done]


def _decode(path: str, frames: int, start: float | None, end: float | None) -> tuple[Clip, float]:
    started = time.perf_counter()
    clip = sample_frames(path, frames, start=start, end=end)
    return clip, time.perf_counter() - started


def _error_record(video: str, settings: Any, sid: str, message: str, kind: str) -> dict:
    return {
        "video": video,
        "caption": None,
        "model": settings.model,
        "mode": settings.mode.name,
        "frames": 0,
        "frame_indices": [],
        "timestamps": [],
        "duration": None,
        "visual_tokens": None,
        "timings": {},
        "error": message,
        "error_kind": kind,
        "settings_id": sid,
    }


def run_caption(settings: Any, inputs: list[str], out: str, prompt: str, *, stdin: Any = None) -> int:
    from vqa_cli.engine import Checkpoint, Engine

    videos = expand_inputs(inputs, stdin)
    if not prompt.strip():
        raise UsageError("--prompt must not be empty")
    sid = settings_id(settings.identity(), prompt)
    todo = resume(out, videos, sid)
    skipped = len(videos) - len(todo)
    if not todo:
        console.info(f"nothing to do: all {len(videos)} videos already captioned in {out}")
        return EXIT_OK

    with console.status("reading model config"):
        checkpoint = Checkpoint(settings.model)
        budget = checkpoint.budget(settings, [prompt])
    frames = budget.plan.frames
    with console.status(f"loading {settings.model}"):
        started = time.perf_counter()
        engine = Engine(checkpoint, settings, budget.rope_factor)
        load_seconds = time.perf_counter() - started

    errors = 0
    run_started = time.perf_counter()
    progress = _progress(len(todo))
    with writer.JsonlWriter(out) as sink, ThreadPoolExecutor(max_workers=1) as pool, progress:
        task = progress.add_task("captioning", total=len(todo)) if progress else None
        pending: list[tuple[str, Future]] = []
        queue = iter(todo)

        def refill() -> None:
            while len(pending) < DECODE_AHEAD:
                video = next(queue, None)
                if video is None:
                    return
                pending.append((video, pool.submit(_decode, video, frames, settings.start, settings.end)))

        refill()
        while pending:
            video, future = pending.pop(0)
            refill()
            try:
                clip, decode_seconds = future.result()
                answer = engine.answer(clip, prompt, timings={"decode": decode_seconds})
                rec = answer.record(settings, engine)
                record = {
                    "video": video,
                    "caption": rec.pop("answer"),
                    **{k: rec[k] for k in ("model", "mode", "frames", "frame_indices", "timestamps",
                                           "duration", "visual_tokens", "rope_factor", "timings")},
                    "error": None,
                    "settings_id": sid,
                }
            except Exception as exc:  # one bad video must not stop the run
                known = describe(exc)
                message = known[2] if known else f"{type(exc).__name__}: {one_line(str(exc))}"
                kind = known[1] if known else "internal"
                record = _error_record(video, settings, sid, message, kind)
                errors += 1
                if not progress:
                    console.info(f"{video}: {message}")
            sink.write(record)
            if progress:
                progress.advance(task)

    elapsed = time.perf_counter() - run_started
    done = len(todo) - errors
    console.info(
        f"{done} captioned, {errors} failed, {skipped} already done; "
        f"{len(todo) / elapsed:.2f} videos/s (model load {load_seconds:.1f}s)"
        + ("" if out == "-" else f"; written to {out}")
    )
    return EXIT_FAILURE if errors else EXIT_OK


def _progress(total: int) -> Any:
    """A rich progress bar on stderr with count, rate and ETA; None when stderr is not a TTY."""
    if not console.stderr_is_tty():
        return _NoProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- videos/s" if speed is None else f"{speed:.2f} videos/s")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console.stderr,
    )


class _NoProgress:
    def __bool__(self) -> bool:
        return False

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
