"""The batch-job harness: what ``caption`` and ``eval`` share around their model work.

- ``RunAhead``: the one decode-ahead loop. Worker threads (niced: ``lower_priority``) prepare a bounded window
  of items ahead (decode a clip, send a request) while the caller takes them in input order; an item whose
  preparation raised is handed over with its exception. ``model_threads`` leaves a core to the workers while a
  model on the CPU works.
- ``StopFlag``: the first Ctrl-C finishes the current batch, the second stops at once.
- ``back_off``: one batch through the model; out of memory halves it, another failure finds the culprit.
- ``Summary`` and ``keep``: each finished record written, counted and its error said.
- ``Processes``: the share of the work this process takes under ``accelerate launch``, the part file it
  writes, the locks on the outputs, and the merge of the parts into ``--out`` (``writer.merge_parts``).
- ``earlier``: what a re-run resumes from (the output as read, and the main output's records beside a part).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from vqa_cli import console
from vqa_cli.errors import UsageError, describe
from vqa_cli.jobs.inputs import in_shard
from vqa_cli.output import writer
from vqa_cli.video import cpu_cores

if TYPE_CHECKING:
    import torch
    from accelerate import PartialState
    from rich.console import Console

    from vqa_cli.settings import RunSettings

T = TypeVar("T")
R = TypeVar("R")


class Sink(Protocol):
    """Where records go: a ``writer.JsonlWriter``, the ``--format`` files around it, or a list."""

    def write(self, record: dict) -> None: ...


class Progress(Protocol):
    """``console.progress``'s bar (rich's ``Progress``): what the jobs call on it."""

    console: Console

    def advance(self, task: int, advance: float = 1) -> None: ...


# ---- the run-ahead loop -------------------------------------------------------------------------------
class RunAhead(Generic[T, R]):
    """``prepare(item)`` for up to ``window`` items ahead on ``workers`` threads, taken in input order (``take``).

    Use it as a context manager: leaving it cancels what was not taken (and waits for what is running). It is
    true while items remain to be taken."""

    def __init__(self, items: Iterable[T], prepare: Callable[[T], R], *, workers: int, window: int,
                 niced: bool = True) -> None:
        self._queue = iter(items)
        self._prepare, self._window = prepare, max(1, window)
        self._pool = ThreadPoolExecutor(max_workers=workers, initializer=lower_priority if niced else None)
        self._pending: list[tuple[T, Future[R]]] = []

    def __enter__(self) -> RunAhead[T, R]:
        self._refill()
        return self

    def __exit__(self, *exc: object) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)

    def __bool__(self) -> bool:
        return bool(self._pending)  # refilled before every wait: empty only once the items are exhausted

    def _refill(self) -> None:
        while len(self._pending) < self._window:
            try:
                item = next(self._queue)
            except StopIteration:
                return
            self._pending.append((item, self._pool.submit(self._prepare, item)))

    def take(self) -> tuple[T, R | Exception]:
        """The next item and what preparing it gave (or the exception it raised); the window moves on first."""
        item, future = self._pending.pop(0)
        self._refill()
        try:
            return item, future.result()
        except Exception as exc:  # the caller records it; the run goes on
            return item, exc


# Niceness added to the decode workers: the model is the pipeline's bottleneck, and decoding ahead
# only has to keep up, so the scheduler should never make the model wait for a decoder.
WORKER_NICENESS = 10


def lower_priority() -> None:
    """Runs in each decode worker thread: nice it (Linux nice values are per thread, and the decoder
    threads FFmpeg starts from it inherit the value). Elsewhere, and where refused, nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICENESS))
    except OSError:
        pass


class OnDevice(Protocol):
    """A model (``engine.Engine`` or one of its views): where its inputs go."""

    @property
    def input_device(self) -> torch.device: ...


