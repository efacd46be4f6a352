"""Captions in time: ``caption --segments`` and subtitles as context, on ``caption``'s pipeline.

A decode worker takes one video: it detects scenes (``scenes.detect_cuts``) or cuts fixed windows,
samples each segment on its own through ``engine.sample_clip`` (frames from inside the window only, the
request's frame count per segment), preprocesses the pixels and picks the subtitle cues of each clip
(``subtitles``). The model thread batches segment clips across segments and videos exactly as it batches
videos (``Engine.answer_batch``, one question per clip: the subtitles differ). A video's record is
written once all its segments are captioned (one line, kill-safe): its ``segments`` list, and the
whole-video fields summed or concatenated over them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from vqa_cli import console
from vqa_cli.jobs.caption import (
    DECODE_TIMEOUT,
    Captioner,
    Decoded,
    _decode,
    _lower_priority,
    _model_threads,
    _StopFlag,
    keep,
)
from vqa_cli.output import records, subtitles, writer
from vqa_cli.settings import DEFAULT_BATCH
from vqa_cli.video import cpu_cores, scenes

SUM_TIMINGS = ("scenes", "decode", "preprocess", "encode", "first_token", "generate")


@dataclass
class Piece:
    """One segment of a video, decoded, with its question (the prompt after its subtitle text)."""

    window: scenes.Window | None  # None: the whole request (--segments none)
    decoded: Decoded
    question: str
    subtitle_tokens: int = 0
    answer: Any = None


@dataclass
class VideoJob:
    video: str
    pieces: list[Piece]
    scenes_seconds: float = 0.0
    error: BaseException | None = None
    done: int = 0
    frames_scanned: int = 0  # frames PySceneDetect decoded
    extra: dict = field(default_factory=dict)


def token_counter(engine: Any) -> Callable[[str], int]:
    tokenizer = engine.checkpoint.tokenizer
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def windows_of(path: str, settings: Any) -> tuple[list[scenes.Window | None], float, int]:
    """The segment windows of ``path`` under ``settings`` (``[None]`` without segments), clipped to
    ``--start``/``--end``; the seconds scene detection took and the frames it decoded."""
    from vqa_cli.video import is_image_path, sample_frames

    spec = scenes.parse_spec(settings.segments)
    if not spec.active or is_image_path(path):  # a still image is one segment
        return [None], 0.0, 0
    started, scanned = time.perf_counter(), 0
    if spec.kind == "scenes":
        cuts, duration, scanned = scenes.detect_cuts(path, settings.scene_threshold,
                                                             settings.scene_detector)
    else:
        cuts, duration = [], sample_frames(path, 1, timeout=DECODE_TIMEOUT).duration
    found = scenes.windows_for(spec, duration, cuts, settings.min_scene)
    lo, hi = settings.start or 0.0, settings.end if settings.end is not None else float("inf")
    clipped = [scenes.Window(max(w.start, lo), min(w.end, hi)) for w in found if w.end > lo and w.start < hi]
    return list(clipped), time.perf_counter() - started, scanned


def decode_video(path: str, settings: Any, frames: int, engine: Any, cores: int, prompt: str,
                 count_tokens: Callable[[str], int], subtitle_budget: int = subtitles.DEFAULT_SUBTITLE_TOKENS,
                 cache: Any = None) -> VideoJob:
    """A worker's share for one video: its windows, each window's clip and pixels (or its visual tokens from the
    feature ``cache``: keyed by the window, as ``--start``/``--end`` would be), each clip's question."""
    windows, scene_seconds, scanned = windows_of(path, settings)
    cues = subtitles.cues_for(path, getattr(settings, "subtitles", "off"), getattr(settings, "subtitle_encoding", None))
    pieces = []
    for window in windows:
        windowed = settings if window is None else replace(settings, start=window.start, end=window.end)
        decoded = _decode(path, windowed, frames, engine, cores, cache, prompt, subtitles.digest(cues))
        clip = decoded.clip
        chosen = subtitles.overlapping(cues, clip.timestamps, (window.start, window.end) if window else None)
        text, tokens = subtitles.render(chosen, count_tokens, subtitle_budget)
        pieces.append(Piece(window, decoded, subtitles.with_subtitles(prompt, text), tokens))
    return VideoJob(path, pieces, scene_seconds, frames_scanned=scanned)


