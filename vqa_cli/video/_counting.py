"""The counting pass: decode the whole file sequentially when the packet index is missing or wrong.

Damaged or truncated files, timestamps that repeat or jump back and streams that do not start
with a keyframe are counted frame by frame; undecodable packets are skipped and reported.  Only
the sampled frames are kept, so memory stays at the requested frames however long the file is.
"""

from __future__ import annotations

import cv2
import numpy as np

from vqa_cli.video import _capture
from vqa_cli.video._index import PacketIndex, codec_name
from vqa_cli.video._inputs import Clip, Deadline, VideoError, quote, undecodable
from vqa_cli.video._options import DecodeOptions
from vqa_cli.video._sampling import Request, Timeline, plausible_fps

# Consecutive failed grabs tolerated in a counting pass (damaged packets) before
# the end of the file is assumed.
_MAX_FAILED_GRABS = 32
# Raw header frame counts above this are not used to plan a counting pass.
_MAX_PLANNED_FRAMES = 10_000_000


def decode_all(
    path: str, fs_path: str, planned: set[int], deadline: Deadline, threads: int, last: int | None = None
) -> tuple[list[float], dict[int, np.ndarray], int]:
    """Decode sequentially (grab only), retrieving the ``planned`` frame indices.

    Undecodable packets in the middle are skipped: a failed grab followed by a
    good one counts as damaged; ``_MAX_FAILED_GRABS`` failures in a row end the
    pass.  Returns (each frame's CAP_PROP_POS_MSEC, kept frames, damaged count).
    """
    cap = _capture.open_capture(path, fs_path, threads)
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
                    kept[index] = _capture.to_rgb(frame)
    finally:
        cap.release()
    return raw_ms, kept, damaged


def planned_guess(
    index_ms: list[float] | None, frames_from_header: int, fps_from_header: float, request: Request
) -> set[int]:
    """Targets guessed before a counting pass, so that it usually retrieves them in one go."""
    if index_ms is not None:
        ms = index_ms
    elif 0 < frames_from_header <= _MAX_PLANNED_FRAMES and plausible_fps(fps_from_header):
        ms = [i * 1000.0 / fps_from_header for i in range(frames_from_header)]
    else:
        return set()
    try:
        return set(Timeline.from_ms(ms, fps_from_header).targets(request, ""))
    except VideoError:
        return set()


def counting_pass(
    path: str, fs_path: str, request: Request, deadline: Deadline, guess: set[int], fps_from_header: float,
    threads: int,
) -> tuple[Timeline, list[int], dict[int, np.ndarray], int, int]:
    """Decode everything; returns (timeline, targets, frames, frames decoded, damaged packets)."""
    raw_ms, kept, damaged = decode_all(path, fs_path, guess, deadline, threads)
    if not raw_ms:
        raise undecodable(path)
    decoded = len(raw_ms)
    timeline = Timeline.from_ms(raw_ms, fps_from_header)
    targets = timeline.targets(request, path)
    missing = set(targets).difference(kept)
    if missing:
        _, more, _ = decode_all(path, fs_path, missing, deadline, threads, last=max(missing))
        kept.update((i, more[i]) for i in missing if i in more)
        decoded += max(missing) + 1
        lost = missing.difference(kept)
        if lost:
            raise VideoError(
                f"cannot decode {quote(path)}: frame {min(lost)} could not be read "
                "(the file decodes inconsistently)"
            )
    return timeline, targets, kept, decoded, damaged


def sample_counting(
    path: str, fs_path: str, index: PacketIndex | None, request: Request, deadline: Deadline, options: DecodeOptions
) -> Clip:
    """Sample by decoding the whole file sequentially (the index is missing or disagreed)."""
    threads = options.decoder_threads
    if index is not None:
        frames_from_header, fps_from_header = index.frames_from_header, index.fps_from_header
        codec = index.codec
    else:
        cap = _capture.open_capture(path, fs_path, threads)
        try:
            frames_from_header, fps_from_header = _capture.header_claims(cap)
            codec = codec_name(cap.get(cv2.CAP_PROP_FOURCC))
        finally:
            cap.release()
    guess = planned_guess(None if index is None else index.ms, frames_from_header, fps_from_header, request)
    timeline, targets, kept, decoded, damaged = counting_pass(
        path, fs_path, request, deadline, guess, fps_from_header, threads
    )
    warnings: list[str] = []
    _capture.warn_damaged(warnings, damaged)
    return _capture.sampled(
        path, timeline, targets, kept,
        frames_from_content=len(timeline.timestamps),
        frames_from_header=frames_from_header,
        fps_from_header=fps_from_header,
        seek="exact",
        decoded=decoded,
        damaged=damaged,
        warnings=warnings,
        codec=codec,
    )