@contextmanager
def model_threads(engine: OnDevice) -> Iterator[None]:
    """A model running on the CPU leaves one core to the decode workers while it works.

    With every core in torch's thread pool, a decoder that takes a core stalls the whole pool at
    its next barrier, and idle pool threads spin: on 2 cores, captioning took about 20 % longer.
    A model on a GPU keeps torch's setting.
    """
    import torch

    cores = cpu_cores()
    previous = torch.get_num_threads()
    if engine.input_device.type == "cpu" and cores > 1:
        torch.set_num_threads(max(1, min(previous, cores - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class StopFlag(AbstractContextManager):
    """First Ctrl-C: finish the current batch, then stop. Second Ctrl-C: stop now."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: Callable[[int, FrameType | None], object] | int | None = None

    def __enter__(self) -> StopFlag:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self.stop:
                raise KeyboardInterrupt
            self.stop = True
            console.info("stopping after the current batch (Ctrl-C again to stop now)")

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ---- out-of-memory back-off ---------------------------------------------------------------------------
def is_oom(exc: BaseException) -> bool:
    known = describe(exc)
    return known is not None and known[1] == "out_of_memory"


def back_off(items: list[T], attempt: Callable[[list[T]], list[R]], failed: Callable[[T, BaseException], R],
             smaller: Callable[[int], None]) -> list[R]:
    """``attempt(items)`` as one batch. Out of memory: ``smaller(half)`` (later batches shrink) and the halves tried;
    any other failure: one at a time, to find the culprit; an item that fails alone gives ``failed(item, exc)``."""
    try:
        return attempt(items)
    except Exception as exc:
        if is_oom(exc) and len(items) > 1:
            half = len(items) // 2
            smaller(half)
            _free_cuda_cache()
            return (back_off(items[:half], attempt, failed, smaller)
                    + back_off(items[half:], attempt, failed, smaller))
        if len(items) > 1:  # find the culprit: one by one
            return [out for item in items for out in back_off([item], attempt, failed, smaller)]
        return [failed(items[0], exc)]


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- the summary and the records ----------------------------------------------------------------------
@dataclass
class Summary:
    videos: int = 0
    skipped: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    frames_decoded: int = 0
    tokens_generated: int = 0
    stage_seconds: Counter = field(default_factory=Counter)
    oom_backoffs: int = 0
    interrupted: bool = False
    wall_seconds: float = 0.0
    load_seconds: float = 0.0
    repair: writer.Repair = field(default_factory=writer.Repair)
    superseded: int = 0  # old error records replaced by this run's records

    def add(self, record: dict) -> None:
        if record["error"] is None:
            self.ok += 1
        else:
            self.errors[record.get("error_kind", "error")] += 1
        self.frames_decoded += record.get("frames") or 0
        self.tokens_generated += record.get("generated_tokens") or 0
        for stage, seconds in (record.get("timings") or {}).items():
            if stage in ("decode", "preprocess", "encode"):
                self.stage_seconds[stage] += seconds

    def processed(self) -> int:
        return self.ok + sum(self.errors.values())

    def to_dict(self) -> dict:
        done = self.processed()
        return {
            "videos": self.videos,
            "already_done": self.skipped,
            "processed": done,
            "ok": self.ok,
            "errors": dict(self.errors),
            "frames_decoded": self.frames_decoded,
            "tokens_generated": self.tokens_generated,
            "videos_per_second": round(done / self.wall_seconds, 4) if self.wall_seconds else 0.0,
            "seconds": {"load": round(self.load_seconds, 3), "wall": round(self.wall_seconds, 3),
                        **{k: round(v, 3) for k, v in self.stage_seconds.items()}},
            "oom_backoffs": self.oom_backoffs,
            "interrupted": self.interrupted,
            "output_repair": self.repair.to_dict(),
            "superseded_error_records": self.superseded,
        }

    def line(self) -> str:
        d = self.to_dict()
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        return (f"{d['ok']} captioned, {d['processed'] - d['ok']} failed ({errors}), {d['already_done']} already done; "
                f"{d['videos_per_second']:.2f} videos/s, {d['tokens_generated']} tokens"
                + (" (interrupted)" if self.interrupted else "") + self.repair_note())

    def repair_note(self) -> str:
        """What resuming changed in the output file, as a clause of the summary line ("" when nothing)."""
        notes = []
        if self.repair.dropped_lines:
            notes.append(f"dropped {self.repair.dropped_lines} cut-off last line left by an interrupted run")
        if self.repair.newline_added:
            notes.append("added the missing newline after the last record")
        return "; " + "; ".join(notes) if notes else ""


def keep(record: dict, sink: Sink, summary: Summary, progress: Progress | None = None, task: int | None = None) -> None:
    """One finished record: written, counted, its error said (above the progress bar on a TTY), the bar advanced."""
    sink.write(record)
    summary.add(record)
    if record["error"] is not None:
        if progress:
            progress.console.print(f"[yellow]{record['video']}[/yellow]: {record['error']}")
        else:
            console.info(f"{record['video']}: {record['error']}")
    if progress and task is not None:
        progress.advance(task, 1)


def earlier(target: str, out: str) -> tuple[writer.Output, list[dict]]:
    """What a re-run resumes from: ``target`` as read (its last line may need ``writer.repair``) and the records
    already done, those of ``out`` too when this process writes a part file beside it (read only: under
    accelerate only the main process rewrites ``out``, at the merge)."""
    existing = writer.read_output(target) if target != "-" else writer.Output()
    return existing, existing.records + (writer.read_records(out) if target != out else [])


# ---- several processes --------------------------------------------------------------------------------
@dataclass
class Processes:
    """This process's place in the run: alone, or one of ``accelerate launch``'s processes (``state``), which
    takes its share of the work and writes its own part file (``target``) beside ``out``."""

    out: str
    target: str
    state: PartialState | None = None

    @property
    def main(self) -> bool:
        return self.state is None or self.state.is_main_process

    def share(self, items: list[T], key: Callable[[T], str]) -> list[T]:
        """This process's share of ``items`` (all of them when alone), by ``key``'s stable hash."""
        if self.state is None:
            return items
        return [it for it in items if in_shard(key(it), self.state.process_index, self.state.num_processes,
                                               salt="process:")]

    def on_device(self, settings: list[RunSettings]) -> list[RunSettings]:
        """The settings on this process's GPU when they leave the device to CUDA's choice."""
        if (self.state is not None and self.state.device.type == "cuda"
                and all(s.device in (None, "auto", "cuda") for s in settings)):
            return [replace(s, device=str(self.state.device)) for s in settings]
        return settings

    def summary_path(self, path: str | None) -> str | None:
        """One summary per process, next to its part file."""
        if path and self.state is not None:
            return writer.part_path(path, self.state.process_index, self.state.num_processes)
        return path

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The outputs this process writes held for the run: its part (or ``out``), and ``out`` by the main one."""
        with writer.locked(self.target), writer.locked(self.out if self.main and self.target != self.out else "-"):
            yield

    def merge(self, key: Callable[[dict], tuple] | None = None) -> None:
        """Once every process is done, the main one folds the parts into ``out`` (one record per ``key``: see
        ``writer.merge_parts``)."""
        if self.state is None:
            return
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            writer.merge_parts(self.out, writer.part_paths(self.out, self.state.num_processes), key)


def processes(out: str) -> Processes:
    """Alone, or one of several processes (``accelerate launch``: ``WORLD_SIZE`` above 1, with accelerate's
    process state, on the GPU it gives this process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(out, out)
    if out == "-":
        raise UsageError("with several processes, --out must be a file (each process writes a part)")
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(out, writer.part_path(out, state.process_index, state.num_processes), state)
