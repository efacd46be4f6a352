"""Frame sampling with OpenCV: a video (or image) file -> sampled RGB frames with timestamps.

Container headers are not trusted: the frame count and frame rate a file claims
are often wrong.  Instead the file is first read in OpenCV's demuxer-only mode
(``CAP_PROP_FORMAT=-1``), which costs no decoding: every video packet's own
presentation time and keyframe flag become a *packet index* (frame i is the
packet with the i-th smallest presentation time).  With that index:

* ``seek="exact"`` decodes as little as possible and still returns exactly the
  frames a full sequential decode gives at the requested indices.  Targets are
  grouped into runs: inside a run the decoder grabs forward (``grab()`` without
  colour conversion; only kept frames are ``retrieve()``-d), a new run starts
  with a seek when the next target lies further away than a seek costs.  The
  FFmpeg backend's seek lands on the keyframe at least 16 frames before the
  requested one and decodes forward from there, which the planner models.  Every
  grabbed frame is identified by its own timestamp (``CAP_PROP_POS_MSEC``) and
  checked against the index, also right after a seek.  Runs are spread over
  several captures in threads when the machine has cores to spare.
* ``seek="keyframe"`` snaps each target to its nearest keyframe and decodes only
  that keyframe: the packet is read in demuxer-only mode (a demuxer-only seek
  lands exactly on a keyframe) and decoded on its own by a fresh in-memory
  capture, which is verified once per file to give the same pixels as the
  sequential decoder.
* ``seek="auto"`` uses keyframe seeking when exact decoding would decode more
  than ``AUTO_KEYFRAME_ABOVE`` frames and every target has a keyframe of its own.

The index is trusted only after a cheap end check: seeking to the index's last
frame must decode it and nothing may follow it.  Whenever the decoder disagrees
with the index (damaged or truncated files, timestamps that repeat or jump back,
streams that do not start with a keyframe), a counting pass decodes the whole
file sequentially instead, skipping and reporting undecodable packets.
"""

from __future__ import annotations

import bisect
import io
import itertools
import math
import os
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

# FFmpeg prints demuxer errors ("moov atom not found", ...) straight to stderr;
# they would clutter the CLI output and every failure is reported through
# VideoError anyway.  OpenCV reads this variable when it first uses FFmpeg, and
# an explicit setting by the user wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    "AUTO_KEYFRAME_ABOVE",
    "IMAGE_EXTENSIONS",
    "SEEK_MODES",
    "VIDEO_EXTENSIONS",
    "Clip",
    "SeekMode",
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

SeekMode = Literal["exact", "keyframe", "auto"]
SEEK_MODES: tuple[str, ...] = ("exact", "keyframe", "auto")

# seek="auto" switches to keyframe seeking when exact decoding would decode more
# frames than this (about 4 s of 1080p H.264 on two cores) and every target has
# a keyframe of its own.
AUTO_KEYFRAME_ABOVE = 1000

# Frame rates outside this range in a header are treated as nonsense.
_MAX_PLAUSIBLE_FPS = 1000.0
# Used only when a video has a single frame (nothing to measure) and its header
# frame rate is implausible.
_FALLBACK_FPS = 25.0

# OpenCV's FFmpeg backend seeks to the keyframe at or before (requested frame - 16)
# and decodes forward from there (cap_ffmpeg_impl.hpp, CvCapture_FFMPEG::seek).
_SEEK_LEAD = 16
# Fixed price of a seek (flush, decoder restart), in decoded frames.
_SEEK_COST = 2
# Overshooting seeks are retried from an earlier keyframe this often before a
# capture restarts from the first frame.
_SEEK_RETRIES = 2
# A packet's presentation rank may differ from its decode position by at most
# this much (B-frame reordering); more means broken or restarting timestamps.
_MAX_REORDER = 64
# Two timestamps (ms) closer than this are the same frame.
_MS_TOLERANCE = 1e-3
# Consecutive failed grabs tolerated in a counting pass (damaged packets) before
# the end of the file is assumed.
_MAX_FAILED_GRABS = 32
# Below this many planned decodes one capture does all the work.
_PARALLEL_MIN_DECODES = 240
# At most this many captures decode one file in parallel (None: one per core).
_MAX_WORKERS: int | None = None
# Raw header frame counts above this are not used to plan a counting pass.
_MAX_PLANNED_FRAMES = 10_000_000

# Keyframe packets decoded per in-memory capture (each batch also decodes frame 0 again).
_PACKET_BATCH = 32
# A demuxer-only capture reads at most this many packets from the start to find one.
_RAW_RESCAN_LIMIT = 20_000

_FRAME_TYPE_I = float(ord("I"))
_START_CODES = (b"\x00\x00\x01", b"\x00\x00\x00\x01")
_open_lock = threading.Lock()


