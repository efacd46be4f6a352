"""Which frames: pure functions over measured timestamps and keyframe positions, testable without a file.

A request (a count or a rate, a time window) and a timeline (every frame's own timestamp, as
measured from the packets or by a counting pass) give the frame indices to return; in keyframe
mode each of those snaps to its nearest keyframe.  Nothing here decodes or trusts a header, except
for a frame rate to fall back on when a file has too few timestamps to measure one.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from vqa_cli.settings import SEEK_MODES
from vqa_cli.video._inputs import VideoError, fmt_seconds, quote

# Frame rates outside this range in a header are treated as nonsense.
MAX_PLAUSIBLE_FPS = 1000.0
# Used only when a video has a single frame (nothing to measure) and its header
# frame rate is implausible.
FALLBACK_FPS = 25.0


def plausible_fps(fps: float) -> bool:
    return math.isfinite(fps) and 0.0 < fps <= MAX_PLAUSIBLE_FPS


def uniform_indices(total: int, n: int) -> list[int]:
    """``n`` indices spread uniformly over ``range(total)``.

    Index k is the middle of the k-th of ``n`` equal segments:
    ``floor((k + 0.5) * total / n)``.  If ``n >= total`` every index is returned.
    """
    if n <= 0:
        raise ValueError(f"number of frames must be positive, got {n}")
    if total <= 0:
        return []
    if n >= total:
        return list(range(total))
    # Integer arithmetic: floor((2k + 1) * total / (2n)), exact for any size.
    return [((2 * k + 1) * total) // (2 * n) for k in range(n)]


@dataclass(frozen=True)
class Request:
    """What the caller asked for, validated."""

    num_frames: int | None
    fps: float | None
    max_frames: int | None
    lo: float
    hi: float

    def count(self, duration: float) -> int:
        """How many frames to sample from a video of this duration."""
        if self.num_frames is not None:
            n = self.num_frames
        else:
            assert self.fps is not None
            span = max(0.0, min(self.hi, duration) - self.lo)
            n = max(1, math.floor(span * self.fps + 1e-9))
        return n if self.max_frames is None else min(n, self.max_frames)


def validate(
    num_frames: int | None,
    fps: float | None,
    max_frames: int | None,
    seek: str,
    start: float | None,
    end: float | None,
) -> Request:
    """The request ``sample_frames`` was given; ValueError for bad arguments, VideoError for a bad window."""
    if (num_frames is None) == (fps is None):
        raise ValueError("give exactly one of num_frames and fps")
    if num_frames is not None and (isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames <= 0):
        raise ValueError(f"number of frames must be positive, got {num_frames}")
    if fps is not None:
        try:
            rate = float(fps)
        except (TypeError, ValueError):
            rate = math.nan
        if isinstance(fps, bool) or not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or int(max_frames) != max_frames or max_frames <= 0):
        raise ValueError(f"max_frames must be positive, got {max_frames}")
    if seek not in SEEK_MODES:
        raise ValueError(f"seek must be one of {', '.join(SEEK_MODES)}; got {seek!r}")
    for name, value in (("start", start), ("end", end)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise VideoError(f"{name} time must be a non-negative number of seconds, got {value!r}")
    if start is not None and end is not None and start >= end:
        raise VideoError(
            f"empty time window: start ({fmt_seconds(start)}) must be before end ({fmt_seconds(end)})"
        )
    return Request(
        num_frames=None if num_frames is None else int(num_frames),
        fps=None if fps is None else float(fps),
        max_frames=None if max_frames is None else int(max_frames),
        lo=0.0 if start is None else float(start),
        hi=math.inf if end is None else float(end),
    )


def repair_timestamps(raw_ms: list[float], fps_from_header: float) -> tuple[list[float], float]:
    """Raw CAP_PROP_POS_MSEC values -> (increasing timestamps in seconds, frame interval).

    The interval is the median of the positive gaps (the header's rate only when
    there is none).  Timestamps that do not increase (broken or missing pts) are
    replaced by the previous one plus the interval; a negative start is shifted to 0.
    """
    ts = [t / 1000.0 if math.isfinite(t) else 0.0 for t in raw_ms]
    gaps = [b - a for a, b in itertools.pairwise(ts) if b > a]
    if gaps:
        interval = statistics.median(gaps)
    elif plausible_fps(fps_from_header):
        interval = 1.0 / fps_from_header
    else:
        interval = 1.0 / FALLBACK_FPS
    if ts and ts[0] < 0:
        shift = -ts[0]
        ts = [t + shift for t in ts]
    for i in range(1, len(ts)):
        if not ts[i] > ts[i - 1]:
            ts[i] = ts[i - 1] + interval
    return ts, interval


def round_ts(value: float) -> float:
    return round(value, 3) + 0.0  # + 0.0 turns -0.0 into 0.0


def window_targets(timestamps: list[float], num_frames: int, start: float, end: float) -> list[int]:
    """Indices (into the frame list) of ``num_frames`` frames uniform over start <= t < end."""
    candidates = [i for i, t in enumerate(timestamps) if start <= t < end]
    if not candidates:
        return []
    return [candidates[k] for k in uniform_indices(len(candidates), num_frames)]


@dataclass(frozen=True)
class Timeline:
    """Real timestamps of every frame, as measured (packet index or counting pass)."""

    timestamps: list[float]  # rounded seconds
    duration: float
    fps: float

    @classmethod
    def from_ms(cls, raw_ms: list[float], fps_from_header: float) -> Timeline:
        seconds, interval = repair_timestamps(raw_ms, fps_from_header)
        return cls(
            timestamps=[round_ts(t) for t in seconds],
            duration=round_ts(seconds[-1] + interval),
            fps=round(1.0 / interval, 3),
        )

    def targets(self, request: Request, path: str) -> list[int]:
        """The frame indices to return; VideoError for a window outside the video."""
        if request.lo >= self.duration:
            raise VideoError(
                f"start {fmt_seconds(request.lo)} is past the end of {quote(path)} "
                f"(duration {fmt_seconds(self.duration)})"
            )
        if request.fps is None:
            targets = window_targets(self.timestamps, request.count(self.duration), request.lo, request.hi)
        else:
            targets = self._slice_targets(request.count(self.duration), request.lo, min(request.hi, self.duration))
        if not targets:
            targets = self.on_screen(request.lo)
        if not targets:
            raise VideoError(f"{quote(path)} has no frames")
        return targets

    def on_screen(self, t: float) -> list[int]:
        """The frame on screen at ``t`` (one index): the last one shown at or before it, whose presentation
        interval ``[pts, next pts)`` (the last frame's: ``[pts, duration)``) holds ``t``; the first frame when
        none is shown yet; ``[]`` for no frames.

        A window in which no frame starts (a screen recording whose frame stays up for seconds, a variable
        frame rate) thus still has content: the frame on screen during it, with its own index and timestamp."""
        if not self.timestamps:
            return []
        return [max(bisect.bisect_right(self.timestamps, t) - 1, 0)]

    def window(self, request: Request) -> range:
        """The frame indices inside the request's time window."""
        return range(bisect.bisect_left(self.timestamps, request.lo), bisect.bisect_left(self.timestamps, request.hi))

    def _slice_targets(self, count: int, lo: float, hi: float) -> list[int]:
        """The frame shown at the middle of each of ``count`` equal time slices of [lo, hi).

        For a constant frame rate these are the frames ``uniform_indices`` picks;
        for a variable one each slice of time gets its own frame.  Slices shorter
        than a frame can share one; it is returned once.
        """
        first = bisect.bisect_left(self.timestamps, lo)
        stop = bisect.bisect_left(self.timestamps, hi)
        if first >= stop:
            return []
        chosen = []
        for k in range(count):
            middle = lo + (k + 0.5) * (hi - lo) / count
            # Timestamps are rounded to milliseconds: allow for that at slice boundaries.
            shown = bisect.bisect_right(self.timestamps, middle + 5e-4) - 1
            chosen.append(min(max(shown, first), stop - 1))
        return sorted(set(chosen))


def has_key_in(keys: Sequence[int], window: range) -> bool:
    """Whether a keyframe (``keys``: increasing frame indices) lies inside ``window``."""
    i = bisect.bisect_left(keys, window.start)
    return i < len(keys) and keys[i] < window.stop


def nearest_keys(keys: Sequence[int], targets: list[int], allowed: range) -> list[int]:
    """Each target's nearest keyframe inside ``allowed`` (ties go to the earlier one), in order."""
    keys = [k for k in keys[bisect.bisect_left(keys, allowed.start) :] if k < allowed.stop]
    chosen = []
    for t in targets:
        i = bisect.bisect_right(keys, t)
        candidates = keys[max(i - 1, 0) : i + 1]
        chosen.append(min(candidates, key=lambda k: (abs(k - t), k)))
    return chosen
