"""Frame sampling with OpenCV: a video (or image) file -> sampled RGB frames with timestamps.

Container headers are not trusted: the frame count and frame rate that a file
claims are often wrong, so the file is decoded sequentially to the end and the
real frame count and each frame's own presentation timestamp are recorded.
Only the frames that are kept are converted and held in memory.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import time
from dataclasses import dataclass

# FFmpeg prints demuxer errors ("moov atom not found", ...) straight to stderr;
# they would clutter the CLI output and every failure is reported through
# VideoError anyway.  OpenCV reads this variable when it first uses FFmpeg, and
# an explicit setting by the user wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "VideoError",
    "is_image_path",
    "probe",
    "read_image",
    "sample_frames",
    "uniform_indices",
]

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp4",
        ".mkv",
        ".avi",
        ".mov",
        ".webm",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".flv",
        ".3gp",
        ".ogv",
        ".wmv",
        ".ts",
    }
)
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# Frame rates outside this range in a header are treated as nonsense.
_MAX_PLAUSIBLE_FPS = 1000.0
# Used only when a video has a single frame (nothing to measure) and its header
# frame rate is implausible.
_FALLBACK_FPS = 25.0


class VideoError(Exception):
    """A video or image cannot be used; ``str(e)`` is one line meant for users."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class Clip:
    """Frames sampled from one video (or one image) plus what was learnt about the file."""

    path: str  # as given
    frames: np.ndarray  # [N, H, W, 3] uint8 RGB, C-contiguous
    indices: list[int]  # real decoded frame index of each kept frame (0-based, decode order)
    timestamps: list[float]  # seconds, each frame's own presentation time, 3 decimals
    duration: float  # last frame's timestamp + one frame interval (0.0 for images)
    fps: float  # measured from the timestamps (median interval); 0.0 for images
    total_frames: int  # real number of decodable frames (1 for images)
    is_image: bool
    header_frames: int  # what CAP_PROP_FRAME_COUNT claimed
    header_fps: float  # what CAP_PROP_FPS claimed


# --------------------------------------------------------------------------- helpers


def _quote(path: str) -> str:
    """Quote a path for a one-line message."""
    text = str(path)
    return f"'{text}'" if text.isprintable() else repr(text)


def _fmt_seconds(value: float) -> str:
    return f"{value:g}s"


def _check_file(path: str) -> str:
    """Return the filesystem path, or raise VideoError for a missing/unreadable/empty file."""
    fs_path = os.fspath(path)
    if not os.path.exists(fs_path):
        raise VideoError(f"no such file: {_quote(path)}")
    if os.path.isdir(fs_path):
        raise VideoError(f"{_quote(path)} is a directory, not a video or image file")
    if not os.access(fs_path, os.R_OK):
        raise VideoError(f"cannot read {_quote(path)}: permission denied")
    try:
        size = os.path.getsize(fs_path)
    except OSError as exc:
        raise VideoError(f"cannot read {_quote(path)}: {exc.strerror or exc}") from None
    if size == 0:
        raise VideoError(f"cannot decode {_quote(path)}: the file is empty")
    return fs_path


def _undecodable(path: str) -> VideoError:
    return VideoError(f"cannot decode {_quote(path)}: not a video file or unsupported codec")


def _plausible_fps(fps: float) -> bool:
    return math.isfinite(fps) and 0.0 < fps <= _MAX_PLAUSIBLE_FPS


def _header_int(value: float) -> int:
    if not math.isfinite(value) or value <= 0:
        return 0
    return int(round(value))


def _header_float(value: float) -> float:
    return float(value) if math.isfinite(value) and value > 0 else 0.0


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    """A decoded OpenCV frame (BGR, BGRA or gray; any depth) -> HxWx3 uint8 RGB."""
    if frame.dtype != np.uint8:
        if frame.dtype == np.uint16:
            frame = (frame >> 8).astype(np.uint8)
        else:
            frame = cv2.convertScaleAbs(frame)
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _stack(frames: list[np.ndarray]) -> np.ndarray:
    """Stack frames into one C-contiguous array, resizing odd-sized ones to the first's size."""
    height, width = frames[0].shape[:2]
    same = [
        f if f.shape[:2] == (height, width) else cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA)
        for f in frames
    ]
    return np.ascontiguousarray(np.stack(same, axis=0))