class VideoError(Exception):
    """A video or image cannot be used; ``str(e)`` is one line meant for users."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class Clip:
    """Frames sampled from one video (or one image) plus what was learnt about the file."""

    path: str  # as given
    frames: np.ndarray  # [N, H, W, 3] uint8 RGB, C-contiguous
    indices: list[int]  # real decoded frame index of each kept frame (0-based, presentation order)
    timestamps: list[float]  # seconds, each frame's own presentation time, 3 decimals
    duration: float  # last frame's timestamp + one frame interval (0.0 for images)
    fps: float  # measured from the timestamps (median interval); 0.0 for images
    total_frames: int  # real number of decodable frames (1 for images)
    is_image: bool
    header_frames: int  # what CAP_PROP_FRAME_COUNT claimed
    header_fps: float  # what CAP_PROP_FPS claimed
    seek: str = "exact"  # how the frames were found: "exact" or "keyframe" (what "auto" chose)
    decoded: int = 0  # frames the decoder produced for this call (seek lead-ins estimated)
    damaged: int = 0  # undecodable packets that were skipped
    warnings: list[str] = field(default_factory=list)  # one-line notes for users


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


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextmanager
def _quiet_opening() -> Iterator[None]:
    """Silence OpenCV's log while a capture opens (it warns about every file it cannot open)."""
    with _open_lock:
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            yield
        finally:
            cv2.utils.logging.setLogLevel(previous)


def _open_capture(path: str, fs_path: str, threads: int = 0) -> cv2.VideoCapture:
    """Open a decoding capture with the FFmpeg backend (auto-rotation on); VideoError if it cannot.

    ``threads`` > 0 sets the FFmpeg decoder's thread count; 0 keeps OpenCV's
    default (one per core, at most 16).
    """
    backend = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    params = [cv2.CAP_PROP_N_THREADS, threads] if threads > 0 and backend == cv2.CAP_FFMPEG else []
    with _quiet_opening():
        try:
            cap = cv2.VideoCapture(fs_path, backend, params)
        except cv2.error:
            raise _undecodable(path) from None
    if not cap.isOpened():
        cap.release()
        raise _undecodable(path)
    # Phone videos carry a rotation in their metadata; apply it so frames come out upright.
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return cap


