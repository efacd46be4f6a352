"""The PyAV decoder: files whose video stream the installed OpenCV cannot decode (AV1 in some wheels, ...),
or every file with ``DecodeOptions(decoder="pyav")``.

Which files come here is decided once per file by ``_decoder.wanted``.

The contract is the OpenCV path's: the demuxer (``container.demux``, no decoding) gives every
packet's presentation time and keyframe flag, which make a ``PacketIndex`` (frame i is the packet
with the i-th smallest pts); the same pure logic (``Timeline``, ``choose``) picks the frames and
the mode, and every decoded frame is identified by its own pts.

* exact: runs of targets, each reached by a demuxer seek to the keyframe at or before its first
  target (or by decoding on, when that is cheaper), decoding forward;
* keyframe: a demuxer seek to each keyframe, its packet alone decoded and the decoder drained
  (one decoded frame per keyframe);
* whenever the decoder disagrees with the index (a target missing, a pts the index lacks,
  timestamps going back) or the index is unusable, a counting pass decodes the whole file
  sequentially.  Undecodable packets are skipped and counted (``Clip.damaged``).

``av`` is imported inside the functions that use it, so importing this module costs nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from vqa_cli.video import _capture
from vqa_cli.video._index import MAX_REORDER, PacketIndex
from vqa_cli.video._inputs import Clip, Deadline, VideoError, quote, undecodable
from vqa_cli.video._options import DecodeOptions
from vqa_cli.video._runs import SEEK_COST
from vqa_cli.video._sampling import Request, Timeline
from vqa_cli.video._strategy import choose

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.packet import Packet
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream


class Mismatch(Exception):
    """The decoder disagrees with the index; a counting pass decides."""


@contextmanager
def _opened(path: str, fs_path: str, options: DecodeOptions) -> Iterator[tuple[InputContainer, VideoStream]]:
    """(container, its first video stream), decoder threads set within ``options``' cores."""
    import av

    try:
        container = av.open(fs_path)
    except (av.FFmpegError, OSError, ValueError):
        raise undecodable(path) from None
    try:
        if not container.streams.video or container.streams.video[0].codec_context is None:
            raise undecodable(path)  # no video stream, or one PyAV has no decoder for
        stream = container.streams.video[0]
        context = stream.codec_context
        context.thread_type = "AUTO"
        context.thread_count = options.cpu_count  # the file's share of the cores, never more
        yield container, stream
    finally:
        container.close()


def codec_of(stream: VideoStream) -> str:
    """The codec's own name ("av1", "vp9", ...), not the decoder's ("libdav1d")."""
    codec = stream.codec_context.codec
    return str(getattr(codec, "canonical_name", "") or codec.name)


def scan(container: InputContainer, stream: VideoStream, deadline: Deadline) -> tuple[PacketIndex, list[int]] | None:
    """Every video packet from the demuxer, nothing decoded: (the index, each frame's pts); None if unusable."""
    pts: list[int] = []
    keys: list[bool] = []
    for n, packet in enumerate(container.demux(stream)):
        if packet.size == 0:
            continue  # the demuxer's flush packet
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None:
            return None
        pts.append(int(stamp))
        keys.append(bool(packet.is_keyframe))
        if n % 512 == 0:
            deadline.check()
    if not pts:
        return None
    order = sorted(range(len(pts)), key=pts.__getitem__)
    ordered = [pts[d] for d in order]
    if any(b <= a for a, b in itertools.pairwise(ordered)):
        return None  # repeated timestamps
    if any(abs(rank - d) > MAX_REORDER for rank, d in enumerate(order)):
        return None  # timestamps jump back
    key_ranks = [rank for rank, d in enumerate(order) if keys[d]]
    if not key_ranks or key_ranks[0] != 0:
        return None  # frames before the first keyframe may not decode
    unit = float(stream.time_base) * 1000.0
    index = PacketIndex(
        ms=[p * unit for p in ordered],
        keys=key_ranks,
        dpos=order,
        frames_from_header=max(0, int(stream.frames or 0)),
        fps_from_header=_header_fps(stream),
        rotation=0,
        extradata=b"",
        codec=codec_of(stream),
        refs=None,
    )
    return index, ordered