def video_record(job: VideoJob, engine: Any, sid: str, batch: int, segmented: bool) -> dict:
    """The one record of a video: the first segment's run fields, the segments, and sums over them."""
    answers = [p.answer for p in job.pieces]
    rec = records.caption_record(job.video, records.answer_of(engine, answers[0]), batch, sid)
    rec["subtitle_tokens"] = sum(p.subtitle_tokens for p in job.pieces)
    if not segmented or job.pieces[0].window is None:  # no segments, or a still image
        return rec
    segs = []
    for piece, answer in zip(job.pieces, answers, strict=True):
        segs.append({"start": piece.window.start, "end": piece.window.end, "caption": answer.text,
                     "frame_indices": answer.clip.indices, "timestamps": answer.clip.timestamps,
                     "subtitle_tokens": piece.subtitle_tokens})
    timings: dict[str, float] = {"scenes": round(job.scenes_seconds, 4)}
    for answer in answers:
        for k, v in answer.timings.items():
            if k in SUM_TIMINGS:
                timings[k] = round(timings.get(k, 0.0) + v, 4)
    rec.update(caption="\n".join(a.text for a in answers), segments=segs,
               frames=sum(len(a.clip.indices) for a in answers),
               frame_indices=[i for a in answers for i in a.clip.indices],
               timestamps=[t for a in answers for t in a.clip.timestamps],
               visual_tokens=sum(a.budget.plan.total for a in answers),
               generated_tokens=sum(a.tokens for a in answers), timings=timings,
               warnings=sorted({w for a in answers for w in a.clip.warnings}))
    return rec