def _open_capture(path: str, fs_path: str) -> cv2.VideoCapture:
    """Open a capture with the FFmpeg backend (auto-rotation on); VideoError if it cannot."""
    backend = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    # OpenCV logs a warning for every file it cannot open; the VideoError says it better.
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        cap = cv2.VideoCapture(fs_path, backend)
    except cv2.error:
        raise _undecodable(path) from None
    finally:
        cv2.utils.logging.setLogLevel(previous)
    if not cap.isOpened():
        cap.release()
        raise _undecodable(path)
    # Phone videos carry a rotation in their metadata; apply it so frames come out upright.
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return cap


class _Deadline:
    def __init__(self, path: str, timeout: float | None) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self._path = path
        self._timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def check(self) -> None:
        if self._end is not None and time.monotonic() > self._end:
            raise VideoError(f"decoding {_quote(self._path)} took longer than {self._timeout:g} s")


def _repair_timestamps(raw_ms: list[float], header_fps: float) -> tuple[list[float], float]:
    """Raw CAP_PROP_POS_MSEC values -> (increasing timestamps in seconds, frame interval).

    The interval is the median of the positive gaps.  Timestamps that do not
    increase (broken or missing pts) are replaced by the previous one plus the
    interval; a negative start is shifted to 0.
    """
    ts = [t / 1000.0 if math.isfinite(t) else 0.0 for t in raw_ms]
    gaps = [b - a for a, b in itertools.pairwise(ts) if b > a]
    if gaps:
        interval = statistics.median(gaps)
    elif _plausible_fps(header_fps):
        interval = 1.0 / header_fps
    else:
        interval = 1.0 / _FALLBACK_FPS
    if ts and ts[0] < 0:
        shift = -ts[0]
        ts = [t + shift for t in ts]
    for i in range(1, len(ts)):
        if not ts[i] > ts[i - 1]:
            ts[i] = ts[i - 1] + interval
    return ts, interval


def _round_ts(value: float) -> float:
    return round(value, 3) + 0.0  # + 0.0 turns -0.0 into 0.0


def _window_targets(timestamps: list[float], num_frames: int, start: float, end: float) -> list[int]:
    """Indices (into the frame list) of ``num_frames`` frames uniform over start <= t < end."""
    candidates = [i for i, t in enumerate(timestamps) if start <= t < end]
    if not candidates:
        return []
    return [candidates[k] for k in uniform_indices(len(candidates), num_frames)]


# --------------------------------------------------------------------------- public API


