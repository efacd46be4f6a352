"""A video in time: its segment windows (``caption --segments``; one window, the whole request, without), each
window's clip decoded and its question with the subtitle text given before the prompt, and its one record.

A decode worker takes one video (``decode_video``): it detects scenes (``scenes.detect_cuts``) or cuts fixed
windows, samples each segment on its own through ``Engine.prepare_clip`` (frames from inside the window only, the
request's frame count per segment), preprocesses the pixels and picks the subtitle cues of each clip
(``subtitles``). ``captioner.Captioner`` batches the clips across segments and videos (``Engine.answer_batch``,
one question per clip: the subtitles differ); a video's record (``video_record``) is written once all its
segments are captioned (one line, kill-safe): its ``segments`` list, and the whole-video fields summed or
concatenated over them. Plain captioning is the case of one segment: the record of its one answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from vqa_cli import console
from vqa_cli.output import records, subtitles
from vqa_cli.settings import DEFAULT_BATCH
from vqa_cli.video import Clip, scenes

if TYPE_CHECKING:
    import torch

    from vqa_cli.model.engine import Answer, Engine
    from vqa_cli.model.features import FeatureCache
    from vqa_cli.settings import RunSettings

SUM_TIMINGS = ("scenes", "decode", "preprocess", "encode", "first_token", "generate")
DECODE_TIMEOUT = 600.0  # seconds per file: a pathological file is recorded as an error, never hangs the run


@dataclass
class Decoded:
    """A worker's output for one clip: the clip and its pixels, or its visual tokens from the feature cache."""

    video: str
    clip: Clip
    timings: dict[str, float]
    pixels: torch.Tensor | None = None
    features: torch.Tensor | None = None  # [N, D] visual tokens found in the feature cache
    key: str = ""  # its feature-cache key ("" without a cache)


def decode(path: str, settings: RunSettings, frames: int, engine: Engine, cores: int,
           cache: FeatureCache | None = None, prompt: str = "", context: str = "") -> Decoded:
    """A worker's share for one clip, off the model's thread: the feature cache, else decode (with ``cores`` of the
    machine's cores) and preprocess to pixels (a still image on the image path is left to the engine).
    ``context``: the digest of the subtitles given before ``prompt`` (``features.feature_key``)."""
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
    prepared = engine.prepare_clip(path, frames, settings=settings, timeout=DECODE_TIMEOUT,
                                   options=DecodeOptions(cores=cores))
    return Decoded(path, prepared.clip, prepared.timings, prepared.pixels, key=key)


@dataclass
class Piece:
    """One segment of a video, decoded, with its question (the prompt after its subtitle text)."""

    window: scenes.Window | None  # None: the whole request (--segments none)
    decoded: Decoded
    question: str
    subtitle_tokens: int = 0
    answer: Answer | None = None
    batch: int = 0  # the size of the batch it was answered in


@dataclass
class VideoJob:
    video: str
    pieces: list[Piece]
    scenes_seconds: float = 0.0
    error: BaseException | None = None
    done: int = 0
    frames_scanned: int = 0  # frames PySceneDetect decoded
    extra: dict = field(default_factory=dict)

    def open(self) -> list[Piece]:
        """Its pieces still to answer (none once it failed)."""
        return [p for p in self.pieces if p.answer is None] if self.error is None else []

    def finished(self) -> bool:
        return self.error is not None or self.done == len(self.pieces)


def token_counter(engine: Engine) -> Callable[[str], int]:
    tokenizer = engine.checkpoint.tokenizer
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def windows_of(path: str, settings: RunSettings) -> tuple[list[scenes.Window | None], float, int]:
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


def decode_video(path: str, settings: RunSettings, frames: int, engine: Engine, cores: int, prompt: str,
                 count_tokens: Callable[[str], int], subtitle_budget: int = subtitles.DEFAULT_SUBTITLE_TOKENS,
                 cache: FeatureCache | None = None) -> VideoJob:
    """A worker's share for one video: its windows, each window's clip and pixels (or its visual tokens from the
    feature ``cache``: keyed by the window, as ``--start``/``--end`` would be), each clip's question."""
    windows, scene_seconds, scanned = windows_of(path, settings)
    cues = subtitles.cues_for(path, settings.subtitles, settings.subtitle_encoding, run=settings)
    pieces = []
    for window in windows:
        windowed = settings if window is None else replace(settings, start=window.start, end=window.end)
        decoded = decode(path, windowed, frames, engine, cores, cache, prompt, subtitles.digest(cues))
        clip = decoded.clip
        chosen = subtitles.overlapping(cues, clip.timestamps, (window.start, window.end) if window else None)
        text, tokens = subtitles.render(chosen, count_tokens, subtitle_budget)
        pieces.append(Piece(window, decoded, subtitles.with_subtitles(prompt, text), tokens))
    return VideoJob(path, pieces, scene_seconds, frames_scanned=scanned)


def video_record(job: VideoJob, engine: Engine, sid: str, batch: int, segmented: bool) -> dict:
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


def uses_time(settings: RunSettings) -> bool:
    """Whether this run needs the segment pipeline: segments, or subtitles to give."""
    return settings.segments != "none" or settings.subtitles != "off"


def settle_subtitles(settings: RunSettings, videos: list[str], outputs: list[str] | None = None) -> RunSettings:
    """``--subtitles auto`` is ``off`` when none of ``videos`` has a sidecar (same settings_id as no subtitles), unless
    ``--asr auto`` transcribes those. ``outputs``: the files the run writes (``--out``), never read as a sidecar (nor
    is stdout, nor anything vqa wrote: ``subtitles.find_sidecar``)."""
    subtitles.set_outputs(outputs or [])
    if settings.subtitles == "auto" and settings.asr == "off" and not any(subtitles.find_sidecar(v) for v in videos):
        return replace(settings, subtitles="off")
    return settings


def ask_in_time(settings: RunSettings, video: str, questions: list[str], as_json: bool = False,
                batch: int = DEFAULT_BATCH) -> int:
    """``vqa ask`` with ``--segments`` (one answer per segment) or with subtitles: the question asked of each
    segment's clip (after its subtitle text), in batches of ``batch`` segments, printed in time order."""
    import sys

    from vqa_cli.errors import UsageError
    from vqa_cli.model.session import check_input, open_model
    from vqa_cli.video import cpu_cores

    if len(questions) != 1:
        raise UsageError("--segments takes one question (ask the others in their own runs)")
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


def subtitle_reserve(settings: RunSettings) -> int:
    """Prompt tokens kept for subtitle text when the run gives subtitles (what ``--plan`` shows): the budget the
    model loads for, so a segment's subtitles never need a larger RoPE factor than the one loaded."""
    return subtitles.DEFAULT_SUBTITLE_TOKENS if settings.subtitles != "off" else 0