def _header_fps(stream: VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 0.0


def to_rgb(frame: VideoFrame) -> np.ndarray:
    """A decoded PyAV frame -> HxWx3 uint8 RGB, upright (its display matrix applied as OpenCV applies it)."""
    rgb = frame.to_ndarray(format="rgb24")
    # PyAV's rotation is counter-clockwise; OpenCV's orientation (and ``_capture.rotate``) clockwise.
    return _capture.rotate(rgb, int(-round(getattr(frame, "rotation", 0) or 0)) % 360)


class Decoder:
    """One PyAV decoder walking a file by demuxer seeks; frames identified by their pts."""

    def __init__(self, container: InputContainer, stream: VideoStream, deadline: Deadline) -> None:
        self.container, self.stream, self.deadline = container, stream, deadline
        self.packets: Iterator[Packet] = iter(())
        self.decoded = 0
        self.damaged = 0

    def seek(self, pts: int) -> None:
        """Go to the keyframe at or before ``pts`` (the decoder is flushed)."""
        self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)
        self.packets = self.container.demux(self.stream)

    def frames(self, drain_each: bool = False) -> Iterator[VideoFrame]:
        """Decoded frames from the current position on, skipping (and counting) undecodable packets."""
        context = self.stream.codec_context
        for packet in self.packets:
            self.deadline.check()
            if packet.size == 0:
                packet = None  # end of the file: drain
            try:
                out = context.decode(packet)
                if drain_each and packet is not None:
                    out = [*out, *context.decode(None)]
            except (OSError, ValueError, MemoryError) as exc:  # PyAV's FFmpeg errors subclass one of these
                if not _is_data_error(exc):
                    raise
                self.damaged += 1
                continue
            for frame in out:
                self.decoded += 1
                yield frame
            if packet is None or drain_each:
                return


def _is_data_error(exc: BaseException) -> bool:
    """An error FFmpeg gave for a packet (damaged data: invalid data, or ENOMEM as dav1d reports some damaged AV1
    packets), not the end of the file; Python's own errors are not."""
    import av

    return isinstance(exc, av.error.FFmpegError) and not isinstance(exc, av.error.EOFError)


def decode_exact(decoder: Decoder, index: PacketIndex, pts: list[int], targets: list[int]) -> dict[int, np.ndarray]:
    """The frames at ``targets`` (increasing), as a full sequential decode gives them."""
    rank = {p: i for i, p in enumerate(pts)}
    wanted_ranks = set(targets)
    kept: dict[int, np.ndarray] = {}
    at: int | None = None  # rank of the last frame out of the decoder; None: it must seek first
    floor = 0  # the keyframe last sought
    source: Iterator[VideoFrame] = iter(())
    for t in targets:
        if t in kept:
            continue
        key = index.key_at_or_before(t)
        if at is None or at >= t or t - at > t - key + 1 + SEEK_COST:
            decoder.seek(pts[key])
            source, at, floor = decoder.frames(), key - 1, key
        for frame in source:
            i = rank.get(frame.pts)
            if i is None:
                raise Mismatch("a frame the index does not have")
            if i < floor:
                continue  # leading frames of an open GOP, from before the keyframe sought
            if i <= at:
                raise Mismatch("timestamps go back")
            at = i
            if i in wanted_ranks:
                kept[i] = to_rgb(frame)
            if i >= t:
                break
        else:
            at = None  # the file ended (drained): the next target seeks
        if t not in kept:
            raise Mismatch("a target was not decoded")
    return kept


def decode_keyframes(decoder: Decoder, pts: list[int], keys: list[int]) -> dict[int, np.ndarray]:
    """Each keyframe in ``keys`` decoded from its own packet: one demuxer pass from the start (reading
    packets costs next to nothing) feeds only those packets to the decoder, drained once at the end. When
    that does not give every keyframe, each is reached by a demuxer seek instead."""
    wanted = {pts[k]: k for k in keys}
    last = max(wanted)
    context = decoder.stream.codec_context
    kept: dict[int, np.ndarray] = {}

    def take(frames: Iterable[VideoFrame]) -> None:
        for frame in frames:
            decoder.decoded += 1
            k = wanted.get(frame.pts)
            if k is not None:
                kept[k] = to_rgb(frame)

    decoder.seek(pts[0])
    for packet in decoder.packets:
        decoder.deadline.check()
        stamp = packet.pts if packet.pts is not None else packet.dts
        if packet.size == 0 or stamp not in wanted:
            if packet.size == 0 or (stamp is not None and stamp > last):
                break
            continue
        try:
            take(context.decode(packet))
        except (OSError, ValueError) as exc:
            if not _is_data_error(exc):
                raise
            decoder.damaged += 1
    take(context.decode(None))
    if len(kept) == len(wanted):
        return kept
    return _keyframes_by_seeking(decoder, pts, [k for k in keys if k not in kept]) | kept


def _keyframes_by_seeking(decoder: Decoder, pts: list[int], keys: list[int]) -> dict[int, np.ndarray]:
    """Each keyframe in ``keys``, reached by a demuxer seek and decoded from its packet alone."""
    kept: dict[int, np.ndarray] = {}
    for k in keys:
        decoder.seek(pts[k])
        for frame in decoder.frames(drain_each=True):
            if frame.pts == pts[k]:
                kept[k] = to_rgb(frame)
        if k not in kept:
            raise Mismatch("a keyframe did not decode from its packet")
    return kept


