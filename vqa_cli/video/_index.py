"""The packet index: every video packet of a file, read in OpenCV's demuxer-only mode.

A demuxer-only capture (``CAP_PROP_FORMAT=-1``) decodes nothing: each packet's own presentation
time and keyframe flag make the index (frame i is the packet with the i-th smallest presentation
time).  What the header claims is kept apart (``*_from_header``) from what the packets show.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from dataclasses import dataclass, field

import cv2

from vqa_cli.video import _capture
from vqa_cli.video._h264 import START_CODES, h264_reference
from vqa_cli.video._inputs import Deadline

# A packet's presentation rank may differ from its decode position by at most
# this much (B-frame reordering); more means broken or restarting timestamps.
MAX_REORDER = 64
# Two timestamps (ms) closer than this are the same frame.
MS_TOLERANCE = 1e-3


@dataclass
class PacketIndex:
    """Every video packet of a file, from a demuxer-only pass, in presentation order."""

    ms: list[float]  # presentation time of frame i (ms, as CAP_PROP_POS_MSEC reports it), increasing
    keys: list[int]  # frame indices whose packet is a keyframe, increasing, starting at 0
    dpos: list[int]  # decode position (packet order in the file) of frame i
    frames_from_header: int  # what CAP_PROP_FRAME_COUNT claims
    fps_from_header: float  # what CAP_PROP_FPS claims
    rotation: int
    extradata: bytes  # prepended to packets decoded on their own (start-code codecs only)
    codec: str  # "h264", "hevc" or the FOURCC in lower case
    refs: list[bool] | None  # H.264: whether frame i may be a reference for others (nal_ref_idc > 0)
    _rank: dict[float, int] = field(default_factory=dict, repr=False)
    _ref_sum: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._rank = {m: i for i, m in enumerate(self.ms)}
        self._ref_sum = list(itertools.accumulate((int(r) for r in self.refs or ()), initial=0))

    @property
    def frames_from_content(self) -> int:
        """The number of frames the packets show."""
        return len(self.ms)

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

    def rank(self, ms: float) -> int | None:
        """The frame index with this timestamp, or None."""
        found = self._rank.get(ms)
        if found is not None:
            return found
        i = bisect.bisect_left(self.ms, ms - MS_TOLERANCE)
        if i < len(self.ms) and abs(self.ms[i] - ms) <= MS_TOLERANCE:
            return i
        return None

    def is_key(self, i: int) -> bool:
        k = bisect.bisect_left(self.keys, i)
        return k < len(self.keys) and self.keys[k] == i

    def key_at_or_before(self, i: int) -> int:
        return self.keys[max(bisect.bisect_right(self.keys, i) - 1, 0)]


def scan_index(fs_path: str, deadline: Deadline) -> PacketIndex | None:
    """Read every video packet without decoding; None when the packets cannot serve as an index."""
    cap = _capture.open_raw(fs_path)
    if cap is None:
        return None
    ms: list[float] = []
    keys: list[bool] = []
    refs: list[bool] = []
    try:
        frames_from_header, fps_from_header = _capture.header_claims(cap)
        rotation = int(cap.get(cv2.CAP_PROP_ORIENTATION_META)) % 360
        codec = codec_name(cap.get(cv2.CAP_PROP_FOURCC))
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
                refs.append(not ok or packet is None or h264_reference(packet.reshape(-1)))
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
    if any(not b - a > MS_TOLERANCE for a, b in itertools.pairwise(sorted_ms)):
        return None  # repeated timestamps: restarts, missing pts
    if any(abs(rank - d) > MAX_REORDER for rank, d in enumerate(order)):
        return None  # more than B-frame reordering: timestamps jump back
    key_ranks = [rank for rank, d in enumerate(order) if keys[d]]
    if not key_ranks or key_ranks[0] != 0:
        return None  # frames before the first keyframe may not decode at all
    return PacketIndex(
        ms=sorted_ms,
        keys=key_ranks,
        dpos=order,
        frames_from_header=frames_from_header,
        fps_from_header=fps_from_header,
        rotation=rotation if rotation in (90, 180, 270) else 0,
        extradata=extradata if extradata.startswith(START_CODES) else b"",
        codec=codec,
        refs=[refs[d] for d in order] if refs else None,
    )


def codec_name(fourcc: float) -> str:
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
