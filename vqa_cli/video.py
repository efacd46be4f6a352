"""Frame sampling with OpenCV: a video (or image) file -> sampled RGB frames with timestamps.

Container headers are not trusted: the frame count and frame rate a file claims
are often wrong.  The file is first read in OpenCV's demuxer-only mode
(``CAP_PROP_FORMAT=-1``), which decodes nothing: each video packet's own
presentation time and keyframe flag make a *packet index* (frame i is the packet
with the i-th smallest presentation time).  With it:

* ``seek="exact"`` returns exactly the frames a full sequential decode gives at
  the requested indices, decoding as little as possible, in one of two ways.
  Seek and grab: targets are grouped into runs; inside a run a capture grabs
  forward (``grab()`` decodes without colour conversion; only kept frames are
  ``retrieve()``-d); a run starts with a seek when the next target lies further
  away than a seek costs.  OpenCV's FFmpeg backend seeks to the keyframe at least
  16 frames before the requested one and decodes forward, which the planner
  models.  Every grabbed frame is identified by its own timestamp
  (``CAP_PROP_POS_MSEC``) and checked against the index, also right after a
  seek.  Runs are spread over one capture per core, in threads.  Packets (H.264,
  when that decodes clearly fewer frames): per keyframe interval, the packets from
  the keyframe to the last target are read in demuxer-only mode, non-reference
  frames that are not targets are left out, and the intervals, one after another,
  are decoded by one in-memory capture per thread (opening one costs several
  frames' decoding); checked once per file against the file's own decoder
  (frame 0 and the last frame, decoded in the same streams, must match pixel for
  pixel).
* ``seek="keyframe"`` snaps each target to its nearest keyframe and decodes only
  keyframes, from their packets (same checks); where keyframes do not decode from
  their packets alone (VP8/VP9, Theora, open-GOP H.264) they are reached by seeking.
* ``seek="auto"`` uses keyframe seeking when exact decoding would decode more
  than ``AUTO_KEYFRAME_ABOVE`` frames, every target has a keyframe of its own and
  keyframe seeking would decode fewer frames; exact decoding otherwise.

The index is trusted after a cheap end check: seeking to its last frame must
decode that frame and nothing may follow.  Whenever the decoder disagrees with
the index (damaged or truncated files, timestamps that repeat or jump back,
streams that do not start with a keyframe), a counting pass decodes the whole
file sequentially instead, skipping and reporting undecodable packets.  Damage in
parts of a file that are not decoded cannot be seen; there indices follow the
packets (timestamps are always the frames' own).
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
# frames than this (2 to 4 s of 1080p H.264 on two cores), every target has a
# keyframe of its own and keyframe seeking would decode fewer frames.
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
# Exact decoding of H.264 goes through the packets (leaving out non-reference frames) when
# that decodes at most this share of the frames seeking and grabbing would.
_PACKETS_FOR_EXACT = True
_PACKET_GAIN = 0.8
# Opening an in-memory capture costs about this many decoded frames (720p H.264 camera footage:
# 7 ms against 2.5 ms a frame; streams starting with very large keyframes cost more to open).
_STREAM_COST = 3
# Raw header frame counts above this are not used to plan a counting pass.
_MAX_PLANNED_FRAMES = 10_000_000

# Keyframe packets decoded per in-memory capture (for codecs other than H.264/HEVC each
# batch decodes frame 0 again, in front, for the decoder's sake).
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


_budget = threading.local()


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_count() -> int:
    """Cores this thread may decode with: the process's, or fewer under ``core_budget``."""
    cores = cpu_cores()
    budget = getattr(_budget, "cores", None)
    return min(cores, budget) if budget else cores


def _default_threads() -> int:
    """Decoder threads for a capture that has this thread's cores to itself (0: OpenCV's default)."""
    return getattr(_budget, "cores", None) or 0


