"""What goes in and what comes out: accepted paths, the ``Clip`` result, ``VideoError`` and the deadline.

Nothing here decodes; see ``_capture`` for opening files with OpenCV.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vqa_cli.errors import EXIT_FAILURE, VqaError

if TYPE_CHECKING:
    import numpy as np

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

LIBRARIES = {"opencv": "OpenCV", "pyav": "PyAV"}


class VideoError(VqaError):
    """A video or image cannot be used; ``str(e)`` is one line meant for users."""

    exit_code = EXIT_FAILURE
    kind = "video"

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
    frames_from_content: int  # real number of decodable frames (1 for images)
    is_image: bool
    frames_from_header: int  # what CAP_PROP_FRAME_COUNT claimed
    fps_from_header: float  # what CAP_PROP_FPS claimed
    seek: str = "exact"  # how the frames were found: "exact" or "keyframe" (what "auto" chose)
    decoded: int = 0  # frames the decoder produced for this call (seek lead-ins estimated)
    damaged: int = 0  # undecodable packets that were skipped
    warnings: list[str] = field(default_factory=list)  # one-line notes for users
    decoder: str = "opencv"  # what decoded the frames: "opencv" or "pyav" (``DecodeOptions.decoder`` chose it)
    codec: str = ""  # the video codec ("h264", "av1", an OpenCV FOURCC in lower case; "" for images)


def quote(path: str) -> str:
    """Quote a path for a one-line message."""
    text = str(path)
    return f"'{text}'" if text.isprintable() else repr(text)


def fmt_seconds(value: float) -> str:
    return f"{value:g}s"


def undecodable(path: str) -> VideoError:
    return VideoError(f"cannot decode {quote(path)}: not a video file or unsupported codec")


def undecodable_with(path: str, decoder: str, codec: str = "") -> VideoError:
    """The error of a forced ``--decoder`` that cannot decode the file's first frame."""
    stream = f"its {codec} stream" if codec else "it"
    return VideoError(f"cannot decode {quote(path)} with --decoder {decoder}: {LIBRARIES[decoder]} cannot decode "
                      f"{stream} (--decoder auto tries both)")


def check_file(path: str) -> str:
    """Return the filesystem path, or raise VideoError for a missing/unreadable/empty file."""
    fs_path = os.fspath(path)
    if not os.path.exists(fs_path):
        raise VideoError(f"no such file: {quote(path)}")
    if os.path.isdir(fs_path):
        raise VideoError(f"{quote(path)} is a directory, not a video or image file")
    if not os.access(fs_path, os.R_OK):
        raise VideoError(f"cannot read {quote(path)}: permission denied")
    try:
        size = os.path.getsize(fs_path)
    except OSError as exc:
        raise VideoError(f"cannot read {quote(path)}: {exc.strerror or exc}") from None
    if size == 0:
        raise VideoError(f"cannot decode {quote(path)}: the file is empty")
    return fs_path


def is_image_path(path: str) -> bool:
    """True when the path's extension is a still-image extension (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


class Deadline:
    """The end of a call's ``timeout``; ``check()`` between frames raises VideoError once it has passed."""

    def __init__(self, path: str, timeout: float | None) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self._path = path
        self._timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def check(self) -> None:
        if self._end is not None and time.monotonic() > self._end:
            raise VideoError(f"decoding {quote(self._path)} took longer than {self._timeout:g} s")