def _open_raw(fs_path: str) -> cv2.VideoCapture | None:
    """A demuxer-only capture (packets, no decoding), or None when the backend cannot give one."""
    if not cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
        return None
    with _quiet_opening():
        try:
            cap = cv2.VideoCapture(fs_path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
        except cv2.error:
            return None
    if not cap.isOpened():
        cap.release()
        return None
    return cap


def _rotate(frame: np.ndarray, degrees: int) -> np.ndarray:
    """Apply a display rotation the way OpenCV's CAP_PROP_ORIENTATION_AUTO does."""
    if degrees == 90:
        return cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
    if degrees == 180:
        return cv2.rotate(frame, cv2.ROTATE_180)
    if degrees == 270:
        return cv2.rotate(frame, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return frame


class _Cancelled(Exception):
    """Another worker failed; this one stops."""


class _Mismatch(Exception):
    """The decoder disagrees with the packet index; the caller falls back to a counting pass."""


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


@dataclass(frozen=True)
class _Request:
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


@dataclass(frozen=True)
class _Timeline:
    """Real timestamps of every frame, as measured (index or counting pass)."""

    timestamps: list[float]  # rounded seconds
    duration: float
    fps: float

    @classmethod
    def from_ms(cls, raw_ms: list[float], header_fps: float) -> _Timeline:
        seconds, interval = _repair_timestamps(raw_ms, header_fps)
        return cls(
            timestamps=[_round_ts(t) for t in seconds],
            duration=_round_ts(seconds[-1] + interval),
            fps=round(1.0 / interval, 3),
        )

    def targets(self, request: _Request, path: str) -> list[int]:
        """The frame indices to return; VideoError for a window outside the video."""
        if request.lo >= self.duration:
            raise VideoError(
                f"start {_fmt_seconds(request.lo)} is past the end of {_quote(path)} "
                f"(duration {_fmt_seconds(self.duration)})"
            )
        targets = _window_targets(self.timestamps, request.count(self.duration), request.lo, request.hi)
        if not targets:
            shown_end = _fmt_seconds(min(request.hi, self.duration))
            raise VideoError(f"no frames of {_quote(path)} between {_fmt_seconds(request.lo)} and {shown_end}")
        return targets


# --------------------------------------------------------------------------- packet index


@dataclass
class _Index:
    """Every video packet of a file, from a demuxer-only pass, in presentation order."""

    ms: list[float]  # presentation time of frame i (ms, as CAP_PROP_POS_MSEC reports it), increasing
    keys: list[int]  # frame indices whose packet is a keyframe, increasing, starting at 0
    dpos: list[int]  # decode position (packet order in the file) of frame i
    header_frames: int
    header_fps: float
    rotation: int
    extradata: bytes  # prepended to packets decoded on their own (start-code codecs only)
    codec: str  # "h264", "hevc" or the FOURCC in lower case
    _rank: dict[float, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._rank = {m: i for i, m in enumerate(self.ms)}

    @property
    def n(self) -> int:
        return len(self.ms)

    def rank(self, ms: float) -> int | None:
        """The frame index with this timestamp, or None."""
        found = self._rank.get(ms)
        if found is not None:
            return found
        i = bisect.bisect_left(self.ms, ms - _MS_TOLERANCE)
        if i < len(self.ms) and abs(self.ms[i] - ms) <= _MS_TOLERANCE:
            return i
        return None

    def key_at_or_before(self, i: int) -> int:
        return self.keys[max(bisect.bisect_right(self.keys, i) - 1, 0)]

    def landing(self, target: int) -> int:
        """The keyframe a decoding capture's seek to ``target`` starts decoding from."""
        return self.key_at_or_before(target - _SEEK_LEAD)


def _scan_index(fs_path: str, deadline: _Deadline) -> _Index | None:
    """Read every video packet without decoding; None when the packets cannot serve as an index."""
    cap = _open_raw(fs_path)
    if cap is None:
        return None
    ms: list[float] = []
    keys: list[bool] = []
    try:
        header_frames = _header_int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        header_fps = _header_float(cap.get(cv2.CAP_PROP_FPS))
        rotation = int(cap.get(cv2.CAP_PROP_ORIENTATION_META)) % 360
        codec = _codec_name(cap.get(cv2.CAP_PROP_FOURCC))
        extradata = b""
        extra_index = int(cap.get(cv2.CAP_PROP_CODEC_EXTRADATA_INDEX))
        if extra_index:
            ok, extra = cap.retrieve(flag=extra_index)
            if ok and extra is not None:
                extradata = extra.tobytes()
        get = cap.get
        while cap.grab():
            ms.append(get(cv2.CAP_PROP_POS_MSEC))
            keys.append(get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME) != 0)
            if len(ms) % 512 == 0:
                deadline.check()
    except cv2.error:
        return None
    finally:
        cap.release()
    if not ms or not all(math.isfinite(m) for m in ms):
        return None
    order = sorted(range(len(ms)), key=ms.__getitem__)
    sorted_ms = [ms[d] for d in order]
    if any(not b - a > _MS_TOLERANCE for a, b in itertools.pairwise(sorted_ms)):
        return None  # repeated timestamps: restarts, missing pts
    if any(abs(rank - d) > _MAX_REORDER for rank, d in enumerate(order)):
        return None  # more than B-frame reordering: timestamps jump back
    key_ranks = [rank for rank, d in enumerate(order) if keys[d]]
    if not key_ranks or key_ranks[0] != 0:
        return None  # frames before the first keyframe may not decode at all
    return _Index(
        ms=sorted_ms,
        keys=key_ranks,
        dpos=order,
        header_frames=header_frames,
        header_fps=header_fps,
        rotation=rotation if rotation in (90, 180, 270) else 0,
        extradata=extradata if extradata.startswith(_START_CODES) else b"",
        codec=codec,
    )


def _codec_name(fourcc: float) -> str:
    """CAP_PROP_FOURCC (a codec tag, or FFmpeg's codec name when the container has no tag) -> a name."""
    try:
        tag = int(fourcc).to_bytes(4, "little").decode("latin-1").strip("\x00 ").lower()
    except (OverflowError, ValueError):
        return ""
    if tag in ("avc1", "avc3", "h264", "x264", "davc"):
        return "h264"
    if tag in ("hev1", "hvc1", "hevc", "h265", "x265"):
        return "hevc"
    return tag


# --------------------------------------------------------------------------- exact decoding


@dataclass
class _Run:
    """Targets one capture reaches by grabbing forward, after a seek (``land`` set) or from the first frame."""

    targets: list[int]
    land: int | None  # keyframe the seek is expected to land on; None: continue from frame 0
    eof: bool = False  # check that nothing follows the last target

    @property
    def cost(self) -> int:
        if self.land is None:
            return self.targets[-1]
        return self.targets[-1] - self.land + 1 + _SEEK_COST


def _plan_runs(index: _Index, targets: list[int], eof: bool) -> list[_Run]:
    """Group targets so that the fewest frames are decoded (modelling OpenCV's seek lead-in)."""
    points = sorted(set(targets) | ({index.n - 1} if eof else set()))
    runs: list[_Run] = []
    previous = 0  # a capture decodes frame 0 when it opens
    for t in points:
        land = index.landing(t)
        if t - previous <= t - land + 1 + _SEEK_COST:
            if runs:
                runs[-1].targets.append(t)
            else:
                runs.append(_Run([t], None))
        else:
            runs.append(_Run([t], land))
        previous = t
    if runs and eof:
        runs[-1].eof = True
    return runs


def _split_runs(runs: list[_Run], parts: int) -> list[list[_Run]]:
    """Cut the runs into ``parts`` consecutive groups of about equal decoding cost."""
    parts = max(1, min(parts, len(runs)))
    total = sum(r.cost for r in runs)
    groups: list[list[_Run]] = [[]]
    done = 0
    for run in runs:
        share = total * len(groups) / parts
        if groups[-1] and len(groups) < parts and done + run.cost / 2 > share:
            groups.append([])
        groups[-1].append(run)
        done += run.cost
    return groups


@dataclass
class _Job:
    """State shared by the captures decoding one file."""

    path: str
    fs_path: str
    index: _Index
    wanted: set[int]
    deadline: _Deadline
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.stop.is_set():
            raise _Cancelled
        self.deadline.check()


class _Walker:
    """One decoding capture that walks through runs, checking every frame against the index."""

    def __init__(self, job: _Job, threads: int = 0, keep_first: bool = False) -> None:
        self.job = job
        self.threads = threads
        self.keep_first = keep_first
        self.first: np.ndarray | None = None  # frame 0 (RGB) when keep_first
        self.cap: cv2.VideoCapture | None = None
        self.pos = -1
        self.first_unit = 0
        self.decoded = 0

    def open(self) -> None:
        job = self.job
        self.cap = _open_capture(job.path, job.fs_path, self.threads)
        if not self.cap.grab():
            raise _Mismatch("no first frame")
        self.decoded += 1
        ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        # The backend reports a frame with pts 0 by its dts; accept that for the first frame.
        if job.index.rank(ms) not in (None, 0):
            raise _Mismatch("the first frame is not the first packet")
        self.first_unit = _cv_unit(job.index.header_fps, ms)
        self.pos = 0
        if self.keep_first or 0 in job.wanted:
            frame = self._retrieve()
            if self.keep_first:
                self.first = frame
            if 0 in job.wanted:
                job.frames[0] = frame

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def walk(self, runs: list[_Run]) -> None:
        for run in runs:
            if run.land is not None:
                self._seek(run.targets[0], run.land)
            for t in run.targets:
                self._advance(t)
            if run.eof:
                self.job.check()
                assert self.cap is not None
                if self.cap.grab():
                    raise _Mismatch("the file has more frames than packets")

    def _retrieve(self) -> np.ndarray:
        assert self.cap is not None
        ok, frame = self.cap.retrieve()
        if not ok or frame is None:
            raise _Mismatch("a grabbed frame cannot be retrieved")
        return _to_rgb(frame)

    def _next(self) -> int:
        """Grab the next frame and return its index."""
        self.job.check()
        assert self.cap is not None
        if not self.cap.grab():
            raise _Mismatch("the decoder stopped before the index did")
        self.decoded += 1
        rank = self.job.index.rank(self.cap.get(cv2.CAP_PROP_POS_MSEC))
        if rank is None:
            raise _Mismatch("a decoded frame has a timestamp no packet has")
        return rank

    def _seek(self, target: int, land: int) -> None:
        index = self.job.index
        assert self.cap is not None
        for _ in range(_SEEK_RETRIES + 1):
            # OpenCV counts frames as round(fps * pts) from the first frame and, after landing
            # on a keyframe, grabs one frame per unit; asking for land + (target - land) units
            # stops right before the target even when the header frame rate is wrong.
            request = _cv_unit(index.header_fps, index.ms[land]) - self.first_unit + (target - land)
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, max(request, 0))
            found = self._next()
            self.decoded += max(0, found - land)  # decoded inside the seek (estimated)
            if found <= target:
                self.pos = found
                if found in self.job.wanted and found not in self.job.frames:
                    self.job.frames[found] = self._retrieve()
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
                raise _Mismatch("decoded frames skip or repeat a packet")
            self.pos = found
            if found in self.job.wanted and found not in self.job.frames:
                self.job.frames[found] = self._retrieve()
        if self.pos != target:
            raise _Mismatch("walked past a target")


def _cv_unit(fps: float, ms: float) -> int:
    """OpenCV's frame number for a timestamp: (int64)(fps * seconds + 0.5)."""
    if not _plausible_fps(fps):
        return 0
    return int(fps * ms / 1000.0 + 0.5)


def _worker_count(runs: list[_Run]) -> int:
    if len(runs) < 2 or sum(r.cost for r in runs) < _PARALLEL_MIN_DECODES:
        return 1
    limit = _cpu_count() if _MAX_WORKERS is None else _MAX_WORKERS
    return max(1, min(limit, len(runs)))


def _walk_parallel(job: _Job, groups: list[list[_Run]], walkers: list[_Walker]) -> None:
    """Each walker takes one group of runs in its own thread; the first failure stops the rest."""

    def work(walker: _Walker, runs: list[_Run]) -> None:
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
    real = [e for e in errors if e is not None and not isinstance(e, _Cancelled)]
    if real:
        raise real[0]


def _decode_exact(job: _Job, targets: list[int], eof: bool) -> int:
    """Decode ``job.wanted`` frames (exactly) plus the end check; returns frames decoded."""
    runs = _plan_runs(job.index, targets, eof)
    workers = _worker_count(runs)
    groups = _split_runs(runs, workers)
    threads = 0 if len(groups) == 1 else max(1, _cpu_count() // len(groups))
    walkers = [_Walker(job, threads) for _ in groups]
    _walk_parallel(job, groups, walkers)
    return sum(w.decoded for w in walkers)


# --------------------------------------------------------------------------- keyframe decoding


def _nal_types(packet: bytes, codec: str) -> set[int]:
    """NAL unit types in an Annex B packet (H.264: 5 bits, HEVC: 6 bits after the forbidden bit)."""
    types = set()
    at = packet.find(b"\x00\x00\x01")
    while at >= 0 and at + 3 < len(packet):
        header = packet[at + 3]
        types.add(header & 0x1F if codec == "h264" else (header >> 1) & 0x3F)
        at = packet.find(b"\x00\x00\x01", at + 3)
    return types


def _self_contained(packet: bytes, codec: str) -> bool:
    """False for keyframe packets that may not decode without earlier packets.

    H.264 keyframes must carry an IDR slice (open-GOP I-frames marked as
    keyframes may not be output on their own); HEVC ones an IRAP picture.
    Other codecs are checked after decoding (frame type and frame count).
    """
    if codec == "h264":
        return 5 in _nal_types(packet, codec)
    if codec == "hevc":
        return any(16 <= t <= 23 for t in _nal_types(packet, codec))
    return True


class _Packets:
    """Keyframes decoded from their packets alone, without decoding the frames between them.

    Packets come from a demuxer-only capture (its seeks land on keyframes).  A
    batch of keyframe packets is decoded by one in-memory capture, always behind
    the file's first packet: decoders take state from the start of a stream
    (FFmpeg reads x264's version from the first packet's SEI and works around
    that encoder's bugs), and frame 0 doubles as the check that the batch
    decodes to the same pixels as the file does.
    """

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.raw: cv2.VideoCapture | None = None
        self.at = -1  # decode position of the packet the raw capture read last
        self.decoded = 0

    def close(self) -> None:
        if self.raw is not None:
            self.raw.release()
            self.raw = None

    def decode(self, keys: list[int], reference: np.ndarray) -> tuple[dict[int, np.ndarray], bool]:
        """Decode keyframes ``keys``; returns (frames found, whether frame 0 matched ``reference``).

        Keyframes whose packets cannot be fetched or do not decode cleanly are
        left out of the result.
        """
        index = self.job.index
        first = self._packet(0)
        if first is None:
            return {}, False
        packets = {}
        for k in keys:
            data = first if k == 0 else self._packet(k)
            if data is not None and _self_contained(data, index.codec):
                packets[k] = data
        frames: dict[int, np.ndarray] = {}
        matched = False
        order = list(packets)
        for batch in [order[i : i + _PACKET_BATCH] for i in range(0, len(order), _PACKET_BATCH)] or [[]]:
            self.job.check()
            decoded = self._decode_batch(first, [packets[k] for k in batch])
            if decoded is None:
                continue  # these keyframes stay missing
            head, rest = decoded
            if not np.array_equal(head, reference):
                return {}, False
            matched = True
            frames.update(zip(batch, rest, strict=True))
        return frames, matched

    def _decode_batch(self, first: bytes, packets: list[bytes]) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """Decode ``first`` + ``packets`` in one in-memory stream: (frame 0, the others) as RGB, or None."""
        index = self.job.index
        # The capture reads from the stream without owning it: keep it alive until release().
        stream = io.BytesIO(index.extradata + first + b"".join(packets))
        with _quiet_opening():
            try:
                cap = cv2.VideoCapture(stream, cv2.CAP_FFMPEG, [])
            except cv2.error:
                return None
        try:
            if not cap.isOpened():
                return None
            frames = []
            while len(frames) < len(packets) + 1:
                ok, frame = cap.read()
                if not ok or frame is None or cap.get(cv2.CAP_PROP_FRAME_TYPE) != _FRAME_TYPE_I:
                    return None
                self.decoded += 1
                frames.append(_to_rgb(_rotate(frame, index.rotation)))
            if cap.grab():
                return None  # the packets were split into more frames than they are
            return frames[0], frames[1:]
        except cv2.error:
            return None
        finally:
            cap.release()
            stream.close()

    def _packet(self, rank: int) -> bytes | None:
        """The packet of keyframe ``rank`` (demuxer output, Annex B for H.264/HEVC), or None."""
        index = self.job.index
        target = index.dpos[rank]
        earlier = index.key_at_or_before(rank - 1) if rank > 0 else 0
        span = target - index.dpos[earlier] + 2 * _MAX_REORDER + _SEEK_LEAD
        if self.raw is None:
            self.raw = _open_raw(self.job.fs_path)
            self.at = -1
            if self.raw is None:
                return None
        # Read on when the packet is close ahead; else seek (a demuxer-only seek lands on the
        # keyframe at or before the time; MPEG-TS lands near it, hence the earlier keyframe);
        # else read from the start of the file.
        attempts: list[float | None] = [None] if 0 <= target - self.at <= span else []
        attempts += [index.ms[rank], index.ms[earlier], -1.0]
        for start in attempts:
            if start == -1.0:
                if target > _RAW_RESCAN_LIMIT:
                    break
                self.close()
                self.raw = _open_raw(self.job.fs_path)
                self.at = -1
                if self.raw is None:
                    return None
            elif start is not None:
                self.raw.set(cv2.CAP_PROP_POS_MSEC, start)
            data = self._scan_to(rank, target + 1 if start == -1.0 else span)
            if data is not None:
                return data
        return None

    def _scan_to(self, rank: int, limit: int) -> bytes | None:
        index = self.job.index
        raw = self.raw
        assert raw is not None
        for _ in range(limit):
            self.job.check()
            if not raw.grab():
                return None
            found = index.rank(raw.get(cv2.CAP_PROP_POS_MSEC))
            if found is None:
                return None
            self.at = index.dpos[found]
            if found == rank:
                if not raw.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME):
                    return None
                ok, packet = raw.retrieve()
                return packet.tobytes() if ok and packet is not None and packet.size else None
            if self.at > index.dpos[rank]:
                return None  # passed it
        return None


def _has_key_in(index: _Index, window: range) -> bool:
    i = bisect.bisect_left(index.keys, window.start)
    return i < len(index.keys) and index.keys[i] < window.stop


def _nearest_keys(index: _Index, targets: list[int], allowed: range) -> list[int]:
    """Each target's nearest keyframe inside ``allowed`` (ties go to the earlier one), in order."""
    keys = [k for k in index.keys[bisect.bisect_left(index.keys, allowed.start) :] if k < allowed.stop]
    chosen = []
    for t in targets:
        i = bisect.bisect_right(keys, t)
        candidates = keys[max(i - 1, 0) : i + 1]
        chosen.append(min(candidates, key=lambda k: (abs(k - t), k)))
    return chosen


def _decode_keyframes(job: _Job, keys: list[int]) -> tuple[int, int]:
    """Decode the keyframes ``keys`` from their packets, with the end check running beside them.

    Returns (frames decoded, keyframes that had to be decoded exactly).  When
    packet decoding does not work for this file at all, nothing is kept and the
    second value is -1: the caller decodes exactly.
    """
    index = job.index
    tail = _Walker(job, threads=1 if _cpu_count() > 1 else 0, keep_first=True)
    packets = _Packets(job)
    try:
        tail.open()
        assert tail.first is not None
        tail_runs = _plan_runs(index, [], eof=True)
        failure: BaseException | None = None
        frames: dict[int, np.ndarray] = {}
        works = False
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(_walk_parallel, job, [tail_runs], [tail])
            try:
                frames, works = packets.decode(keys, tail.first)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, once the end check has stopped
                failure = exc
            if failure is not None or not works:
                job.stop.set()
            tail_failure = future.exception()
        for exc in (failure, tail_failure):
            if exc is not None and not isinstance(exc, _Cancelled):
                raise exc
        decoded = tail.decoded + packets.decoded
        if not works:
            return decoded, -1
        job.frames.update(frames)
        missing = [k for k in keys if k not in job.frames]
        if missing:
            decoded += _decode_exact(job, missing, eof=False)
        return decoded, len(missing)
    finally:
        tail.close()
        packets.close()


# --------------------------------------------------------------------------- counting pass


def _decode_all(
    path: str, fs_path: str, planned: set[int], deadline: _Deadline, last: int | None = None
) -> tuple[list[float], dict[int, np.ndarray], int]:
    """Decode sequentially (grab only), retrieving the ``planned`` frame indices.

    Undecodable packets in the middle are skipped: a failed grab followed by a
    good one counts as damaged; ``_MAX_FAILED_GRABS`` failures in a row end the
    pass.  Returns (each frame's CAP_PROP_POS_MSEC, kept frames, damaged count).
    """
    cap = _open_capture(path, fs_path)
    raw_ms: list[float] = []
    kept: dict[int, np.ndarray] = {}
    damaged = 0
    failures = 0
    try:
        while last is None or len(raw_ms) <= last:
            deadline.check()
            if not cap.grab():
                failures += 1
                if failures > _MAX_FAILED_GRABS:
                    break
                continue
            damaged += failures
            failures = 0
            index = len(raw_ms)
            raw_ms.append(cap.get(cv2.CAP_PROP_POS_MSEC))
            if index in planned:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    kept[index] = _to_rgb(frame)
    finally:
        cap.release()
    return raw_ms, kept, damaged


def _planned_guess(index_ms: list[float] | None, header_frames: int, header_fps: float, request: _Request) -> set[int]:
    """Targets guessed before a counting pass, so that it usually retrieves them in one go."""
    if index_ms is not None:
        ms = index_ms
    elif 0 < header_frames <= _MAX_PLANNED_FRAMES and _plausible_fps(header_fps):
        ms = [i * 1000.0 / header_fps for i in range(header_frames)]
    else:
        return set()
    try:
        return set(_Timeline.from_ms(ms, header_fps).targets(request, ""))
    except VideoError:
        return set()


def _counting_pass(
    path: str, fs_path: str, request: _Request, deadline: _Deadline, guess: set[int], header_fps: float
) -> tuple[_Timeline, list[int], dict[int, np.ndarray], int, int]:
    """Decode everything; returns (timeline, targets, frames, frames decoded, damaged packets)."""
    raw_ms, kept, damaged = _decode_all(path, fs_path, guess, deadline)
    if not raw_ms:
        raise _undecodable(path)
    decoded = len(raw_ms)
    timeline = _Timeline.from_ms(raw_ms, header_fps)
    targets = timeline.targets(request, path)
    missing = set(targets).difference(kept)
    if missing:
        _, more, _ = _decode_all(path, fs_path, missing, deadline, last=max(missing))
        kept.update((i, more[i]) for i in missing if i in more)
        decoded += max(missing) + 1
        lost = missing.difference(kept)
        if lost:
            raise VideoError(
                f"cannot decode {_quote(path)}: frame {min(lost)} could not be read "
                "(the file decodes inconsistently)"
            )
    return timeline, targets, kept, decoded, damaged


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


def _validate(
    num_frames: int | None,
    fps: float | None,
    max_frames: int | None,
    seek: str,
    start: float | None,
    end: float | None,
) -> _Request:
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
            f"empty time window: start ({_fmt_seconds(start)}) must be before end ({_fmt_seconds(end)})"
        )
    return _Request(
        num_frames=None if num_frames is None else int(num_frames),
        fps=None if fps is None else float(fps),
        max_frames=None if max_frames is None else int(max_frames),
        lo=0.0 if start is None else float(start),
        hi=math.inf if end is None else float(end),
    )