@contextmanager
def core_budget(cores: int) -> Iterator[None]:
    """Decode with at most ``cores`` cores in this thread (parallel captures and decoder threads).

    For callers that decode several files at once, such as ``vqa caption``'s decode-ahead
    workers: decoders that each take every core only contend, and frame threading has its own
    cost, so the work per file is cheaper when each file gets its share of the cores.
    """
    previous = getattr(_budget, "cores", None)
    _budget.cores = max(1, cores)
    try:
        yield
    finally:
        _budget.cores = previous


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

    ``threads`` > 0 sets the FFmpeg decoder's thread count; 0 takes the thread's
    ``core_budget``, or else OpenCV's default (one per core, at most 16).
    """
    backend = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    threads = threads or _default_threads()
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
        if request.fps is None:
            targets = _window_targets(self.timestamps, request.count(self.duration), request.lo, request.hi)
        else:
            targets = self._slice_targets(request.count(self.duration), request.lo, min(request.hi, self.duration))
        if not targets:
            shown_end = _fmt_seconds(min(request.hi, self.duration))
            raise VideoError(f"no frames of {_quote(path)} between {_fmt_seconds(request.lo)} and {shown_end}")
        return targets

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
    refs: list[bool] | None  # H.264: whether frame i may be a reference for others (nal_ref_idc > 0)
    _rank: dict[float, int] = field(default_factory=dict, repr=False)
    _ref_sum: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._rank = {m: i for i, m in enumerate(self.ms)}
        self._ref_sum = list(itertools.accumulate((int(r) for r in self.refs or ()), initial=0))

    def references(self, lo: int, hi: int) -> int:
        """Reference frames among frames lo..hi (inclusive); all of them when unknown."""
        if self.refs is None:
            return hi - lo + 1
        return self._ref_sum[hi + 1] - self._ref_sum[lo]

    @property
    def regular(self) -> bool:
        """No gap between frames longer than 2.5 median gaps (a lost packet leaves one)."""
        gaps = [b - a for a, b in itertools.pairwise(self.ms)]
        return not gaps or max(gaps) <= 2.5 * statistics.median(gaps)

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

    def is_key(self, i: int) -> bool:
        k = bisect.bisect_left(self.keys, i)
        return k < len(self.keys) and self.keys[k] == i

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
    refs: list[bool] = []
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
        h264 = codec == "h264"
        while cap.grab():
            ms.append(get(cv2.CAP_PROP_POS_MSEC))
            keys.append(get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME) != 0)
            if h264:
                ok, packet = cap.retrieve()
                # Unknown counts as a reference: the estimate then never expects too little work.
                refs.append(not ok or packet is None or _h264_reference(packet.reshape(-1)))
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
        refs=[refs[d] for d in order] if refs else None,
    )


def _h264_reference(packet: np.ndarray) -> bool:
    """Whether an Annex B H.264 packet's picture may be a reference (looks at its first slice only)."""
    head = packet[:256].tobytes()
    at = head.find(b"\x00\x00\x01")
    while 0 <= at < len(head) - 3:
        if head[at + 3] & 0x1F in (1, 5):
            return head[at + 3] >> 5 & 3 != 0
        at = head.find(b"\x00\x00\x01", at + 3)
    return _h264_picture(packet.tobytes())[0] if len(head) == 256 else True


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

    def __init__(self, job: _Job, threads: int = 0, keep: frozenset[int] = frozenset()) -> None:
        self.job = job
        self.threads = threads
        self.keep = keep  # frames to keep for this walker's caller (in self.kept), besides job.wanted
        self.kept: dict[int, np.ndarray] = {}
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
        self._take(0)

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
                raise _Mismatch("decoded frames skip or repeat a packet")
            self.pos = found
            self._take(found)
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


