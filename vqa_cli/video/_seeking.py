"""Exact decoding by seeking and grabbing, checked frame by frame against the packet index.

Targets are grouped into runs (``_runs``); inside a run a capture grabs forward (``grab()``
decodes without colour conversion; only kept frames are ``retrieve()``-d), and a run starts with
a seek when the next target lies further away than a seek costs.  Every grabbed frame is
identified by its own timestamp (``CAP_PROP_POS_MSEC``) and checked against the index, also right
after a seek.  Runs are spread over one capture per core, in threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from vqa_cli.video import _capture
from vqa_cli.video._index import PacketIndex
from vqa_cli.video._inputs import Deadline
from vqa_cli.video._options import DecodeOptions
from vqa_cli.video._runs import Run, plan_runs, split
from vqa_cli.video._sampling import plausible_fps

# Overshooting seeks are retried from an earlier keyframe this often before a
# capture restarts from the first frame.
_SEEK_RETRIES = 2


class Cancelled(Exception):
    """Another worker failed; this one stops."""


class Mismatch(Exception):
    """The decoder disagrees with the packet index; the caller falls back to a counting pass."""


@dataclass
class Job:
    """State shared by the captures decoding one file."""

    path: str
    fs_path: str
    index: PacketIndex
    wanted: set[int]
    deadline: Deadline
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.stop.is_set():
            raise Cancelled
        self.deadline.check()


class Walker:
    """One decoding capture that walks through runs, checking every frame against the index."""

    def __init__(self, job: Job, threads: int, keep: frozenset[int] = frozenset()) -> None:
        self.job = job
        self.threads = threads  # FFmpeg decoder threads (0: OpenCV's default)
        self.keep = keep  # frames to keep for this walker's caller (in self.kept), besides job.wanted
        self.kept: dict[int, np.ndarray] = {}
        self.cap: cv2.VideoCapture | None = None
        self.pos = -1
        self.first_unit = 0
        self.decoded = 0

    def open(self) -> None:
        job = self.job
        self.cap = _capture.open_capture(job.path, job.fs_path, self.threads)
        if not self.cap.grab():
            raise Mismatch("no first frame")
        self.decoded += 1
        ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        # The backend reports a frame with pts 0 by its dts; accept that for the first frame.
        if job.index.rank(ms) not in (None, 0):
            raise Mismatch("the first frame is not the first packet")
        self.first_unit = cv_unit(job.index.fps_from_header, ms)
        self.pos = 0
        self._take(0)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def walk(self, runs: list[Run]) -> None:
        for run in runs:
            if run.land is not None:
                self._seek(run.targets[0], run.land)
            for t in run.targets:
                self._advance(t)
            if run.eof:
                self.job.check()
                assert self.cap is not None
                if self.cap.grab():
                    raise Mismatch("the file has more frames than packets")

    def _take(self, rank: int) -> None:
        """Retrieve the current frame if someone wants it."""
        for_job = rank in self.job.wanted and rank not in self.job.frames
        for_caller = rank in self.keep and rank not in self.kept
        if for_job or for_caller:
            frame = self._retrieve()
            if for_job:
                self.job.frames[rank] = frame
            if for_caller:
                self.kept[rank] = frame

    def _retrieve(self) -> np.ndarray:
        assert self.cap is not None
        ok, frame = self.cap.retrieve()
        if not ok or frame is None:
            raise Mismatch("a grabbed frame cannot be retrieved")
        return _capture.to_rgb(frame)

    def _next(self) -> int:
        """Grab the next frame and return its index."""
        self.job.check()
        assert self.cap is not None
        if not self.cap.grab():
            raise Mismatch("the decoder stopped before the index did")
        self.decoded += 1
        rank = self.job.index.rank(self.cap.get(cv2.CAP_PROP_POS_MSEC))
        if rank is None:
            raise Mismatch("a decoded frame has a timestamp no packet has")
        return rank

    def _seek(self, target: int, land: int) -> None:
        index = self.job.index
        assert self.cap is not None
        for _ in range(_SEEK_RETRIES + 1):
            # OpenCV counts frames as round(fps * pts) from the first frame and, after landing
            # on a keyframe, grabs one frame per unit; asking for land + (target - land) units
            # stops right before the target even when the header frame rate is wrong.
            request = cv_unit(index.fps_from_header, index.ms[land]) - self.first_unit + (target - land)
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, max(request, 0))
            found = self._next()
            self.decoded += max(0, found - land)  # decoded inside the seek (estimated)
            if found <= target:
                self.pos = found
                self._take(found)
                return
            if land == 0:
                break
            land = index.key_at_or_before(land - 1)
        # Seeking keeps overshooting (a header frame rate far too low): walk from the start.
        self.close()
        self.open()

    def _advance(self, target: int) -> None:
        while self.pos < target:
            found = self._next()
            if found != self.pos + 1:
                raise Mismatch("decoded frames skip or repeat a packet")
            self.pos = found
            self._take(found)
        if self.pos != target:
            raise Mismatch("walked past a target")


def cv_unit(fps_from_header: float, ms: float) -> int:
    """OpenCV's frame number for a timestamp: (int64)(fps * seconds + 0.5), with the header's fps."""
    if not plausible_fps(fps_from_header):
        return 0
    return int(fps_from_header * ms / 1000.0 + 0.5)


def worker_count(runs: list[Run], options: DecodeOptions) -> int:
    if len(runs) < 2 or sum(r.cost for r in runs) < options.parallel_min_decodes:
        return 1
    return min(options.workers, len(runs))


def walk_parallel(job: Job, groups: list[list[Run]], walkers: list[Walker]) -> None:
    """Each walker takes one group of runs in its own thread; the first failure stops the rest."""

    def work(walker: Walker, runs: list[Run]) -> None:
        try:
            if walker.cap is None:
                walker.open()
            walker.walk(runs)
        except BaseException:
            job.stop.set()
            raise
        finally:
            walker.close()

    if len(groups) == 1:
        work(walkers[0], groups[0])
        return
    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        futures = [pool.submit(work, w, g) for w, g in zip(walkers, groups, strict=True)]
    errors = [f.exception() for f in futures]
    real = [e for e in errors if e is not None and not isinstance(e, Cancelled)]
    if real:
        raise real[0]


def decode_walking(job: Job, targets: list[int], eof: bool, options: DecodeOptions) -> int:
    """Decode ``targets`` exactly by seeking and grabbing (plus the end check); returns frames decoded."""
    runs = plan_runs(job.index, targets, eof)
    groups = [[runs[i] for i in group] for group in split([r.cost for r in runs], worker_count(runs, options))]
    threads = options.decoder_threads if len(groups) == 1 else max(1, options.cpu_count // len(groups))
    walkers = [Walker(job, threads) for _ in groups]
    walk_parallel(job, groups, walkers)
    return sum(w.decoded for w in walkers)