def is_image_path(path: str) -> bool:
    """True when the path's extension is a still-image extension (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


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


def read_image(path: str) -> Clip:
    """Read one still image as a one-frame clip (EXIF orientation applied, unicode paths ok)."""
    fs_path = _check_file(path)
    try:
        data = np.fromfile(fs_path, dtype=np.uint8)
    except OSError as exc:
        raise VideoError(f"cannot read {_quote(path)}: {exc.strerror or exc}") from None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise VideoError(f"cannot decode {_quote(path)}: not an image file or unsupported format")
    rgb = np.ascontiguousarray(_to_rgb(image))
    return Clip(
        path=path,
        frames=rgb[np.newaxis],
        indices=[0],
        timestamps=[0.0],
        duration=0.0,
        fps=0.0,
        total_frames=1,
        is_image=True,
        header_frames=1,
        header_fps=0.0,
    )


def probe(path: str) -> None:
    """Fail fast (VideoError) when ``path`` is missing or yields no frame; decodes one frame at most."""
    fs_path = _check_file(path)
    if is_image_path(path):
        return
    cap = _open_capture(path, fs_path)
    try:
        if not cap.grab():
            raise _undecodable(path)
    finally:
        cap.release()


def sample_frames(
    path: str,
    num_frames: int,
    start: float | None = None,
    end: float | None = None,
    timeout: float | None = None,
) -> Clip:
    """Sample ``num_frames`` frames uniformly from a video (optionally within [start, end) s).

    The file is decoded sequentially (never seeking) to the end, so the real
    frame count, timestamps, duration and frame rate are known.  Targets are
    planned from the header frame count; if the real count turns out different
    the targets are recomputed and, if needed, a second sequential pass fetches
    the missing ones.  Fewer frames than asked are returned when the video (or
    window) has fewer.  Image paths are read as one-frame clips (the window is
    ignored).  ``timeout`` (seconds) bounds the whole decode; it is checked
    between frames.

    Raises VideoError (one-line message) for unusable files, bad windows and timeouts;
    ValueError for a non-positive ``num_frames`` or ``timeout``.
    """
    if num_frames <= 0:
        raise ValueError(f"number of frames must be positive, got {num_frames}")
    for name, value in (("start", start), ("end", end)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise VideoError(f"{name} time must be a non-negative number of seconds, got {value!r}")
    if start is not None and end is not None and start >= end:
        raise VideoError(
            f"empty time window: start ({_fmt_seconds(start)}) must be before end ({_fmt_seconds(end)})"
        )
    if is_image_path(path):
        return read_image(path)

    fs_path = _check_file(path)
    deadline = _Deadline(path, timeout)
    lo = 0.0 if start is None else float(start)
    hi = math.inf if end is None else float(end)

    # ---- pass 1: decode everything, retrieve the planned targets
    cap = _open_capture(path, fs_path)
    kept: dict[int, np.ndarray] = {}
    raw_ms: list[float] = []
    try:
        header_frames = _header_int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        header_fps = _header_float(cap.get(cv2.CAP_PROP_FPS))
        planned: set[int] = set()
        if header_frames > 0:
            if start is None and end is None:
                planned = set(uniform_indices(header_frames, num_frames))
            elif _plausible_fps(header_fps):
                # Guess the window's frames from the header rate; pass 2 fixes a wrong guess.
                first = min(header_frames, math.ceil(lo * header_fps))
                stop = header_frames if end is None else min(header_frames, math.ceil(hi * header_fps))
                if stop > first:
                    planned = {first + k for k in uniform_indices(stop - first, num_frames)}
        index = 0
        while True:
            deadline.check()
            if not cap.grab():
                break
            raw_ms.append(cap.get(cv2.CAP_PROP_POS_MSEC))
            if index in planned:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    kept[index] = _to_rgb(frame)
            index += 1
    finally:
        cap.release()

    total = len(raw_ms)
    if total == 0:
        raise _undecodable(path)

    seconds, interval = _repair_timestamps(raw_ms, header_fps)
    timestamps = [_round_ts(t) for t in seconds]
    duration = _round_ts(seconds[-1] + interval)
    fps = round(1.0 / interval, 3)

    if lo >= duration:
        raise VideoError(
            f"start {_fmt_seconds(lo)} is past the end of {_quote(path)} (duration {_fmt_seconds(duration)})"
        )
    targets = _window_targets(timestamps, num_frames, lo, hi)
    if not targets:
        shown_end = _fmt_seconds(min(hi, duration))
        raise VideoError(f"no frames of {_quote(path)} between {_fmt_seconds(lo)} and {shown_end}")
    wanted = set(targets)
    for index in list(kept):
        if index not in wanted:
            del kept[index]

    # ---- pass 2 (only when the header lied): fetch the targets pass 1 did not retrieve
    missing = sorted(wanted.difference(kept))
    if missing:
        _second_pass(path, fs_path, set(missing), kept, deadline)

    frames = _stack([kept[i] for i in targets])
    return Clip(
        path=path,
        frames=frames,
        indices=list(targets),
        timestamps=[timestamps[i] for i in targets],
        duration=duration,
        fps=fps,
        total_frames=total,
        is_image=False,
        header_frames=header_frames,
        header_fps=header_fps,
    )


def _second_pass(
    path: str, fs_path: str, missing: set[int], kept: dict[int, np.ndarray], deadline: _Deadline
) -> None:
    """Decode sequentially again and retrieve exactly the ``missing`` frame indices into ``kept``."""
    last = max(missing)
    cap = _open_capture(path, fs_path)
    try:
        index = 0
        while index <= last:
            deadline.check()
            if not cap.grab():
                break
            if index in missing:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    kept[index] = _to_rgb(frame)
            index += 1
    finally:
        cap.release()
    lost = missing.difference(kept)
    if lost:
        raise VideoError(
            f"cannot decode {_quote(path)}: frame {min(lost)} could not be read "
            "(the file decodes inconsistently)"
        )
