"""The OpenCV boundary: opening captures quietly, turning decoded frames into RGB, images, first-frame grabs."""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypedDict, Unpack

import cv2
import numpy as np

from vqa_cli.video._inputs import Clip, VideoError, check_file, quote, undecodable
from vqa_cli.video._sampling import Timeline

_open_lock = threading.Lock()

# FFmpeg prints demuxer errors ("moov atom not found", ...) straight to stderr; they would
# clutter the CLI output and every failure is reported through VideoError anyway.  OpenCV reads
# this variable once, when a capture first uses FFmpeg in the process, so it is set (unless the
# user set it) around the first opening only and then restored.
_FFMPEG_LOGLEVEL = ("OPENCV_FFMPEG_LOGLEVEL", "-8")
_ffmpeg_quieted = False


@contextmanager
def quiet_opening() -> Iterator[None]:
    """Silence OpenCV's log while a capture opens (it warns about every file it cannot open), and
    FFmpeg's for the process (see ``_FFMPEG_LOGLEVEL``)."""
    global _ffmpeg_quieted
    with _open_lock:
        name, value = _FFMPEG_LOGLEVEL
        ours = not _ffmpeg_quieted and name not in os.environ
        if ours:
            os.environ[name] = value
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            yield
        finally:
            cv2.utils.logging.setLogLevel(previous)
            if ours:
                os.environ.pop(name, None)
            _ffmpeg_quieted = True


def open_capture(path: str, fs_path: str, threads: int) -> cv2.VideoCapture:
    """Open a decoding capture with the FFmpeg backend (auto-rotation on); VideoError if it cannot.

    ``threads`` > 0 sets the FFmpeg decoder's thread count; 0 leaves OpenCV's default (one per
    core, at most 16).
    """
    backend = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    params = [cv2.CAP_PROP_N_THREADS, threads] if threads > 0 and backend == cv2.CAP_FFMPEG else []
    with quiet_opening():
        try:
            cap = cv2.VideoCapture(fs_path, backend, params)
        except cv2.error:
            raise undecodable(path) from None
    if not cap.isOpened():
        cap.release()
        raise undecodable(path)
    # Phone videos carry a rotation in their metadata; apply it so frames come out upright.
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return cap


def open_raw(fs_path: str) -> cv2.VideoCapture | None:
    """A demuxer-only capture (packets, no decoding), or None when the backend cannot give one."""
    if not cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
        return None
    with quiet_opening():
        try:
            cap = cv2.VideoCapture(fs_path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
        except cv2.error:
            return None
    if not cap.isOpened():
        cap.release()
        return None
    return cap


def open_stream(stream: io.BytesIO, threads: int) -> cv2.VideoCapture | None:
    """A capture decoding an in-memory stream (it does not own ``stream``: keep it alive until
    ``release()``); None when OpenCV raises.  The caller checks ``isOpened()`` and releases it."""
    params = [cv2.CAP_PROP_N_THREADS, threads] if threads > 0 else []
    with quiet_opening():
        try:
            return cv2.VideoCapture(stream, cv2.CAP_FFMPEG, params)
        except cv2.error:
            return None


def header_int(value: float) -> int:
    """A count a header claims (CAP_PROP_FRAME_COUNT), 0 when it claims nothing usable."""
    if not math.isfinite(value) or value <= 0:
        return 0
    return int(round(value))


def header_float(value: float) -> float:
    """A rate a header claims (CAP_PROP_FPS), 0.0 when it claims nothing usable."""
    return float(value) if math.isfinite(value) and value > 0 else 0.0


def header_claims(cap: cv2.VideoCapture) -> tuple[int, float]:
    """(frame count, frame rate) as the capture's header claims them."""
    return header_int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), header_float(cap.get(cv2.CAP_PROP_FPS))


def to_rgb(frame: np.ndarray) -> np.ndarray:
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


def rotate(frame: np.ndarray, degrees: int) -> np.ndarray:
    """Apply a display rotation the way OpenCV's CAP_PROP_ORIENTATION_AUTO does."""
    if degrees == 90:
        return cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
    if degrees == 180:
        return cv2.rotate(frame, cv2.ROTATE_180)
    if degrees == 270:
        return cv2.rotate(frame, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return frame


class ClipFacts(TypedDict, total=False):
    """The ``Clip`` fields a decoding path measures, besides the frames and the timeline's."""

    frames_from_content: int
    frames_from_header: int
    fps_from_header: float
    seek: str
    decoded: int
    damaged: int
    warnings: list[str]
    decoder: str
    codec: str


def sampled(
    path: str, timeline: Timeline, chosen: list[int], frames: dict[int, np.ndarray], **facts: Unpack[ClipFacts]
) -> Clip:
    """The ``Clip`` of the frames ``chosen`` (indices into ``timeline``) out of the decoded ``frames``;
    ``facts`` are the other ``Clip`` fields (frame counts, seek mode, decoder, warnings, ...)."""
    return Clip(path=path, frames=stack([frames[i] for i in chosen]), indices=list(chosen),
                timestamps=[timeline.timestamps[i] for i in chosen], duration=timeline.duration, fps=timeline.fps,
                is_image=False, **facts)


def warn_damaged(warnings: list[str], damaged: int) -> None:
    """Add the warning for ``damaged`` skipped packets (none when there were none)."""
    if damaged:
        warnings.append(f"skipped {damaged} undecodable packet{'s' if damaged != 1 else ''}")


def shared_keys_warning(targets: int, keys: int) -> str:
    """The note for keyframe seeking that returns fewer frames than asked (targets sharing keyframes)."""
    return f"{targets} targets share {keys} keyframes; returned {keys} frames"


def stack(frames: list[np.ndarray]) -> np.ndarray:
    """Stack frames into one C-contiguous array, resizing odd-sized ones to the first's size."""
    height, width = frames[0].shape[:2]
    same = [
        f if f.shape[:2] == (height, width) else cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA)
        for f in frames
    ]
    return np.ascontiguousarray(np.stack(same, axis=0))


def read_image(path: str) -> Clip:
    """Read one still image as a one-frame clip (EXIF orientation applied, unicode paths ok)."""
    fs_path = check_file(path)
    try:
        data = np.fromfile(fs_path, dtype=np.uint8)
    except OSError as exc:
        raise VideoError(f"cannot read {quote(path)}: {exc.strerror or exc}") from None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise VideoError(f"cannot decode {quote(path)}: not an image file or unsupported format")
    rgb = np.ascontiguousarray(to_rgb(image))
    return Clip(
        path=path,
        frames=rgb[np.newaxis],
        indices=[0],
        timestamps=[0.0],
        duration=0.0,
        fps=0.0,
        frames_from_content=1,
        is_image=True,
        frames_from_header=1,
        fps_from_header=0.0,
    )


def grabs_a_frame(path: str, fs_path: str, threads: int) -> bool:
    """Whether OpenCV opens the file and decodes its first frame."""
    try:
        cap = open_capture(path, fs_path, threads=threads)
    except VideoError:
        return False
    try:
        return bool(cap.grab())
    finally:
        cap.release()

