"""``vqa caption``: caption many videos into JSON Lines, resumably, at scale.

- Inputs (``inputs``) are files, folders (recursive, known video extensions, sorted) or ``-`` for
  paths on stdin. Each video gets exactly one record; a video that fails gets a record with ``error``.
- Pipelined: decode-ahead worker threads (OpenCV releases the GIL) fill a bounded window of
  clips while the model works; the model takes them in batches (left-padded batched generate).
  Batches start from the largest size the memory check found to fit (``--batch-size`` at most); on
  out-of-memory a batch is split in halves and retried, and later batches stay smaller.
- Kill-safe: each record is one appended, flushed line. A re-run skips videos already captioned
  with the same settings, retries failed ones (dropping their old error records) and repairs a
  partial last line. Ctrl-C stops after the current batch and prints the summary.
- Sharding: ``--shard I/N`` takes a deterministic hash share of the videos (cluster array jobs);
  under ``accelerate launch`` each process takes its share, writes its own part file and the
  main process merges the parts into ``--out`` at the end.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqa_cli import console
from vqa_cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, InputNotFoundError, UsageError, describe
from vqa_cli.jobs.inputs import Inputs, expand_inputs, in_shard, parse_shard
from vqa_cli.output import records, writer
from vqa_cli.settings import DEFAULT_BATCH, DEFAULT_CAPTION_FORMAT, DEFAULT_WORKERS
from vqa_cli.video import VIDEO_EXTENSIONS, Clip, cpu_cores


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


def keep(record: dict, sink: writer.JsonlWriter, summary: Summary, progress: Any = None, task: Any = None) -> None:
    """One finished record: written, counted, its error said (above the progress bar on a TTY), the bar advanced."""
    sink.write(record)
    summary.add(record)
    if record["error"] is not None:
        if progress:
            progress.console.print(f"[yellow]{record['video']}[/yellow]: {record['error']}")
        else:
            console.info(f"{record['video']}: {record['error']}")
    if progress:
        progress.advance(task, 1)


DECODE_TIMEOUT = 600.0  # seconds per file: a pathological file is recorded as an error, never hangs the run


@dataclass
class Decoded:
    """A worker's output for one video: its clip and pixels, or its visual tokens from the feature cache."""

    video: str
    clip: Clip
    timings: dict[str, float]
    pixels: Any = None
    features: Any = None  # [N, D] visual tokens found in the feature cache
    key: str = ""  # its feature-cache key ("" without a cache)


def _decode(path: str, settings: Any, frames: int, engine: Any, cores: int, cache: Any = None,
            prompt: str = "", context: str = "") -> Decoded:
    """A worker's share, off the model's thread: the feature cache, else decode (with ``cores`` of the
    machine's cores) and preprocess to pixels (a still image on the image path is left to the engine).
    ``context``: the digest of the subtitles given before ``prompt`` (``features.feature_key``)."""
    from vqa_cli.model.engine import sample_clip
    from vqa_cli.video import DecodeOptions

    key = ""
    if cache is not None:
        from vqa_cli.model.features import file_identity, key_for

        try:
            key = key_for(engine, file_identity(path), settings, frames, prompt, context)
        except OSError:  # decoding says what is wrong with the file
            key = ""
        found = cache.get(key) if key else None
        if found is not None:
            return Decoded(path, found.clip, {}, features=found.features, key=key)
    clip, seconds = sample_clip(path, settings, frames, timeout=DECODE_TIMEOUT, options=DecodeOptions(cores=cores))
    started = time.perf_counter()
    pixels = None if engine.uses_image_path(clip) else engine.pixels(clip)
    return Decoded(path, clip, {"decode": seconds, "preprocess": time.perf_counter() - started}, pixels, key=key)


def _is_oom(exc: BaseException) -> bool:
    known = describe(exc)
    return known is not None and known[1] == "out_of_memory"