class SegmentCaptioner(Captioner):
    """``Captioner`` over segments: a video is a job of segment clips, batched across videos."""

    subtitle_budget = subtitles.DEFAULT_SUBTITLE_TOKENS

    def answer_pieces(self, pieces: list[Piece]) -> list[BaseException | None]:
        """Caption pieces in one batch (out of memory halves it); a piece that fails alone gets its error."""
        return self.backing_off(pieces, self._answer_once, lambda piece, exc: exc)

    def _answer_once(self, pieces: list[Piece]) -> list[BaseException | None]:
        answers = self.engine.answer_batch([p.decoded.clip for p in pieces], [p.question for p in pieces],
                                           timings=[p.decoded.timings for p in pieces],
                                           pixels=[p.decoded.pixels for p in pieces],
                                           features=[p.decoded.features for p in pieces])
        for piece, answer in zip(pieces, answers, strict=True):
            piece.answer = answer
            if self.feature_cache is not None and piece.decoded.key and piece.decoded.features is None:
                self.feature_cache.put(piece.decoded.key, piece.decoded.clip, answer.features)
        return [None] * len(pieces)

    def run(self, videos: list[str], sink: writer.JsonlWriter) -> Any:
        started = time.perf_counter()
        segmented = scenes.parse_spec(self.settings.segments).active
        window = max(2, self.workers + 1)  # videos decoded ahead (each may hold many segments)
        cores = max(1, cpu_cores() // self.workers)
        count = token_counter(self.engine)
        progress = console.progress("segments" if segmented else "videos")
        with (ThreadPoolExecutor(max_workers=self.workers, initializer=_lower_priority) as pool, progress,
              _StopFlag() as flag, _model_threads(self.engine)):
            task = progress.add_task("videos", total=len(videos)) if progress else None
            seg_task = progress.add_task("segments", total=0) if progress and segmented else None
            queue = iter(videos)
            pending: list[tuple[str, Future]] = []
            jobs: list[VideoJob] = []  # decoded, not yet written, in input order
            found = [0]  # segments found so far: the segment bar's total grows as videos decode

            def refill() -> None:
                while len(pending) < window:
                    video = next(queue, None)
                    if video is None:
                        return
                    pending.append((video, pool.submit(decode_video, video, self.settings, self.frames, self.engine,
                                                       cores, self.prompt, count, self.subtitle_budget,
                                                       self.feature_cache)))

            def take() -> None:
                video, future = pending.pop(0)
                refill()
                try:
                    job = future.result()
                except Exception as exc:  # an undecodable video is recorded, the run goes on
                    job = VideoJob(video, [], error=exc)
                jobs.append(job)
                if seg_task is not None:
                    found[0] += len(job.pieces)
                    progress.update(seg_task, total=found[0])

            refill()
            while (pending or jobs) and not flag.stop:
                while pending and sum(len(j.pieces) - j.done for j in jobs if j.error is None) < self.batch_size:
                    take()
                batch = [p for j in jobs if j.error is None for p in j.pieces if p.answer is None][:self.batch_size]
                owners = {id(p): j for j in jobs for p in j.pieces}
                for piece, error in zip(batch, self.answer_pieces(batch) if batch else [], strict=True):
                    job = owners[id(piece)]
                    job.done += 1
                    if error is not None and job.error is None:
                        job.error = error
                if seg_task is not None:
                    progress.advance(seg_task, len(batch))
                while jobs and (jobs[0].error is not None or jobs[0].done == len(jobs[0].pieces)):
                    self._write(jobs.pop(0), sink, segmented, len(batch), progress, task)
            self.summary.interrupted = flag.stop and bool(pending or jobs)
            for _, future in pending:
                future.cancel()
        if self.feature_cache is not None:
            self.feature_cache.flush()  # the visual tokens kept for the next run are on disk
        self.summary.wall_seconds = time.perf_counter() - started
        return self.summary

    def _write(self, job: VideoJob, sink: writer.JsonlWriter, segmented: bool, batch: int, progress: Any,
               task: Any) -> None:
        if job.error is None and not job.pieces:
            from vqa_cli.video import VideoError

            job.error = VideoError(f"no segments in {job.video!r} within the requested window")
        if job.error is not None:
            rec = records.error_record(job.video, self.settings, self.sid, job.error)
        else:
            rec = video_record(job, self.engine, self.sid, batch, segmented)
        keep(rec, sink, self.summary, progress, task)


def uses_time(settings: Any) -> bool:
    """Whether this run needs the segment pipeline: segments, or subtitles to give."""
    return settings.segments != "none" or settings.subtitles != "off"


def prepare(settings: Any, videos: list[str], out: str, output_format: str, out_dir: str | None,
            remote: bool, feature_cache: str | None) -> tuple[Any, str]:
    """Check ``--format``/``--out-dir`` against the run before anything loads; the settings with ``--subtitles
    auto`` settled (``off`` when no video has a sidecar, so such runs keep their settings_id) and the JSON Lines
    output (``--out``, or ``DIR/index.jsonl`` with ``--out-dir``)."""
    from pathlib import Path

    from vqa_cli.errors import UsageError
    from vqa_cli.output.writer._formats import OUTPUT_FORMATS

    if output_format not in OUTPUT_FORMATS:
        raise UsageError(f"--format takes one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")
    if out_dir:
        if output_format == "jsonl":
            raise UsageError("--out-dir writes one --format file per video: give --format srt, vtt, txt, csv or "
                             "chapters (--out is the JSON Lines output)")
        if Path(out_dir).exists() and not Path(out_dir).is_dir():
            raise UsageError(f"--out-dir {out_dir!r} is not a folder")
        from vqa_cli.output.writer import check_sidecars

        check_sidecars(out_dir, videos, output_format, force=settings.force)  # a user's clip.srt: refused
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        out = out if out != "-" else str(Path(out_dir) / "index.jsonl")
    elif output_format != "jsonl":
        if out != "-":
            raise UsageError(f"--format {output_format} prints to stdout; for files give --out-dir DIR "
                             "(one file per video and a resumable index)")
        if output_format in ("srt", "vtt", "chapters") and len(videos) > 1:
            raise UsageError(f"--format {output_format} prints one video's file: for several videos give --out-dir")
    settings = settle_subtitles(settings, videos, [out])
    if settings.subtitles not in ("auto", "off") and len(videos) > 1:
        raise UsageError("--subtitles FILE is one video's subtitles: with several videos use auto (NAME.srt beside "
                         "each video)")
    if settings.segments != "none" and remote:
        raise UsageError("--segments runs on a model loaded here, without --server (subtitles and --feature-cache "
                         "work with it)")
    return settings, out


def output_sink(sink: Any, output_format: str, out_dir: str | None, force: bool = False) -> Any:
    """What captioning writes records to: the JSON Lines ``sink``, or the ``--format`` files around it (``force``:
    ``--out-dir`` may replace files vqa did not write)."""
    from vqa_cli.output.writer._formats import PrintSink, SidecarSink

    if output_format == "jsonl":
        return sink
    return SidecarSink(output_format, out_dir, sink, force) if out_dir else PrintSink(output_format)


def settle_subtitles(settings: Any, videos: list[str], outputs: list[str] | None = None) -> Any:
    """``--subtitles auto`` is ``off`` when none of ``videos`` has a sidecar (same settings_id as no subtitles).
    ``outputs``: the files the run writes (``--out``), never read as a sidecar (nor is stdout, nor anything vqa
    wrote: ``subtitles.find_sidecar``)."""
    subtitles.set_outputs(outputs or [])
    if settings.subtitles == "auto" and not any(subtitles.find_sidecar(v) for v in videos):
        return replace(settings, subtitles="off")
    return settings


def ask_in_time(settings: Any, video: str, questions: list[str], as_json: bool = False,
                batch: int = DEFAULT_BATCH) -> int:
    """``vqa ask`` with ``--segments`` (one answer per segment) or with subtitles: the question asked of each
    segment's clip (after its subtitle text), in batches of ``batch`` segments, printed in time order."""
    import sys

    from vqa_cli.errors import UsageError
    from vqa_cli.model.session import check_input, open_model
    from vqa_cli.video import cpu_cores

    if len(questions) != 1:
        raise UsageError("--segments and subtitles take one question (ask the others in their own runs)")
    check_input(video)
    started = time.perf_counter()
    session = open_model(settings, questions, reserve=subtitle_reserve(settings))
    engine, question = session.engine, questions[0]
    job = decode_video(video, settings, session.budget.plan.frames, engine, cpu_cores(), question,
                       token_counter(engine))
    progress = console.progress("segments") if len(job.pieces) > 1 else console.progress("videos")
    with progress:
        task = progress.add_task("segments", total=len(job.pieces)) if progress else None
        for k in range(0, len(job.pieces), batch):
            chunk = job.pieces[k:k + batch]
            answers = engine.answer_batch([p.decoded.clip for p in chunk], [p.question for p in chunk],
                                          timings=[p.decoded.timings for p in chunk],
                                          pixels=[p.decoded.pixels for p in chunk])
            for piece, answer in zip(chunk, answers, strict=True):
                piece.answer = answer
            if progress:
                progress.advance(task, len(chunk))
    first = job.pieces[0].answer
    record = records.ask_record(video, question, records.answer_of(engine, first))
    record["subtitle_tokens"] = sum(p.subtitle_tokens for p in job.pieces)
    record["timings"]["total"] = round(time.perf_counter() - started, 4)
    segmented = job.pieces[0].window is not None
    if segmented:
        record["answer"] = "\n".join(p.answer.text for p in job.pieces)
        record["segments"] = [{"start": p.window.start, "end": p.window.end, "answer": p.answer.text,
                               "frame_indices": p.answer.clip.indices, "timestamps": p.answer.clip.timestamps,
                               "subtitle_tokens": p.subtitle_tokens} for p in job.pieces]
    if as_json:
        console.emit_json(record)
    elif segmented:
        for seg in record["segments"]:
            sys.stdout.write(f"[{seg['start']:.3f}-{seg['end']:.3f}] {seg['answer']}\n")
    else:
        sys.stdout.write(record["answer"] + "\n")
    sys.stdout.flush()
    return 0


def subtitle_reserve(settings: Any) -> int:
    """Prompt tokens kept for subtitle text when the run gives subtitles (what ``--plan`` shows): the budget the
    model loads for, so a segment's subtitles never need a larger RoPE factor than the one loaded."""
    return subtitles.DEFAULT_SUBTITLE_TOKENS if settings.subtitles != "off" else 0