def sample_frames(
    path: str,
    num_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
    timeout: float | None = None,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    seek: SeekMode = "exact",
) -> Clip:
    """Sample frames from a video (optionally within [start, end) seconds).

    Exactly one of ``num_frames`` (that many frames, uniform: the middle frame of
    each of ``num_frames`` equal segments of the window's frames) and ``fps``
    (``floor(window seconds * fps)`` frames, at least one, spread the same way)
    is required; ``max_frames`` caps either.  The window and the spreading use
    the real frame count and timestamps, never the header's.  Fewer frames than
    asked are returned when the video (or window) has fewer.  Image paths are
    read as one-frame clips (the window is ignored).

    ``seek`` chooses how the frames are reached:

    * ``"exact"`` (default): exactly the frames a full sequential decode gives at
      the uniform indices, decoding as little as possible.
    * ``"keyframe"``: each target snaps to its nearest keyframe inside the window
      and only that keyframe is decoded (about one decoded frame per returned
      frame), for very long videos.  Targets sharing a keyframe give one frame,
      so fewer frames than asked may come back; indices and timestamps are those
      of the frames returned.  Codecs whose keyframes cannot be decoded on their
      own fall back to exact decoding of those keyframes.
    * ``"auto"``: ``"keyframe"`` when exact decoding would decode more than
      ``AUTO_KEYFRAME_ABOVE`` frames, every target has its own keyframe and the
      file's keyframes decode on their own; ``"exact"`` otherwise.

    ``clip.seek`` says which was used.  ``timeout`` (seconds) bounds the whole
    call; it is checked between frames.

    Raises VideoError (one-line message) for unusable files, bad windows and
    timeouts; ValueError for bad ``num_frames``/``fps``/``max_frames``/``seek``/``timeout``.
    """
    request = _validate(num_frames, fps, max_frames, seek, start, end)
    if is_image_path(path):
        return read_image(path)

    fs_path = _check_file(path)
    deadline = _Deadline(path, timeout)
    index = _scan_index(fs_path, deadline)
    if index is not None:
        try:
            return _sample_indexed(path, fs_path, index, request, seek, deadline)
        except _Mismatch:
            pass  # the counting pass below decides
    return _sample_counting(path, fs_path, index, request, deadline)


