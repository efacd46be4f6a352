"""Synthetic test videos whose frames carry their own index.

The self-numbering frames (``frame_image``, ``frame_number``), ``make_clip`` and ``ffmpeg_exe`` live in
``vqa_cli.testing``, which the benchmarks import too; they are re-exported here beside the test-only clips
(lying headers, rotation, codecs through ffmpeg, damage) built on them.
"""

from __future__ import annotations

import os
import struct
import subprocess

import cv2
import numpy as np

from vqa_cli.testing import (  # noqa: F401  (re-exported for the tests)
    BITS,
    GRID_COLUMNS,
    GRID_ROWS,
    MODULUS,
    ffmpeg_exe,
    frame_image,
    frame_number,
    make_clip,
)


def _header_counts(path: str) -> tuple[int, int]:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        claimed = int(round(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        real = 0
        while cap.grab():
            real += 1
    finally:
        cap.release()
    return claimed, real


def make_lying_clip(
    path: str | os.PathLike[str],
    real_frames: int,
    claimed_frames: int,
    fps: float = 10.0,
    size: tuple[int, int] = (64, 48),
) -> str:
    """Write an MJPG .avi with ``real_frames`` frames whose header claims ``claimed_frames``.

    AVI layout (little-endian): ``'avih' <u32 size> MainAVIHeader`` where
    dwTotalFrames is the 5th u32 (offset 16 into the header), and
    ``'strh' <u32 size> AVIStreamHeader`` where dwLength is at offset 32
    (fccType, fccHandler, dwFlags, wPriority+wLanguage, dwInitialFrames,
    dwScale, dwRate, dwStart, dwLength).  FFmpeg's AVI demuxer takes the
    stream's frame count from strh.dwLength; both fields are patched.  The
    function asserts that OpenCV then reports ``claimed_frames`` and still
    decodes ``real_frames``, so a test notices if the trick stops working.
    """
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() != ".avi":
        raise ValueError("make_lying_clip writes an .avi file")
    make_clip(path, real_frames, fps=fps, size=size, fourcc="MJPG")
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    avih = data.find(b"avih")
    strh = data.find(b"strh")
    assert avih >= 0 and strh >= 0, "not an AVI file with avih/strh chunks"
    assert data[strh + 8 : strh + 12] == b"vids", "first stream is not video"
    assert struct.unpack_from("<I", data, avih + 8 + 16)[0] == real_frames
    assert struct.unpack_from("<I", data, strh + 8 + 32)[0] == real_frames
    struct.pack_into("<I", data, avih + 8 + 16, claimed_frames)
    struct.pack_into("<I", data, strh + 8 + 32, claimed_frames)
    with open(path, "wb") as fh:
        fh.write(data)
    claimed, real = _header_counts(path)
    assert claimed == claimed_frames, f"header patch failed: OpenCV reports {claimed}, not {claimed_frames}"
    assert real == real_frames, f"patched file decodes {real} frames, not {real_frames}"
    return path


def make_rotated_clip(
    path: str | os.PathLike[str],
    n_frames: int,
    fps: float = 10.0,
    size: tuple[int, int] = (64, 48),
) -> str:
    """Write an .mp4 whose track carries a 90-degree display rotation (no ffmpeg binary needed).

    The 'tkhd' box's transformation matrix (nine big-endian 32-bit values after
    the version-dependent times, the reserved fields, layer, alternate group and
    volume) is replaced by a 90-degree rotation, which is what phones write and
    what FFmpeg turns into a display matrix.  Asserts that OpenCV reports it.
    """
    path = os.fspath(path)
    make_clip(path, n_frames, fps=fps, size=size, fourcc="mp4v")
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    tkhd = data.find(b"tkhd")
    assert tkhd >= 0, "no tkhd box"
    version = data[tkhd + 4]
    times = 8 + 8 + 4 + 4 + 8 if version == 1 else 4 + 4 + 4 + 4 + 4
    matrix = tkhd + 4 + 4 + times + 8 + 2 + 2 + 2 + 2
    identity = (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    assert struct.unpack_from(">9i", data, matrix) == identity, "unexpected tkhd layout"
    struct.pack_into(">9i", data, matrix, 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    with open(path, "wb") as fh:
        fh.write(data)
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        rotation = cap.get(cv2.CAP_PROP_ORIENTATION_META)
    finally:
        cap.release()
    assert rotation in (90.0, 270.0, -90.0), f"rotation patch failed: OpenCV reports {rotation}"
    return path


# --------------------------------------------------------------------------- decoding oracle


def decode_all(path: str | os.PathLike[str]) -> tuple[list[np.ndarray], list[float]]:
    """Every frame of a full sequential OpenCV decode (RGB, upright) and its CAP_PROP_POS_MSEC.

    A failed grab followed by good ones is a damaged packet and is skipped, as
    vqa's counting pass does; 32 failures in a row end the file.
    """
    cap = cv2.VideoCapture(os.fspath(path), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    frames: list[np.ndarray] = []
    ms: list[float] = []
    failures = 0
    try:
        while failures <= 32:
            if not cap.grab():
                failures += 1
                continue
            failures = 0
            frames.append(cv2.cvtColor(cap.retrieve()[1], cv2.COLOR_BGR2RGB))
            ms.append(cap.get(cv2.CAP_PROP_POS_MSEC))
    finally:
        cap.release()
    return frames, ms


# --------------------------------------------------------------------------- clips made by ffmpeg


def ffmpeg_clip(
    path: str | os.PathLike[str],
    n_frames: int,
    encoder: list[str],
    fps: float = 30.0,
    size: tuple[int, int] = (128, 96),
    filters: str | None = None,
    images: list[np.ndarray] | None = None,
) -> str:
    """Encode self-numbering frames with the ffmpeg binary (``ffmpeg_exe``).

    ``encoder`` holds the output options, e.g. ``["-c:v", "libx264", "-g", "50"]``;
    ``filters`` an optional ``-vf`` filter chain (e.g. a setpts expression); ``images`` (RGB, ``size``)
    replaces the self-numbering frames.
    """
    path = os.fspath(path)
    width, height = size
    raw = b"".join(frame_image(i, size).tobytes() for i in range(n_frames)) if images is None else b"".join(
        np.ascontiguousarray(image, np.uint8).tobytes() for image in images)
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}"]
    cmd += ["-r", f"{fps:g}", "-i", "-"]
    if filters:
        cmd += ["-vf", filters]
    cmd += [*encoder, path]
    subprocess.run(cmd, input=raw, check=True, capture_output=True)
    return path


def vfr_clip(
    path: str | os.PathLike[str],
    times: list[float],
    fps: float = 30.0,
    encoder: tuple[str, ...] = ("-c:v", "ffv1"),
    size: tuple[int, int] = (64, 48),
    images: list[np.ndarray] | None = None,
) -> str:
    """A variable frame rate: self-numbering frames 0, 1, ... (or ``images``) shown at ``times`` (seconds,
    increasing), as a screen recording that holds a frame on screen for seconds.  Frames go in at ``fps`` (the
    header's nominal rate: Matroska keeps it as the default frame duration), ``setpts`` moves frame N to
    ``times[N]`` and ``-fps_mode vfr`` keeps them so (no frame is duplicated or dropped).  Check the result with
    ``pyav_decode_all``, the oracle for the real timestamps."""
    expr = f"{times[-1]:g}"
    for n in range(len(times) - 2, -1, -1):
        expr = f"if(eq(N,{n}),{times[n]:g},{expr})"
    return ffmpeg_clip(path, len(times), [*encoder, "-fps_mode", "vfr"], fps=fps, size=size,
                       filters=f"setpts='({expr})/TB'", images=images)


def x264(gop: int, bframes: int, *extra: str) -> list[str]:
    """libx264 options for a fixed keyframe interval (no scene-cut keyframes) and B-frames."""
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}"
    return ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-x264-params", params, *extra]


def x265(gop: int, bframes: int) -> list[str]:
    """libx265 (HEVC) options for a fixed keyframe interval and B-frames."""
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:log-level=error"
    return ["-c:v", "libx265", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-x265-params", params]


def vpx(encoder: str, gop: int) -> list[str]:
    """libvpx options (``encoder``: "libvpx" for VP8, "libvpx-vp9" for VP9) for a fixed keyframe interval."""
    return ["-c:v", encoder, "-g", str(gop), "-keyint_min", str(gop), "-deadline", "realtime", "-cpu-used", "8",
            "-pix_fmt", "yuv420p"]


def av1_clip(
    path: str | os.PathLike[str],
    n_frames: int,
    gop: int = 60,
    fps: int = 30,
    size: tuple[int, int] = (128, 96),
) -> str:
    """Encode self-numbering frames to AV1 with PyAV's own ``libsvtav1`` (no ffmpeg binary needed).

    SVT-AV1's default random-access structure codes frames out of display order (hidden frames, like
    B-frames); ``gop`` is the keyframe interval.  Whether the installed OpenCV decodes AV1 depends on
    its wheel; the tests hold for either.
    """
    import av

    path = os.fspath(path)
    width, height = size
    with av.open(path, "w") as out:
        # Preset 8: at 10 some deep-hierarchy frames of long GOPs lose a block (their numbers misread).
        options = {"preset": "8", "g": str(gop), "svtav1-params": "lp=1"}
        stream = out.add_stream("libsvtav1", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_image(i, size), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def pyav_decode_all(path: str | os.PathLike[str]) -> tuple[list[np.ndarray], list[float]]:
    """Oracle for either decoder: every frame of a full sequential PyAV decode (RGB) and its time (s)."""
    import av

    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        frames = [(f.to_ndarray(format="rgb24"), float(f.pts * stream.time_base)) for f in container.decode(stream)]
    return [f for f, _ in frames], [t for _, t in frames]


def audio_only(path: str | os.PathLike[str]) -> str:
    """An AAC-in-MP4 file without any video stream (made by ``ffmpeg_exe``)."""
    path = os.fspath(path)
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", path]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def undecodable_video(path: str | os.PathLike[str]) -> str:
    """An AVI whose video stream is A64 multicolour (``a64multi``): FFmpeg writes it but has no decoder for it,
    so the file has a video stream that neither OpenCV nor PyAV decodes."""
    return ffmpeg_clip(path, 10, ["-c:v", "a64multi"])


def claim_fps_mkv(path: str | os.PathLike[str], claimed_fps: float) -> None:
    """Rewrite a Matroska video track's DefaultDuration so that the header claims ``claimed_fps``.

    The element (ID 0x23E383, an unsigned integer of nanoseconds per frame) is
    what FFmpeg turns into the stream's average frame rate; the blocks' own
    timestamps are left alone.  Asserts that OpenCV then reports the claim.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    at = data.find(b"\x23\xe3\x83")
    assert at >= 0, "no DefaultDuration element"
    size_byte = data[at + 3]
    length = 8 - (size_byte.bit_length() - 1)  # EBML size: the leading 1 bit marks the width
    assert length == 1, "unexpected DefaultDuration size"
    width = size_byte & 0x7F
    value = round(1e9 / claimed_fps)
    data[at + 4 : at + 4 + width] = value.to_bytes(width, "big")
    with open(path, "wb") as fh:
        fh.write(data)
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        reported = cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    assert abs(reported - claimed_fps) < 0.5, f"fps patch failed: OpenCV reports {reported}"


def damage(path: str | os.PathLike[str], out: str | os.PathLike[str], at: float, n_bytes: int, seed: int = 0) -> str:
    """Copy a file with ``n_bytes`` of random garbage written at fraction ``at`` of its size."""
    data = bytearray(open(path, "rb").read())
    start = int(len(data) * at)
    data[start : start + n_bytes] = np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
    with open(out, "wb") as fh:
        fh.write(data)
    return os.fspath(out)


def truncate(path: str | os.PathLike[str], out: str | os.PathLike[str], keep: float) -> str:
    """Copy the first ``keep`` fraction of a file (a download cut short)."""
    data = open(path, "rb").read()
    with open(out, "wb") as fh:
        fh.write(data[: int(len(data) * keep)])
    return os.fspath(out)