def sample_pyav(
    path: str, fs_path: str, request: Request, seek: str, deadline: Deadline, options: DecodeOptions
) -> Clip:
    """``sample_frames`` through PyAV (see the module docstring)."""
    with _opened(path, fs_path, options) as (container, stream):
        scanned = scan(container, stream, deadline)
        if scanned is not None:
            try:
                return _sample_indexed(path, container, stream, scanned, request, seek, deadline, options)
            except Mismatch:
                pass
        header = (max(0, int(stream.frames or 0)), _header_fps(stream), codec_of(stream))
    return _sample_counting(path, fs_path, scanned, request, deadline, options, header)


def _sample_indexed(
    path: str,
    container: InputContainer,
    stream: VideoStream,
    scanned: tuple[PacketIndex, list[int]],
    request: Request,
    seek: str,
    deadline: Deadline,
    options: DecodeOptions,
) -> Clip:
    index, pts = scanned
    timeline = Timeline.from_ms(index.ms, index.fps_from_header)
    targets = timeline.targets(request, path)
    choice = choose(index, timeline, request, targets, seek, options)
    decoder = Decoder(container, stream, deadline)
    warnings: list[str] = []
    if choice.mode == "keyframe":
        chosen = choice.keys
        kept = decode_keyframes(decoder, pts, chosen)
        if len(chosen) < len(targets):
            warnings.append(_capture.shared_keys_warning(len(targets), len(chosen)))
    else:
        chosen = targets
        kept = decode_exact(decoder, index, pts, targets)
    _capture.warn_damaged(warnings, decoder.damaged)
    return _capture.sampled(
        path, timeline, chosen, kept,
        frames_from_content=index.frames_from_content,
        frames_from_header=index.frames_from_header,
        fps_from_header=index.fps_from_header,
        seek=choice.mode,
        decoded=decoder.decoded,
        damaged=decoder.damaged,
        warnings=warnings,
        decoder="pyav",
        codec=index.codec,
    )


def _decode_all(
    path: str, fs_path: str, options: DecodeOptions, deadline: Deadline, planned: set[int], last: int | None = None
) -> tuple[list[float], dict[int, np.ndarray], Decoder]:
    """Decode sequentially from the start (a fresh container): each frame's time (ms) in output order and
    the ``planned`` frames (by that order)."""
    with _opened(path, fs_path, options) as (container, stream):
        decoder = Decoder(container, stream, deadline)
        decoder.packets = container.demux(stream)
        unit = float(stream.time_base) * 1000.0
        ms: list[float] = []
        kept: dict[int, np.ndarray] = {}
        for frame in decoder.frames():
            ms.append(frame.pts * unit if frame.pts is not None else (ms[-1] if ms else 0.0))  # Timeline repairs
            if len(ms) - 1 in planned:
                kept[len(ms) - 1] = to_rgb(frame)
            if last is not None and len(ms) > last:
                break
    return ms, kept, decoder


def _sample_counting(
    path: str,
    fs_path: str,
    scanned: tuple[PacketIndex, list[int]] | None,
    request: Request,
    deadline: Deadline,
    options: DecodeOptions,
    header: tuple[int, float, str],
) -> Clip:
    """Decode the whole file sequentially (the index is unusable or disagreed with the decoder)."""
    frames_from_header, fps_from_header, codec = header
    guess: set[int] = set()
    if scanned is not None:
        try:
            guess = set(Timeline.from_ms(scanned[0].ms, fps_from_header).targets(request, path))
        except VideoError:
            pass
    ms, kept, decoder = _decode_all(path, fs_path, options, deadline, guess)
    if not ms:
        raise undecodable(path)
    decoded, damaged = decoder.decoded, decoder.damaged
    timeline = Timeline.from_ms(ms, fps_from_header)
    targets = timeline.targets(request, path)
    missing = set(targets).difference(kept)
    if missing:
        _, more, again = _decode_all(path, fs_path, options, deadline, missing, last=max(missing))
        decoded += again.decoded
        kept.update((i, more[i]) for i in missing if i in more)
        if missing.difference(kept):
            raise VideoError(f"cannot decode {quote(path)}: frame {min(missing)} could not be read "
                             "(the file decodes inconsistently)")
    warnings: list[str] = []
    _capture.warn_damaged(warnings, damaged)
    return _capture.sampled(
        path, timeline, targets, kept,
        frames_from_content=len(ms),
        frames_from_header=frames_from_header,
        fps_from_header=fps_from_header,
        seek="exact",
        decoded=decoded,
        damaged=damaged,
        warnings=warnings,
        decoder="pyav",
        codec=codec,
    )