def _decode_walking(job: _Job, targets: list[int], eof: bool) -> int:
    """Decode ``targets`` exactly by seeking and grabbing (plus the end check); returns frames decoded."""
    runs = _plan_runs(job.index, targets, eof)
    workers = _worker_count(runs)
    groups = _split_runs(runs, workers)
    threads = _default_threads() if len(groups) == 1 else max(1, _cpu_count() // len(groups))
    walkers = [_Walker(job, threads) for _ in groups]
    _walk_parallel(job, groups, walkers)
    return sum(w.decoded for w in walkers)


# --------------------------------------------------------------------------- decoding from packets
#
# A demuxer-only capture hands out the file's packets (Annex B for H.264/HEVC)
# and an in-memory capture decodes a stream made of chosen packets.  That
# reaches a keyframe without decoding anything else, and, for H.264, the frames
# leading to a target without the non-reference frames (nal_ref_idc 0: no other
# frame is predicted from them), which the seek-and-grab path must decode.
# Every stream starts with what decoders take from the start of a file (the
# first packet's parameter sets and SEI: FFmpeg reads x264's version there and
# works around that encoder's bugs), and each file is checked once against the
# file's own decoder: frame 0 and the last frame (decoded by the end check
# anyway) must come out pixel for pixel the same.


def _nal_units(packet: bytes) -> list[tuple[int, int, int]]:
    """(header byte, start, end) of each NAL unit in an Annex B packet."""
    starts = []
    at = packet.find(b"\x00\x00\x01")
    while at >= 0 and at + 3 < len(packet):
        starts.append(at + 3)
        at = packet.find(b"\x00\x00\x01", at + 3)
    ends = [s - 3 for s in starts[1:]] + [len(packet)]
    return [(packet[s], s, e) for s, e in zip(starts, ends, strict=True)]


def _nal_type(header: int, codec: str) -> int:
    return header & 0x1F if codec == "h264" else (header >> 1) & 0x3F


def _is_vcl(nal_type: int, codec: str) -> bool:
    return 1 <= nal_type <= 5 if codec == "h264" else nal_type < 32


def _self_contained(packet: bytes, codec: str) -> bool:
    """False for keyframe packets whose picture may need earlier packets.

    H.264 keyframes must carry an IDR slice (open-GOP I-frames marked as
    keyframes may not even be output on their own); HEVC ones an IRAP picture.
    Other codecs are checked after decoding (frame type, frame count, pixels).
    """
    if codec not in ("h264", "hevc"):
        return True
    types = {_nal_type(h, codec) for h, _, _ in _nal_units(packet)}
    return 5 in types if codec == "h264" else any(16 <= t <= 23 for t in types)


def _stream_header(packet: bytes, codec: str) -> bytes:
    """The first packet's non-picture NAL units (parameter sets, SEI), to put in front of a stream."""
    skip = {9, 10, 11, 12} if codec == "h264" else {35, 36, 37, 38}  # delimiters, end of stream, filler
    return b"".join(
        b"\x00\x00\x00\x01" + packet[start:end]
        for header, start, end in _nal_units(packet)
        if not _is_vcl(_nal_type(header, codec), codec) and _nal_type(header, codec) not in skip
    )


def _read_ue(data: bytes, bit: int) -> tuple[int, int] | None:
    """An Exp-Golomb ue(v) value at ``bit``: (value, next bit), or None past the end."""
    zeros = 0
    while True:
        if bit >= 8 * len(data) or zeros > 31:
            return None
        if data[bit >> 3] >> (7 - (bit & 7)) & 1:
            break
        zeros += 1
        bit += 1
    bit += 1
    value = 0
    for _ in range(zeros):
        if bit >= 8 * len(data):
            return None
        value = value << 1 | data[bit >> 3] >> (7 - (bit & 7)) & 1
        bit += 1
    return (1 << zeros) - 1 + value, bit


def _h264_picture(packet: bytes) -> tuple[bool, str | None]:
    """(whether other frames may be predicted from this picture, its picture type as FFmpeg names it)."""
    reference = False
    kind = None
    for header, start, _ in _nal_units(packet):
        if header & 0x1F not in (1, 5):
            continue
        reference = reference or header >> 5 & 3 != 0
        if kind is None:
            # slice_header: first_mb_in_slice ue(v), slice_type ue(v); drop emulation-prevention bytes.
            head = packet[start + 1 : start + 17].replace(b"\x00\x00\x03", b"\x00\x00")
            first = _read_ue(head, 0)
            slice_type = _read_ue(head, first[1]) if first else None
            kind = "PBIpi"[slice_type[0] % 5] if slice_type else "?"
    return reference, kind


class _RawReader:
    """The packets of one file in decode order, from a demuxer-only capture."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.cap: cv2.VideoCapture | None = None
        self.at = -1  # decode position of the packet read last

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def _reopen(self) -> bool:
        self.close()
        self.cap = _open_raw(self.job.fs_path)
        self.at = -1
        return self.cap is not None

    def fetch(self, rank: int) -> bytes | None:
        """The packet of keyframe ``rank``; afterwards ``next()`` reads on from it."""
        index = self.job.index
        if self.cap is None and not self._reopen():
            return None
        target = index.dpos[rank]
        earlier = index.key_at_or_before(rank - 1) if rank > 0 else 0
        span = target - index.dpos[earlier] + 2 * _MAX_REORDER + _SEEK_LEAD
        # Read on when the packet is close ahead; else seek (a demuxer-only seek lands on the
        # keyframe at or before the time; MPEG-TS lands near it, hence the earlier keyframe);
        # else read from the start of the file.
        attempts: list[float | None] = [None] if 0 <= target - self.at <= span else []
        attempts += [index.ms[rank], index.ms[earlier], -1.0]
        for start in attempts:
            assert self.cap is not None
            if start == -1.0:
                if target > _RAW_RESCAN_LIMIT or not self._reopen():
                    return None
            elif start is not None:
                self.cap.set(cv2.CAP_PROP_POS_MSEC, start)
            data = self._scan_to(rank, target + 1 if start == -1.0 else span)
            if data is not None:
                return data
        return None

    def _scan_to(self, rank: int, limit: int) -> bytes | None:
        index = self.job.index
        cap = self.cap
        assert cap is not None
        for _ in range(limit):
            self.job.check()
            if not cap.grab():
                return None
            found = index.rank(cap.get(cv2.CAP_PROP_POS_MSEC))
            if found is None:
                return None
            self.at = index.dpos[found]
            if found == rank:
                return self._bytes() if cap.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME) else None
            if self.at > index.dpos[rank]:
                return None  # passed it
        return None

    def next(self) -> tuple[int, bytes] | None:
        """The next packet in decode order as (frame index, bytes); None unless it is the expected one."""
        index = self.job.index
        cap = self.cap
        if cap is None or self.at < 0:
            return None
        self.job.check()
        if not cap.grab():
            return None
        found = index.rank(cap.get(cv2.CAP_PROP_POS_MSEC))
        if found is None or index.dpos[found] != self.at + 1:
            return None
        self.at += 1
        data = self._bytes()
        return None if data is None else (found, data)

    def _bytes(self) -> bytes | None:
        assert self.cap is not None
        ok, packet = self.cap.retrieve()
        return packet.tobytes() if ok and packet is not None and packet.size else None


class _PacketDecoder:
    """Decodes streams of chosen packets of one file (see the section comment)."""

    def __init__(self, job: _Job, first: bytes, threads: int) -> None:
        self.job = job
        self.first = first  # the file's first packet (frame 0)
        self.threads = threads
        codec = job.index.codec
        self.header = _stream_header(first, codec) if codec in ("h264", "hevc") else None
        self.decoded = 0  # frames decoded, by all threads using this decoder
        self._count_lock = threading.Lock()

    def _prefix(self, starts_with_first: bool) -> tuple[bytes, int]:
        """Bytes to put in front of a stream, and how many frames they decode to."""
        index = self.job.index
        if self.header is not None:
            return index.extradata + self.header, 0
        if starts_with_first:
            return index.extradata, 0
        return index.extradata + self.first, 1  # other codecs: frame 0 in front, skipped

    def first_frame(self) -> np.ndarray | None:
        frames = self._decode(self.job.index.extradata + self.first, [0], {0}, [None])
        return None if frames is None else frames.get(0)

    def keyframes(self, reader: _RawReader, keys: list[int]) -> tuple[dict[int, np.ndarray], list[int]]:
        """Decode keyframes from their packets alone: (frames, keys that could not be)."""
        codec = self.job.index.codec
        chosen: list[tuple[int, bytes]] = []
        failed = []
        for k in keys:
            data = reader.fetch(k)
            if data is not None and _self_contained(data, codec):
                chosen.append((k, data))
            else:
                failed.append(k)
        if not chosen:
            return {}, failed
        prefix, lead = self._prefix(chosen[0][0] == 0)
        ranks = [k for k, _ in chosen]
        stream = prefix + b"".join(data for _, data in chosen)
        frames = self._decode(stream, [-1] * lead + ranks, set(ranks), [None] * lead + ["I"] * len(ranks))
        if frames is None:
            return {}, keys
        return frames, failed

    def run(self, reader: _RawReader, key: int, targets: list[int]) -> dict[int, np.ndarray] | None:
        """Decode ``targets`` (all in keyframe ``key``'s interval) from the packets from ``key`` on."""
        chosen = self._collect(reader, key, targets)
        return None if chosen is None else self._decode_parts([(targets, chosen)])

    def run_units(self, reader: _RawReader, units: list[tuple[int, list[int]]]) -> _PacketResult:
        """Decode several keyframe intervals' targets through one in-memory stream.

        Opening a stream costs as much as decoding tens of small frames, so the intervals go
        one after another into a single stream: each starts with a keyframe that needs nothing
        before it (an IDR picture for H.264). When that stream does not come out as expected,
        each interval is decoded in its own stream.
        """
        result = _PacketResult()
        parts: list[tuple[list[int], list[tuple[int, bytes]]]] = []
        for key, targets in units:
            chosen = self._collect(reader, key, targets)
            if chosen is None:
                result.failed += targets
            else:
                parts.append((targets, chosen))
        found = self._decode_parts(parts) if len(parts) > 1 else None
        if found is not None:
            result.frames.update(found)
            return result
        for targets, chosen in parts:
            found = self._decode_parts([(targets, chosen)])
            if found is None:
                result.failed += targets
            else:
                result.frames.update(found)
        return result

    def _collect(self, reader: _RawReader, key: int, targets: list[int]) -> list[tuple[int, bytes]] | None:
        """The packets (rank, data), in decode order, that decode ``targets`` from keyframe ``key``."""
        index = self.job.index
        codec = index.codec
        first = reader.fetch(key)
        if first is None or not _self_contained(first, codec):
            return None
        wanted = set(targets)
        last = max(index.dpos[t] for t in targets)
        chosen = [(key, first)]  # decode order
        while reader.at < last:
            item = reader.next()
            if item is None:
                return None
            rank, data = item
            if rank < key:
                continue  # a leading picture of the keyframe: nothing after the keyframe needs it
            if rank != key and index.is_key(rank):
                return None  # a target lies beyond the next keyframe in decode order
            if rank in wanted or codec != "h264" or _h264_picture(data)[0]:
                chosen.append((rank, data))
        return chosen

    def _decode_parts(self, parts: list[tuple[list[int], list[tuple[int, bytes]]]]) -> dict[int, np.ndarray] | None:
        """Decode intervals' chosen packets (in increasing keyframe order) as one stream."""
        if not parts:
            return {}
        codec = self.job.index.codec
        prefix, lead = self._prefix(parts[0][1][0][0] == 0)
        ranks: list[int] = [-1] * lead
        kinds: list[str | None] = [None] * lead
        wanted: set[int] = set()
        data: list[bytes] = [prefix]
        for targets, chosen in parts:
            order = sorted(rank for rank, _ in chosen)
            ranks += order
            if codec == "h264":
                kind_of = {rank: _h264_picture(packet)[1] for rank, packet in chosen}
                kinds += [kind_of[r] if kind_of[r] in ("I", "P", "B") else None for r in order]
            else:
                kinds += [None] * len(order)
            wanted.update(targets)
            data += [packet for _, packet in chosen]
        return self._decode(b"".join(data), ranks, wanted, kinds)

    def _decode(
        self, data: bytes, ranks: list[int], keep: set[int], kinds: list[str | None]
    ) -> dict[int, np.ndarray] | None:
        """Decode a stream whose frames come out as ``ranks``; None unless it gives exactly those."""
        # The capture reads from the stream without owning it: keep it alive until release().
        stream = io.BytesIO(data)
        params = [cv2.CAP_PROP_N_THREADS, self.threads] if self.threads > 0 else []
        with _quiet_opening():
            try:
                cap = cv2.VideoCapture(stream, cv2.CAP_FFMPEG, params)
            except cv2.error:
                return None
        frames: dict[int, np.ndarray] = {}
        try:
            if not cap.isOpened():
                return None
            for rank, kind in zip(ranks, kinds, strict=True):
                self.job.check()
                if not cap.grab():
                    return None
                with self._count_lock:
                    self.decoded += 1
                if kind is not None and cap.get(cv2.CAP_PROP_FRAME_TYPE) != float(ord(kind)):
                    return None  # the frames do not come out in the order expected
                if rank in keep:
                    ok, frame = cap.retrieve()
                    if not ok or frame is None:
                        return None
                    frames[rank] = _to_rgb(_rotate(frame, self.job.index.rotation))
            if cap.grab():
                return None  # more frames than packets
            return frames
        except cv2.error:
            return None
        finally:
            cap.release()
            stream.close()


@dataclass
class _PacketResult:
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)


def _decode_from_packets(job: _Job, targets: list[int], keyframes: bool) -> tuple[int, int] | None:
    """Decode ``targets`` (keyframes, or any frames exactly) from packets, with the end check beside.

    Returns (frames decoded, targets that had to be decoded by seeking and
    grabbing instead), or None when packet decoding does not reproduce this
    file's frames; then nothing has been kept but the end check's frames.
    """
    index = job.index
    last = index.n - 1
    workers = max(1, _cpu_count() if _MAX_WORKERS is None else _MAX_WORKERS)
    threads = 1 if workers > 1 else _default_threads()
    tail = _Walker(job, threads=threads, keep=frozenset({0, last}))
    reader = _RawReader(job)
    try:
        tail.open()
        first = reader.fetch(0)
    except BaseException:
        tail.close()
        raise
    finally:
        reader.close()
    if first is None:
        tail.close()
        return None
    decoder = _PacketDecoder(job, first, threads)

    # Work units: batches of keyframes, or the targets of one keyframe interval each.
    units: list[tuple[int, list[int]]] = []
    last_key = index.key_at_or_before(last)
    if keyframes:
        keys = sorted(set(targets))
        units = [(-1, keys[i : i + _PACKET_BATCH]) for i in range(0, len(keys), _PACKET_BATCH)]
    else:
        # Frame 0 and the last frame check the packet decoding against the file's own decoder
        # (the end check decodes the last frame anyway); they ride along in the intervals' streams.
        for t in sorted(set(targets) | {0, last}):
            key = index.key_at_or_before(t)
            if units and units[-1][0] == key:
                units[-1][1].append(t)
            else:
                units.append((key, [t]))
    costs = [len(ts) if key < 0 else index.dpos[max(ts)] - index.dpos[key] + 1 for key, ts in units]
    groups = _split_costs(costs, workers)

    def work(group: list[int]) -> _PacketResult:
        result = _PacketResult()
        reader = _RawReader(job)
        try:
            if not keyframes:
                return decoder.run_units(reader, [units[u] for u in group])
            for u in group:
                frames, failed = decoder.keyframes(reader, units[u][1])
                result.frames.update(frames)
                result.failed += failed
            return result
        finally:
            reader.close()

    def check() -> _PacketResult:
        """Keyframe mode: frame 0 and the last frame decoded from packets (compared with the end check's)."""
        result = _PacketResult()
        zero = decoder.first_frame()
        if zero is not None:
            result.frames[0] = zero
        reader = _RawReader(job)
        try:
            end = decoder.run(reader, last_key, [last])
        finally:
            reader.close()
        if end is not None:
            result.frames.update(end)
        return result

    def end_check() -> _PacketResult:
        try:
            tail.walk(_plan_runs(index, [], eof=True))
        finally:
            tail.close()
        return _PacketResult()

    # (exact: frame 0 and the last frame come with the work units' streams)
    tasks = [end_check, check if keyframes else _PacketResult] + [lambda g=g: work(g) for g in groups if g]
    results: list[_PacketResult] = []
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(task) for task in tasks]
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - the first real failure is raised below
                job.stop.set()
                if failure is None or isinstance(failure, _Cancelled):
                    failure = exc
    decoded = tail.decoded + decoder.decoded
    if failure is not None:
        raise failure
    checked = {i: f for r in results[1:] for i, f in r.frames.items() if i in (0, last)}
    if not all(i in checked and np.array_equal(checked[i], tail.kept[i]) for i in (0, last)):
        return None
    fallback = sorted({t for r in results[2:] for t in r.failed if t in job.wanted})
    for r in results[2:]:
        job.frames.update((i, f) for i, f in r.frames.items() if i in job.wanted)
    if fallback:
        decoded += _decode_walking(job, fallback, eof=False)
    return decoded, len(fallback)