def _sample_indexed(
    path: str, fs_path: str, index: _Index, request: _Request, seek: str, deadline: _Deadline
) -> Clip:
    """Sample with the packet index; raises _Mismatch when the decoder disagrees with it."""
    timeline = _Timeline.from_ms(index.ms, index.header_fps)
    targets = timeline.targets(request, path)
    warnings: list[str] = []
    mode = "exact"
    keys: list[int] = []
    if seek != "exact":
        # Keyframes are looked for inside the window only: frames outside it are never returned.
        window = range(
            bisect.bisect_left(timeline.timestamps, request.lo), bisect.bisect_left(timeline.timestamps, request.hi)
        )
        if _has_key_in(index, window):
            keys = sorted(set(_nearest_keys(index, targets, window)))
            if seek == "keyframe":
                mode = "keyframe"
            elif len(keys) == len(targets):
                exact_cost = sum(r.cost for r in _plan_runs(index, targets, eof=True))
                mode = "keyframe" if exact_cost > AUTO_KEYFRAME_ABOVE else "exact"

    job = _Job(path, fs_path, index, set(keys) if mode == "keyframe" else set(targets), deadline)
    decoded = 0
    if mode == "keyframe":
        decoded, exactly = _decode_keyframes(job, keys)
        if exactly < 0 and seek == "auto":
            mode = "exact"
            job = _Job(path, fs_path, index, set(targets), deadline)
        elif exactly < 0:
            job = _Job(path, fs_path, index, set(keys), deadline)
            decoded += _decode_exact(job, keys, eof=True)
            warnings.append("keyframes of this codec do not decode on their own; decoded them exactly")
        elif exactly:
            warnings.append(f"{exactly} keyframe{'s' if exactly != 1 else ''} did not decode on their own; "
                            "decoded exactly")
    if mode == "exact":
        decoded += _decode_exact(job, targets, eof=True)
        chosen = targets
    else:
        chosen = keys
        if len(keys) < len(targets):
            warnings.append(f"{len(targets)} targets share {len(keys)} keyframes; returned {len(keys)} frames")
    if any(i not in job.frames for i in chosen):
        raise _Mismatch("a target was not decoded")
    return Clip(
        path=path,
        frames=_stack([job.frames[i] for i in chosen]),
        indices=list(chosen),
        timestamps=[timeline.timestamps[i] for i in chosen],
        duration=timeline.duration,
        fps=timeline.fps,
        total_frames=index.n,
        is_image=False,
        header_frames=index.header_frames,
        header_fps=index.header_fps,
        seek=mode,
        decoded=decoded,
        warnings=warnings,
    )


