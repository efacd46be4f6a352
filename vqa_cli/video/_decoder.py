"""Which library decodes a file (``--decoder``): OpenCV when it decodes the file's first frame, else PyAV.

Decided once per file (``wanted``), by what the installed libraries do with that file, never by a codec list;
``probe`` is the CLI's fail-fast check that one of them decodes a frame. ``av`` is imported inside the
functions that use it.
"""

from __future__ import annotations

from vqa_cli.settings import DEFAULT_DECODER
from vqa_cli.video import _capture
from vqa_cli.video._index import PacketIndex
from vqa_cli.video._inputs import check_file, is_image_path, undecodable, undecodable_with


def wanted(path: str, fs_path: str, index: PacketIndex | None, decoder: str = DEFAULT_DECODER) -> bool:
    """Whether this file goes through PyAV (decided once per file, by what the installed libraries do with it):

    * ``"auto"``: OpenCV cannot grab its first frame and PyAV opens a video stream;
    * ``"opencv"``: never; VideoError (one line) when OpenCV cannot grab its first frame;
    * ``"pyav"``: always; VideoError (one line) when PyAV cannot decode its first frame.
    """
    if decoder == "pyav":
        if not first_frame(fs_path):
            raise undecodable_with(path, "pyav", index.codec if index is not None else "")
        return True
    grabs = _capture.grabs_a_frame(path, fs_path, threads=1)
    if decoder == "opencv" and not grabs:
        raise undecodable_with(path, "opencv", index.codec if index is not None else "")
    return not grabs and has_video(fs_path)


def has_video(fs_path: str) -> bool:
    """Whether PyAV opens the file and finds a video stream (nothing is decoded)."""
    try:
        import av
    except ImportError:
        return False
    try:
        with av.open(fs_path) as container:
            return bool(container.streams.video)
    except (av.FFmpegError, OSError, ValueError):
        return False


def first_frame(fs_path: str) -> bool:
    """Whether PyAV decodes a frame of the file's video stream."""
    try:
        import av
    except ImportError:
        return False
    try:
        with av.open(fs_path) as container:
            if container.streams.video:
                for _ in container.decode(container.streams.video[0]):
                    return True
    except (av.FFmpegError, OSError, ValueError):
        return False
    return False


def probe(path: str) -> None:
    """Fail fast (VideoError) when ``path`` is missing or yields no frame; decodes one frame at most
    (with OpenCV, or with PyAV where OpenCV cannot)."""
    fs_path = check_file(path)
    if is_image_path(path) or _capture.grabs_a_frame(path, fs_path, threads=0):
        return
    if not first_frame(fs_path):  # files OpenCV cannot decode (AV1, ...) go through PyAV
        raise undecodable(path)
