"""Synthetic clips for the tests and the benchmarks: ``make_clip`` (self-numbering frames, read back with
``frame_number``), ``scene_clip`` (scenes with known cuts) and ``ffmpeg_exe`` (the ffmpeg binary).

Shared by tests/ (tests/clips.py re-exports them) and benchmarks/, which import the project, never tests/.
OpenCV and numpy load inside the functions, as everywhere in vqa_cli.
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import Any

GRID_COLUMNS = 4
GRID_ROWS = 3
BITS = GRID_COLUMNS * GRID_ROWS
MODULUS = 1 << BITS  # frame indices are recoverable modulo this (4096)

_LOW, _HIGH = 16, 240


def _block(shape_hw: tuple[int, int], bit: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of block ``bit`` in a frame of the given height and width."""
    height, width = shape_hw
    row, col = divmod(bit, GRID_COLUMNS)
    y0, y1 = row * height // GRID_ROWS, (row + 1) * height // GRID_ROWS
    x0, x1 = col * width // GRID_COLUMNS, (col + 1) * width // GRID_COLUMNS
    return y0, y1, x0, x1


def frame_image(index: int, size: tuple[int, int] = (64, 48)) -> Any:
    """The H x W x 3 uint8 frame that encodes ``index`` (``size`` is (width, height)).

    The frame is a grid of ``BITS`` large black/white blocks (4 columns x 3 rows); block k is white when bit k of
    ``index % MODULUS`` is set. Big flat blocks survive lossy codecs (mp4v, MJPG) at any quality, and
    ``frame_number`` reads the index back by averaging the centre of each block.
    """
    import numpy as np

    width, height = size
    frame = np.full((height, width, 3), _LOW, dtype=np.uint8)
    value = index % MODULUS
    for bit in range(BITS):
        if value >> bit & 1:
            y0, y1, x0, x1 = _block((height, width), bit)
            frame[y0:y1, x0:x1] = _HIGH
    return frame


def frame_number(rgb: Any) -> int:
    """Read back the index encoded by ``frame_image`` (modulo ``MODULUS``) from a decoded frame."""
    import numpy as np

    gray = rgb.astype(np.float32).mean(axis=2) if rgb.ndim == 3 else rgb.astype(np.float32)
    value = 0
    for bit in range(BITS):
        y0, y1, x0, x1 = _block(gray.shape[:2], bit)
        dy, dx = (y1 - y0) // 4, (x1 - x0) // 4
        centre = gray[y0 + dy : y1 - dy, x0 + dx : x1 - dx]
        if float(centre.mean()) > (_LOW + _HIGH) / 2:
            value |= 1 << bit
    return value


def make_clip(
    path: str | os.PathLike[str],
    n_frames: int,
    fps: float = 10.0,
    size: tuple[int, int] = (64, 48),
    fourcc: str = "mp4v",
) -> str:
    """Write a video of ``n_frames`` self-numbering frames (``frame_image``); ``size`` is (width, height)."""
    import cv2

    path = os.fspath(path)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path!r} with fourcc {fourcc!r}")
    try:
        for index in range(n_frames):
            writer.write(cv2.cvtColor(frame_image(index, size), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


# Adjacent scenes differ in hue and brightness; a square moves at a different speed in each.
SCENE_COLOURS = [(20, 20, 20), (240, 220, 40), (20, 40, 180), (235, 235, 235), (160, 20, 20), (40, 220, 120)]


def scene_clip(path: str, lengths: list[int], fps: float = 10.0, size: tuple[int, int] = (96, 64)) -> str:
    """A clip of concatenated scenes of ``lengths`` frames each: the cuts are at their running sums."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for s, n in enumerate(lengths):
        colour = np.array(SCENE_COLOURS[s % len(SCENE_COLOURS)], np.uint8)
        for k in range(n):
            frame = np.empty((size[1], size[0], 3), np.uint8)
            frame[:] = colour
            x = (k * 5 * (s + 1)) % (size[0] - 16)
            frame[10:26, x:x + 16] = 255 - colour
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@functools.cache
def ffmpeg_exe() -> str:
    """The ffmpeg binary: the ``ffmpeg`` command on PATH, else the static build that imageio-ffmpeg bundles.

    imageio-ffmpeg is in the ``test`` extra, so after the README's install every test that needs
    ffmpeg runs, with or without a system ffmpeg.  Raises FileNotFoundError (never skips) when
    neither is there, so a missing binary cannot pass for a green run.
    """
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise FileNotFoundError(
            "no ffmpeg: install the test extra (pip install -e '.[test]', which brings imageio-ffmpeg) "
            "or put an ffmpeg command on PATH"
        ) from None
    return imageio_ffmpeg.get_ffmpeg_exe()