def _sample_counting(
    path: str, fs_path: str, index: _Index | None, request: _Request, deadline: _Deadline
) -> Clip:
    """Sample by decoding the whole file sequentially (the index is missing or disagreed)."""
    if index is not None:
        header_frames, header_fps = index.header_frames, index.header_fps
    else:
        cap = _open_capture(path, fs_path)
        try:
            header_frames = _header_int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            header_fps = _header_float(cap.get(cv2.CAP_PROP_FPS))
        finally:
            cap.release()
    guess = _planned_guess(None if index is None else index.ms, header_frames, header_fps, request)
    timeline, targets, kept, decoded, damaged = _counting_pass(path, fs_path, request, deadline, guess, header_fps)
    warnings = []
    if damaged:
        warnings.append(f"skipped {damaged} undecodable packet{'s' if damaged != 1 else ''}")
    return Clip(
        path=path,
        frames=_stack([kept[i] for i in targets]),
        indices=list(targets),
        timestamps=[timeline.timestamps[i] for i in targets],
        duration=timeline.duration,
        fps=timeline.fps,
        total_frames=len(timeline.timestamps),
        is_image=False,
        header_frames=header_frames,
        header_fps=header_fps,
        seek="exact",
        decoded=decoded,
        damaged=damaged,
        warnings=warnings,
    )
