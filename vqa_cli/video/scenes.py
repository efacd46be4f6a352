"""A video in time: ``--segments none|scenes|fixed:SECONDS`` as windows ``[start, end)`` in seconds.

Everything here is pure (cut lists -> windows, short windows merged, fixed windows, runs of cuts on
consecutive frames collapsed) except ``detect_cuts``, the one call of PySceneDetect (over OpenCV, imported
there so that ``vqa --help`` loads neither).

``--scene-detector``: ``combined`` (the default) runs PySceneDetect's content detector (mean HSV change: finds
cuts between textured shots, but misses flat frames of close hue, saturation and value, such as a cyan frame
cut to a green one) and its histogram detector (luma histogram correlation: finds those flat cuts, but not
two textures with one histogram, such as stripes turned sideways) together, and takes the cuts either finds.
The histogram detector fires on every frame of a flat fade, so cuts on consecutive frames are one transition
(a fade, a dissolve, a flash): one cut at its middle. ``content``, ``adaptive`` and ``histogram`` run one
detector alone; ``--scene-threshold`` is the chosen detector's own threshold (``settings.DEFAULT_THRESHOLDS``).

Window bounds use the decoder's 3-decimal timestamps (``video._sampling.round_ts``), so a frame shown at a
cut belongs to the segment that starts there, exactly as ``video.sample_frames`` windows ``start <= t < end``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from vqa_cli.errors import UsageError
from vqa_cli.settings import (
    DEFAULT_MIN_SCENE,
    DEFAULT_SCENE_DETECTOR,
    DEFAULT_THRESHOLDS,
    parse_segments,
    threshold_for,
)


@dataclass(frozen=True)
class SegmentSpec:
    """What ``--segments`` asked for: ``kind`` ``"none"``, ``"scenes"`` or ``"fixed"`` (with ``seconds``)."""

    kind: str = "none"
    seconds: float = 0.0

    @property
    def active(self) -> bool:
        return self.kind != "none"


@dataclass(frozen=True)
class Window:
    """One segment: ``start <= t < end`` seconds."""

    start: float
    end: float

    @property
    def length(self) -> float:
        """Seconds, on the millisecond grid the bounds are rounded to (so 1.4 - 1.1 is 0.3, not 0.29999...)."""
        return _round(self.end - self.start)


def parse_spec(text: str | None) -> SegmentSpec:
    """``--segments`` (``settings.parse_segments``: ``none``, ``scenes`` or ``fixed:SECONDS``) as a ``SegmentSpec``;
    anything else is a ``UsageError``."""
    return SegmentSpec(*parse_segments(text))


def _round(value: float) -> float:
    return round(value + 0.0, 3)


def cut_windows(cuts: list[float], duration: float) -> list[Window]:
    """Windows between the cuts (times where a new scene starts) over ``[0, duration)``.

    Cuts outside ``(0, duration)`` and repeats are ignored; no cuts give one window."""
    inner = sorted({_round(c) for c in cuts if 0 < _round(c) < duration})
    bounds = [0.0, *inner, _round(duration)]
    return [Window(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def merge_short(windows: list[Window], min_seconds: float) -> list[Window]:
    """Merge every window shorter than ``min_seconds`` with a neighbour (the shorter of the two, the
    earlier one on a tie) until none is short or one window is left; the windows still tile the same span."""
    out = list(windows)
    while len(out) > 1:
        short = [i for i, w in enumerate(out) if w.length < min_seconds]
        if not short:
            break
        i = min(short, key=lambda k: (out[k].length, k))
        if i == 0:
            j = 1
        elif i == len(out) - 1:
            j = i - 1
        else:
            j = i - 1 if out[i - 1].length <= out[i + 1].length else i + 1
        a, b = sorted((i, j))
        out[a:b + 1] = [Window(out[a].start, out[b].end)]
    return out


def fixed_windows(seconds: float, duration: float) -> list[Window]:
    """``[0, s), [s, 2s), ...`` up to ``duration`` (the last one may be shorter)."""
    if seconds <= 0:
        raise UsageError("fixed segments need a length above 0 seconds")
    out, k = [], 0
    while k * seconds < duration:
        start, end = _round(k * seconds), _round(min((k + 1) * seconds, duration))
        if end > start:
            out.append(Window(start, end))
        k += 1
    return out


def windows_for(spec: SegmentSpec, duration: float, cuts: list[float] | None = None,
                min_seconds: float = DEFAULT_MIN_SCENE) -> list[Window]:
    """The segments of a video of ``duration`` seconds: one window for ``none``, the scene ``cuts``
    (short scenes merged) for ``scenes``, equal windows for ``fixed``."""
    if spec.kind == "fixed":
        return fixed_windows(spec.seconds, duration)
    if spec.kind == "scenes":
        return merge_short(cut_windows(cuts or [], duration), min_seconds)
    return [Window(0.0, _round(duration))]


def combined_thresholds(threshold: float) -> tuple[float, float | None]:
    """``combined``'s (content, histogram) thresholds: ``threshold`` and the histogram default scaled with it;
    the histogram's is None (left out) from 1 up, where it would still cut between any two flat colours (PySceneDetect
    caps it at 1), so a high enough threshold finds no cut at all."""
    histogram = DEFAULT_THRESHOLDS["histogram"] * threshold / DEFAULT_THRESHOLDS["content"]
    return threshold, histogram if histogram < 1 else None


def collapse_runs(frames: list[int]) -> list[int]:
    """Cut frames with runs on consecutive frames (a fade, a dissolve, a flash) made one cut each, at the run's
    middle (the earlier of two); sorted, each once."""
    out: list[int] = []
    run: list[int] = []
    for frame in sorted(set(frames)):
        if run and frame != run[-1] + 1:
            out.append(run[(len(run) - 1) // 2])
            run = []
        run.append(frame)
    if run:
        out.append(run[(len(run) - 1) // 2])
    return out


def nearest_time(times: list[float], t: float) -> float:
    """The value of ``times`` (increasing) nearest to ``t``, the earlier on a tie."""
    i = bisect.bisect_left(times, t)
    return min(times[max(i - 1, 0):i + 1], key=lambda v: (abs(v - t), v))


def _detectors(detector: str, threshold: float) -> list:
    from scenedetect import AdaptiveDetector, ContentDetector, HistogramDetector

    # The detectors' own minimum scene is one frame: short scenes are merged afterwards (merge_short, seconds).
    if detector == "content":
        return [ContentDetector(threshold=threshold, min_scene_len=1)]
    if detector == "adaptive":
        return [AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=1)]
    if detector == "histogram":
        return [HistogramDetector(threshold=threshold, min_scene_len=1)]
    content, histogram = combined_thresholds(threshold)
    return [ContentDetector(threshold=content, min_scene_len=1),
            *([HistogramDetector(threshold=histogram, min_scene_len=1)] if histogram is not None else [])]


def detect_cuts(path: str, threshold: float | None = None,
                detector: str = DEFAULT_SCENE_DETECTOR) -> tuple[list[float], float, int]:
    """PySceneDetect's ``detector`` over ``path`` (OpenCV backend; ``threshold`` None: the detector's default):
    the times where a new scene starts (each the first frame's own presentation time of its scene, from the
    packet index, runs on consecutive frames collapsed), the video's duration and the frames decoded."""
    from scenedetect import SceneManager, open_video

    from vqa_cli.video import VideoError, frame_times

    detectors = _detectors(detector, threshold_for(detector, threshold))
    try:
        video = open_video(path, backend="opencv")
    except Exception as exc:  # PySceneDetect's own errors for unreadable files
        raise VideoError(f"cannot detect scenes in {path!r}: {exc}") from None
    manager = SceneManager()
    for d in detectors:
        manager.add_detector(d)
    decoded = manager.detect_scenes(video=video)
    scenes = manager.get_scene_list(start_in_scene=True)
    seconds = {start.frame_num: start.seconds for start, _ in scenes[1:]}
    end = scenes[-1][1].seconds if scenes else video.duration.seconds
    # PySceneDetect counts the frames it decoded for the end, but times a scene's start from OpenCV's position
    # (its pts on the nominal frame grid): with a variable frame rate (a screen recording holding a frame for
    # seconds) the end falls before the cuts. The frames' own timestamps instead, when the packets count the
    # frames it decoded: each cut the frame whose pts is nearest, the end the timeline's.
    measured = frame_times(path)
    if measured is not None and len(measured[0]) == decoded:
        seconds = {frame: nearest_time(measured[0], t) for frame, t in seconds.items()}
        end = measured[1]
    cuts = [seconds[frame] for frame in collapse_runs(list(seconds))]
    return cuts, float(end), int(decoded)
