"""The captioning pipelines: one process's share of the videos into records, on the harness's run-ahead loop.

``Captioner``: the model loaded here. Decode-ahead worker threads turn each video into a job of segment clips
(``segments.decode_video``; one clip without ``--segments``) while the model thread captions the clips in
batches across segments and videos (left-padded batched generate). Batches start from the largest size the
memory check found to fit; on out of memory a batch is split in halves and retried, and later batches stay
smaller. Records are written in input order, one per video, as soon as its clips are captioned; a video that
cannot be decoded is recorded when its turn comes, before the captions of the batch being formed.

``RemoteCaptioner``: a running ``vqa serve`` captions: ``batch_size`` requests in flight (the server batches
them), records written in input order.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from vqa_cli import console
from vqa_cli.jobs import segments
from vqa_cli.jobs.harness import Progress, RunAhead, Sink, StopFlag, Summary, back_off, keep, model_threads
from vqa_cli.output import records, subtitles
from vqa_cli.video import cpu_cores, scenes

if TYPE_CHECKING:
    from vqa_cli.model.engine import Engine
    from vqa_cli.model.features import FeatureCache
    from vqa_cli.remote.client import Client
    from vqa_cli.settings import RunSettings


class Captioner:
    """One process's captioning run over its share of the videos, with the model loaded here."""

    subtitle_budget = subtitles.DEFAULT_SUBTITLE_TOKENS

    def __init__(self, engine: Engine, settings: RunSettings, prompt: str, sid: str, *, batch_size: int,
                 workers: int, frames: int, feature_cache: FeatureCache | None = None) -> None:
        self.engine, self.settings, self.prompt, self.sid = engine, settings, prompt, sid
        self.batch_size, self.workers, self.frames = batch_size, workers, frames
        self.feature_cache = feature_cache  # visual tokens kept between runs
        self.summary = Summary()

    def answer_pieces(self, pieces: list[segments.Piece]) -> list[BaseException | None]:
        """Caption pieces in one batch (out of memory halves it); a piece that fails alone gets its error."""
        return back_off(pieces, self._answer_once, lambda piece, exc: exc, self._smaller)

    def _smaller(self, size: int) -> None:
        self.summary.oom_backoffs += 1
        self.batch_size = max(1, size)

    def _answer_once(self, pieces: list[segments.Piece]) -> list[BaseException | None]:
        answers = self.engine.answer_batch([p.decoded.clip for p in pieces], [p.question for p in pieces],
                                           timings=[p.decoded.timings for p in pieces],
                                           pixels=[p.decoded.pixels for p in pieces],
                                           features=[p.decoded.features for p in pieces])
        for piece, answer in zip(pieces, answers, strict=True):
            piece.answer, piece.batch = answer, len(pieces)
            if self.feature_cache is not None and piece.decoded.key and piece.decoded.features is None:
                self.feature_cache.put(piece.decoded.key, piece.decoded.clip, answer.features)
        return [None] * len(pieces)

    def _decode(self, video: str, cores: int) -> segments.VideoJob:
        return segments.decode_video(video, self.settings, self.frames, self.engine, cores, self.prompt,
                                     segments.token_counter(self.engine), self.subtitle_budget, self.feature_cache)

    def run(self, videos: list[str], sink: Sink) -> Summary:
        started = time.perf_counter()
        segmented = scenes.parse_spec(self.settings.segments).active
        # Decoded ahead, bounding memory: two batches of clips, or (each video may hold many segments) videos.
        window = max(2, self.workers + 1) if segmented else max(2 * self.batch_size, self.workers + 1)
        cores = max(1, cpu_cores() // self.workers)  # each worker's decoders share the cores
        progress = console.progress("segments" if segmented else "videos")
        with (RunAhead(videos, lambda video: self._decode(video, cores), workers=self.workers,
                       window=window) as ahead, progress, StopFlag() as flag, model_threads(self.engine)):
            task = progress.add_task("captioning", total=len(videos)) if progress else None
            seg_task = progress.add_task("segments", total=0) if progress and segmented else None
            jobs: list[segments.VideoJob] = []  # decoded, not yet written, in input order
            found = 0  # segments found so far: the segment bar's total grows as videos decode
            while (ahead or jobs) and not flag.stop:
                while ahead and sum(len(j.open()) for j in jobs) < self.batch_size:
                    video, got = ahead.take()
                    if isinstance(got, Exception):  # undecodable: its record now, before the batch's; the run goes on
                        self._write(segments.VideoJob(video, [], error=got), sink, segmented, 0, progress, task)
                        continue
                    jobs.append(got)
                    if seg_task is not None:
                        found += len(got.pieces)
                        progress.update(seg_task, total=found)
                batch = [p for j in jobs for p in j.open()][:self.batch_size]
                owners = {id(p): j for j in jobs for p in j.pieces}
                for piece, error in zip(batch, self.answer_pieces(batch) if batch else [], strict=True):
                    job = owners[id(piece)]
                    job.done += 1
                    if error is not None and job.error is None:
                        job.error = error
                if seg_task is not None:
                    progress.advance(seg_task, len(batch))
                while jobs and jobs[0].finished():
                    self._write(jobs.pop(0), sink, segmented, len(batch), progress, task)
            self.summary.interrupted = flag.stop and bool(ahead or jobs)
        if self.feature_cache is not None:
            self.feature_cache.flush()  # the visual tokens kept for the next run are on disk
        self.summary.wall_seconds = time.perf_counter() - started
        return self.summary

    def _write(self, job: segments.VideoJob, sink: Sink, segmented: bool, batch: int, progress: Progress | None,
               task: int | None) -> None:
        if job.error is None and not job.pieces:
            from vqa_cli.video import VideoError

            job.error = VideoError(f"no segments in {job.video!r} within the requested window")
        if job.error is not None:
            rec = records.error_record(job.video, self.settings, self.sid, job.error)
        else:  # a video of one clip was captioned in one batch: its size; a segmented one's lasts until written
            rec = segments.video_record(job, self.engine, self.sid, batch if segmented else job.pieces[0].batch,
                                        segmented)
        keep(rec, sink, self.summary, progress, task)


class RemoteCaptioner:
    """``Captioner``'s job over a server: ``batch_size`` requests in flight (the server batches them), records
    written in input order."""

    def __init__(self, client: Client, settings: RunSettings, prompt: str, sid: str, *, batch_size: int) -> None:
        self.client, self.settings, self.prompt, self.sid = client, settings, prompt, sid
        self.batch_size = batch_size
        self.summary = Summary()

    def run(self, videos: list[str], sink: Sink) -> Summary:
        from vqa_cli.remote.client import caption_record

        started = time.perf_counter()
        progress = console.progress("videos")
        with (RunAhead(videos, lambda video: caption_record(self.client, self.settings, self.prompt, self.sid, video),
                       workers=self.batch_size, window=2 * self.batch_size, niced=False) as ahead,
              progress, StopFlag() as flag):
            task = progress.add_task("captioning", total=len(videos)) if progress else None
            while ahead and not flag.stop:
                _, got = ahead.take()
                if isinstance(got, Exception):  # the server went away (an answered error is a record)
                    raise got
                keep(got, sink, self.summary, progress, task)
            self.summary.interrupted = flag.stop and bool(ahead)
        self.summary.wall_seconds = time.perf_counter() - started
        return self.summary