def _split_costs(costs: list[float], parts: int) -> list[list[int]]:
    """Cut item positions into at most ``parts`` consecutive groups of about equal cost."""
    parts = max(1, min(parts, len(costs)))
    total = sum(costs)
    groups: list[list[int]] = [[]]
    done = 0.0
    for i, cost in enumerate(costs):
        if groups[-1] and len(groups) < parts and done + cost / 2 > total * len(groups) / parts:
            groups.append([])
        groups[-1].append(i)
        done += cost
    return groups


def _decode_exact(job: _Job, targets: list[int], eof: bool) -> int:
    """Decode ``targets`` exactly (plus the end check when ``eof``); returns frames decoded.

    H.264 files go through their packets when that reproduces the file's frames
    (it leaves out non-reference frames); everything else seeks and grabs.
    """
    if eof and _exact_cost(job.index, targets)[1]:
        done = _decode_from_packets(job, targets, keyframes=False)
        if done is not None:
            return done[0]
        job.stop.clear()
    return _decode_walking(job, targets, eof)


def _exact_cost(index: _Index, targets: list[int]) -> tuple[int, bool]:
    """Estimated frames exact decoding of ``targets`` (and the end check) decodes; whether via packets."""
    walking = sum(r.cost for r in _plan_runs(index, targets, eof=True))
    if _PACKETS_FOR_EXACT and index.refs is not None and index.regular:
        packets = _packet_cost(index, targets)
        if packets <= _PACKET_GAIN * walking:
            return packets, True
    return walking, False