class _StopFlag:
    """First Ctrl-C: finish the current batch, then stop. Second Ctrl-C: stop now."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        def handler(signum: int, frame: Any) -> None:
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


class Captioner:
    """One process's captioning run over its share of the videos."""

    def __init__(self, engine: Any, settings: Any, prompt: str, sid: str, *, batch_size: int, workers: int,
                 frames: int, feature_cache: Any = None) -> None:
        self.engine, self.settings, self.prompt, self.sid = engine, settings, prompt, sid
        self.batch_size, self.workers, self.frames = batch_size, workers, frames
        self.feature_cache = feature_cache  # features.FeatureCache: visual tokens kept between runs
        self.summary = Summary()

    def record(self, video: str, answer: Any, batch: int) -> dict:
        return records.caption_record(video, records.answer_of(self.engine, answer), batch, self.sid)

    def caption_batch(self, items: list[Decoded]) -> list[dict]:
        """Caption decoded clips; out of memory splits the batch and lowers the batch size."""
        return self.backing_off(items, self._caption_once,
                                lambda item, exc: records.error_record(item.video, self.settings, self.sid, exc))

    def _caption_once(self, items: list[Decoded]) -> list[dict]:
        answers = self.engine.answer_batch([it.clip for it in items], self.prompt,
                                           timings=[it.timings for it in items],
                                           pixels=[it.pixels for it in items],
                                           features=[it.features for it in items])
        for it, answer in zip(items, answers, strict=True):
            if self.feature_cache is not None and it.key and it.features is None:
                self.feature_cache.put(it.key, it.clip, answer.features)
        return [self.record(it.video, a, len(items)) for it, a in zip(items, answers, strict=True)]

    def backing_off(self, items: list[Any], attempt: Callable[[list[Any]], list[Any]],
                    failed: Callable[[Any, BaseException], Any]) -> list[Any]:
        """``attempt(items)`` as one batch. Out of memory: halve the batch (and later ones) and try the halves;
        any other failure: one at a time, to find the culprit; an item that fails alone gives ``failed(item, exc)``."""
        try:
            return attempt(items)
        except Exception as exc:
            if _is_oom(exc) and len(items) > 1:
                self.summary.oom_backoffs += 1
                self.batch_size = max(1, len(items) // 2)
                _free_cuda_cache()
                half = len(items) // 2
                return self.backing_off(items[:half], attempt, failed) + self.backing_off(items[half:], attempt, failed)
            if len(items) > 1:  # find the culprit: one by one
                return [out for item in items for out in self.backing_off([item], attempt, failed)]
            return [failed(items[0], exc)]

    def run(self, videos: list[str], sink: writer.JsonlWriter) -> Summary:
        started = time.perf_counter()
        window = max(2 * self.batch_size, self.workers + 1)  # clips decoded ahead: bounds memory
        cores = max(1, cpu_cores() // self.workers)  # each worker's decoders share the cores
        progress = console.progress("videos")
        with (ThreadPoolExecutor(max_workers=self.workers, initializer=_lower_priority) as pool, progress,
              _StopFlag() as flag, _model_threads(self.engine)):
            task = progress.add_task("captioning", total=len(videos)) if progress else None
            queue = iter(videos)
            pending: list[tuple[str, Future]] = []

            def refill() -> None:
                while len(pending) < window:
                    video = next(queue, None)
                    if video is None:
                        return
                    pending.append((video, pool.submit(_decode, video, self.settings, self.frames, self.engine,
                                                       cores, self.feature_cache, self.prompt)))

            refill()
            while pending and not flag.stop:
                batch: list[Decoded] = []
                written: list[dict] = []
                while pending and len(batch) < self.batch_size:
                    video, future = pending.pop(0)
                    refill()
                    try:
                        batch.append(future.result())
                    except Exception as exc:  # an undecodable video is recorded, the run goes on
                        written.append(records.error_record(video, self.settings, self.sid, exc))
                if batch:
                    written.extend(self.caption_batch(batch))
                for rec in written:
                    keep(rec, sink, self.summary, progress, task)
            self.summary.interrupted = flag.stop and bool(pending)
            for _, future in pending:
                future.cancel()
        if self.feature_cache is not None:
            self.feature_cache.flush()  # the visual tokens kept for the next run are on disk
        self.summary.wall_seconds = time.perf_counter() - started
        return self.summary


# Niceness added to the decode workers: the model is the pipeline's bottleneck, and decoding ahead
# only has to keep up, so the scheduler should never make the model wait for a decoder.
WORKER_NICENESS = 10


def _lower_priority() -> None:
    """Runs in each decode worker thread: nice it (Linux nice values are per thread, and the decoder
    threads FFmpeg starts from it inherit the value). Elsewhere, and where refused, nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICENESS))
    except OSError:
        pass


@contextmanager
def _model_threads(engine: Any) -> Iterator[None]:
    """A model running on the CPU leaves one core to the decode workers while captioning.

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


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _distributed() -> Any:
    """accelerate's process state when launched with several processes (``accelerate launch``), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def run_caption(settings: Any, inputs: list[str], out: str, prompt: str, *, batch_size: int = DEFAULT_BATCH,
                workers: int = DEFAULT_WORKERS,
                shard: str | None = None, summary_path: str | None = None, stdin: Any = None,
                server: str | None = None, model_given: bool = True, feature_cache: str | None = None,
                output_format: str = DEFAULT_CAPTION_FORMAT, out_dir: str | None = None) -> int:
    """``server``: a ``vqa serve`` URL that captions instead of a model loaded here (same records).
    ``feature_cache``: a folder keeping each video's visual tokens, so a re-run with another prompt skips
    decoding and encoding."""
    from dataclasses import replace

    if not prompt.strip():
        raise UsageError("--prompt must not be empty")
    if batch_size < 1 or workers < 1:
        raise UsageError("--batch-size and --workers must be at least 1")
    found = expand_inputs(inputs, stdin)
    videos = found.videos
    if not videos and not found.unreadable:
        raise UsageError(f"no videos found in {' '.join(inputs)} (known extensions: "
                         f"{' '.join(sorted(VIDEO_EXTENSIONS))})")
    share = parse_shard(shard)
    if share:
        videos = [v for v in videos if in_shard(v, *share)]
    from vqa_cli.jobs import segments

    settings, out = segments.prepare(settings, videos, out, output_format, out_dir, bool(server), feature_cache)
    remote = None
    if server:
        from vqa_cli.remote.client import connect

        remote, settings = connect(server, settings, model_given=model_given)
    sid = records.settings_id(settings.identity(), prompt)

    state = _distributed()
    target = out
    if state is not None:
        if out == "-":
            raise UsageError("with several processes, --out must be a file (each process writes a part)")
        videos = [v for v in videos if in_shard(v, state.process_index, state.num_processes, salt="process:")]
        target = writer.part_path(out, state.process_index, state.num_processes)
        if settings.device in (None, "auto", "cuda") and state.device.type == "cuda":
            settings = replace(settings, device=str(state.device))
    if state is not None and state.process_index != 0:
        found.unreadable = []  # reported once, by the main process
    if summary_path and state is not None:  # one summary per process, next to its part file
        summary_path = writer.part_path(summary_path, state.process_index, state.num_processes)
    # Everything about the outputs is checked before anything loads or is written.
    writer.check_run_outputs(out, target, summary_path, videos, kind="caption")
    if settings.fit and remote is None:  # the frames --fit chooses are a real setting: settings_id has them
        from vqa_cli.model.session import fit_settings

        settings, _ = fit_settings(settings, [prompt])
        sid = records.settings_id(settings.identity(), prompt)
    owns_out = state is None or state.is_main_process
    with writer.locked(target), (writer.locked(out if owns_out and target != out else "-")):
        summary = _caption_locked(settings, videos, found, out, target, prompt, sid, batch_size, workers, remote,
                                  feature_cache, (output_format, out_dir, settings.force))
        if state is not None:
            state.wait_for_everyone()
            if state.is_main_process:
                writer.merge_parts(out, writer.part_paths(out, state.num_processes))
    console.info(summary.line() if summary.processed() or summary.repair_note()
                 else f"nothing to do: all {len(videos)} videos already captioned in {out}")
    if summary_path:
        writer.write_json(summary_path, summary.to_dict())
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if summary.errors else EXIT_OK


def _caption_locked(settings: Any, videos: list[str], found: Inputs, out: str, target: str, prompt: str, sid: str,
                    batch_size: int, workers: int, remote: Any = None, feature_cache: str | None = None,
                    output: tuple[str, str | None, bool] = ("jsonl", None, False)) -> Summary:
    """The run, once this process holds the output's lock: resume, load, caption, compact.

    The model loads before anything is written: a broken checkpoint leaves the output untouched
    (not even repaired). ``remote``: a ``client.Client`` that captions instead."""
    from vqa_cli.model.session import open_model

    # Under accelerate only the main process rewrites --out (at the merge); the others just read it.
    existing = writer.read_output(target) if target != "-" else writer.Output()
    done = writer.captioned_in(existing.records, sid) | (writer.captioned(out, sid) if target != out else set())
    todo = [v for v in videos if v not in done]
    from vqa_cli.jobs.segments import subtitle_reserve

    session = (open_model(settings, [prompt], batch=batch_size, reserve=subtitle_reserve(settings))
               if todo and remote is None else None)
    batch_size = _batch_that_fits(session, batch_size)
    todo, repaired = writer.resume(target, todo, sid, existing)
    summary = Summary(videos=len(videos), skipped=len(videos) - len(todo), repair=repaired)
    folders = [records.error_record(folder, settings, sid, InputNotFoundError(f"cannot read folder {folder!r}: "
                                                                              f"{reason}"), kind="input")
               for folder, reason in found.unreadable]
    if folders:
        with writer.JsonlWriter(target) as sink:
            for rec in folders:
                keep(rec, sink, summary)
    if session is not None or (remote is not None and todo):
        if remote is not None:
            from vqa_cli.remote.client import RemoteCaptioner

            captioner: Any = RemoteCaptioner(remote, settings, prompt, sid, batch_size=batch_size)
        else:
            from vqa_cli.jobs.segments import SegmentCaptioner, uses_time
            from vqa_cli.model.features import FeatureCache

            kind = SegmentCaptioner if uses_time(settings) else Captioner
            captioner = kind(session.engine, settings, prompt, sid, batch_size=batch_size, workers=workers,
                                  frames=session.budget.plan.frames,
                                  feature_cache=FeatureCache(0, feature_cache) if feature_cache else None)
        captioner.summary = summary
        try:
            from vqa_cli.jobs.segments import output_sink

            with writer.JsonlWriter(target) as sink:
                captioner.run(todo, output_sink(sink, *output))
        finally:
            summary.load_seconds = session.timings["load"] if session is not None else 0.0
            summary.superseded = writer.compact(target, _readable_folder(found, sid))
    else:
        summary.superseded = writer.compact(target, _readable_folder(found, sid))
    return summary


def _batch_that_fits(session: Any, batch_size: int) -> int:
    """The batch size to start from: the largest up to ``--batch-size`` that the memory check found to fit
    (out-of-memory back-off still halves it later)."""
    if session is None or session.memory is None or session.memory.estimate.batch >= batch_size:
        return batch_size
    fits = session.memory.estimate.batch
    console.info(f"--batch-size {batch_size} does not fit the memory ({session.memory.target.device}): "
                 f"starting at {fits}")
    return fits


def _readable_folder(found: Inputs, sid: str) -> Callable[[dict], bool]:
    """Which input-error records (of these settings) are settled: their folder was walked without trouble."""
    bad = {folder for folder, _ in found.unreadable}
    return lambda rec: (rec.get("error_kind") == "input" and rec.get("settings_id") == sid
                        and rec.get("video") not in bad and Path(rec.get("video") or "").is_dir())
