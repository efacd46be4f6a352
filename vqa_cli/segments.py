"""A video in time: ``--segments none|scenes|fixed:SECONDS`` as windows ``[start, end)`` in seconds.

Everything here is pure (cut lists -> windows, short windows merged, fixed windows) except
``detect_cuts``, the one call of PySceneDetect (its content detector over OpenCV, imported there so
that ``vqa --help`` loads neither). Window bounds use the decoder's 3-decimal timestamps
(``video._sampling.round_ts``), so a frame shown at a cut belongs to the segment that starts there,
exactly as ``video.sample_frames`` windows ``start <= t < end``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vqa_cli.errors import UsageError

DEFAULT_SCENE_THRESHOLD = 27.0  # PySceneDetect's ContentDetector default
DEFAULT_MIN_SCENE = 0.0  # seconds; 0 keeps every scene PySceneDetect reports


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
        return self.end - self.start


def parse_spec(text: str | None) -> SegmentSpec:
    """``none``, ``scenes`` or ``fixed:SECONDS`` (SECONDS > 0); anything else is a ``UsageError``."""
    value = (text or "none").strip().lower()
    if value in ("none", "scenes"):
        return SegmentSpec(value)
    if value.startswith("fixed:"):
        try:
            seconds = float(value.removeprefix("fixed:"))
        except ValueError:
            seconds = 0.0
        if seconds > 0 and seconds != float("inf"):
            return SegmentSpec("fixed", seconds)
    raise UsageError(f"--segments takes none, scenes or fixed:SECONDS (SECONDS > 0), not {text!r}")


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


def detect_cuts(path: str, threshold: float = DEFAULT_SCENE_THRESHOLD) -> tuple[list[float], float, int]:
    """PySceneDetect's content detector over ``path`` (OpenCV backend): the times where a new scene starts
    (each the first frame's presentation time of its scene), the video's duration and the frames decoded.

    Short scenes are merged afterwards by ``merge_short`` (in seconds), so the detector's own minimum is one frame.
    """
    from scenedetect import ContentDetector, SceneManager, open_video

    from vqa_cli.video import VideoError

    try:
        video = open_video(path, backend="opencv")
    except Exception as exc:  # PySceneDetect's own errors for unreadable files
        raise VideoError(f"cannot detect scenes in {path!r}: {exc}") from None
    manager = SceneManager()
    manager.add_detector(ContentDetector(threshold=threshold, min_scene_len=1))
    decoded = manager.detect_scenes(video=video)
    scenes = manager.get_scene_list(start_in_scene=True)
    cuts = [start.seconds for start, _ in scenes[1:]]
    end = scenes[-1][1].seconds if scenes else video.duration.seconds
    return cuts, float(end), int(decoded)