def _keyframe_cost(index: _Index, keys: list[int]) -> tuple[int, bool]:
    """Estimated frames decoding keyframes ``keys`` (and the end check) decodes; whether via packets."""
    walking = sum(r.cost for r in _plan_runs(index, keys, eof=True))
    last = index.n - 1
    packets = (
        1  # frame 0 check
        + (last - index.landing(last) + 1)  # end check
        + index.references(index.key_at_or_before(last), last)  # last-frame check
        + len(keys)
        + _STREAM_COST * (2 + len(keys) // _PACKET_BATCH)
    )
    return (packets, True) if packets < walking else (walking, False)


def _packet_cost(index: _Index, targets: list[int]) -> int:
    """Frames the packet path decodes for ``targets``: reference frames and targets per keyframe
    interval (frame 0 and the last frame among them, as checks), the end check, and the price of
    opening its streams (one per parallel group of intervals)."""
    last = index.n - 1
    spans: dict[int, list[int]] = {}
    for t in [0, *targets, last]:
        spans.setdefault(index.key_at_or_before(t), []).append(t)
    cost = last - index.landing(last) + 1  # end check
    for key, ts in spans.items():
        top = max(ts)
        cost += index.references(key, top) + sum(1 for t in set(ts) if not index.references(t, t))
    return cost + _STREAM_COST * min(len(spans), _cpu_count())


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

    Exactly one of ``num_frames`` and ``fps`` is required:

    * ``num_frames``: that many frames, uniform over the window's frames (the
      middle frame of each of ``num_frames`` equal segments: ``uniform_indices``);
    * ``fps``: a rate over the window's real duration: ``floor(seconds * fps)``
      equal time slices (at least one) and the frame shown at the middle of each.
      For a constant frame rate these are the frames ``num_frames`` would give;
      for a variable one every slice of time gets its frame.

    ``max_frames`` caps either.  The window and the spreading use the real frame
    count and timestamps, never the header's.  Fewer frames than asked are
    returned when the video (or window) has fewer.  Image paths are read as
    one-frame clips (the window is ignored).

    ``seek`` chooses how the frames are reached:

    * ``"exact"`` (default): exactly the frames a full sequential decode gives at
      the uniform indices, decoding as little as possible.
    * ``"keyframe"``: each target snaps to its nearest keyframe inside the window
      and only that keyframe is decoded (about one decoded frame per returned
      frame), for very long videos.  Targets sharing a keyframe give one frame,
      so fewer frames than asked may come back; indices and timestamps are those
      of the frames returned.  Keyframes that cannot be decoded from their
      packet alone (VP8/VP9, Theora, open-GOP H.264) are reached by seeking, which
      decodes from the keyframe before.  Damage in the frames in between cannot be
      seen (indices then follow the packets; timestamps are the frames' own).
    * ``"auto"``: ``"keyframe"`` when exact decoding would decode more than
      ``AUTO_KEYFRAME_ABOVE`` frames, every target has a keyframe of its own and
      keyframe seeking would decode fewer frames; ``"exact"`` otherwise.

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
            return _checked_count(_sample_indexed(path, fs_path, index, request, seek, deadline))
        except _Mismatch:
            pass  # the counting pass below decides
    return _checked_count(_sample_counting(path, fs_path, index, request, deadline))


def _checked_count(clip: Clip) -> Clip:
    """Warn when the file holds a frame count other than its header's (a file cut short looks whole)."""
    if clip.header_frames > 0 and abs(clip.total_frames - clip.header_frames) > 1:
        clip.warnings.append(f"the header says {clip.header_frames} frames but {clip.total_frames} were found: "
                             "the file may be cut short or damaged")
    return clip


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
                exact_cost = _exact_cost(index, targets)[0]
                if exact_cost > AUTO_KEYFRAME_ABOVE and _keyframe_cost(index, keys)[0] < exact_cost:
                    mode = "keyframe"

    decoded = 0
    if mode == "keyframe":
        job = _Job(path, fs_path, index, set(keys), deadline)
        via_packets = _keyframe_cost(index, keys)[1]
        done = _decode_from_packets(job, keys, keyframes=True) if via_packets else None
        if done is not None:
            decoded, exactly = done
            if exactly:
                warnings.append(
                    f"{exactly} keyframe{'s' if exactly != 1 else ''} did not decode on their own; decoded exactly"
                )
        elif via_packets and seek == "auto":
            mode = "exact"
        else:
            job = _Job(path, fs_path, index, set(keys), deadline)
            decoded += _decode_walking(job, keys, eof=True)
            if via_packets:
                warnings.append("keyframes of this file do not decode on their own; decoded them by seeking")
    if mode == "exact":
        job = _Job(path, fs_path, index, set(targets), deadline)
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
