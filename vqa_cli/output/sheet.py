"""Contact sheet: a grid image of a clip's sampled frames, each labelled with its time and index."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np

from vqa_cli.video import Clip, VideoError

__all__ = ["SHEET_FORMATS", "PADDING", "contact_sheet", "label_height", "sheet_size"]

# Output extensions -> cv2.imencode parameters.
SHEET_FORMATS: dict[str, list[int]] = {
    ".jpg": [cv2.IMWRITE_JPEG_QUALITY, 90],
    ".jpeg": [cv2.IMWRITE_JPEG_QUALITY, 90],
    ".png": [cv2.IMWRITE_PNG_COMPRESSION, 3],
}
PADDING = 4  # pixels between cells and around the grid
_BACKGROUND = (24, 24, 24)  # BGR
_STRIP = (0, 0, 0)
_TEXT = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def label_height(thumb_width: int) -> int:
    """Height in pixels of the dark label strip under each thumbnail."""
    return max(14, round(thumb_width * 0.08))


def _thumb_height(frame_hw: tuple[int, int], thumb_width: int) -> int:
    height, width = frame_hw
    return max(1, round(height * thumb_width / width))


def _columns(n: int, columns: int | None) -> int:
    if columns is None:
        return max(1, math.ceil(math.sqrt(n)))
    if columns <= 0:
        raise ValueError(f"columns must be positive, got {columns}")
    return min(columns, max(1, n))


def sheet_size(clip: Clip, columns: int | None = None, thumb_width: int = 320) -> tuple[int, int]:
    """(width, height) in pixels of the sheet ``contact_sheet`` writes for these arguments."""
    n = len(clip.frames)
    cols = _columns(n, columns)
    rows = max(1, math.ceil(n / cols))
    cell_h = _thumb_height(clip.frames.shape[1:3], thumb_width) + label_height(thumb_width)
    return cols * thumb_width + (cols + 1) * PADDING, rows * cell_h + (rows + 1) * PADDING


def _put_label(strip: np.ndarray, left: str, right: str) -> None:
    """Draw ``left`` left-aligned and ``right`` right-aligned, white on the dark strip."""
    height, width = strip.shape[:2]
    margin = max(2, height // 5)
    scale = height / 40.0
    thickness = 1
    while True:
        (lw, lh), _ = cv2.getTextSize(left, _FONT, scale, thickness)
        (rw, _rh), _ = cv2.getTextSize(right, _FONT, scale, thickness)
        if lw + rw + 3 * margin <= width or scale < 0.2:
            break
        scale *= 0.9
    baseline_y = (height + lh) // 2
    cv2.putText(strip, left, (margin, baseline_y), _FONT, scale, _TEXT, thickness, cv2.LINE_AA)
    cv2.putText(strip, right, (width - margin - rw, baseline_y), _FONT, scale, _TEXT, thickness, cv2.LINE_AA)


def contact_sheet(clip: Clip, out_path: str, columns: int | None = None, thumb_width: int = 320) -> None:
    """Write a grid of the clip's frames to ``out_path`` (.jpg/.jpeg/.png, chosen by extension).

    Each thumbnail is ``thumb_width`` pixels wide and has a dark strip under it
    labelled "12.34s" (the frame's timestamp) and "#index" (its frame index).
    ``columns`` defaults to ceil(sqrt(N)).  Raises VideoError for an unknown
    extension or when the file cannot be written; ValueError for bad sizes.
    """
    ext = os.path.splitext(os.fspath(out_path))[1].lower()
    if ext not in SHEET_FORMATS:
        known = ", ".join(sorted(SHEET_FORMATS))
        raise VideoError(
            f"cannot write contact sheet '{out_path}': unknown image format '{ext}' (use {known})"
        )
    if thumb_width <= 0:
        raise ValueError(f"thumb_width must be positive, got {thumb_width}")
    n = len(clip.frames)
    if n == 0:
        raise ValueError("clip has no frames")

    cols = _columns(n, columns)
    thumb_w = thumb_width
    thumb_h = _thumb_height(clip.frames.shape[1:3], thumb_width)
    strip_h = label_height(thumb_width)
    width, height = sheet_size(clip, columns, thumb_width)
    sheet = np.empty((height, width, 3), dtype=np.uint8)
    sheet[:] = _BACKGROUND

    src_w = clip.frames.shape[2]
    interpolation = cv2.INTER_AREA if thumb_w < src_w else cv2.INTER_LINEAR
    for k in range(n):
        row, col = divmod(k, cols)
        x = PADDING + col * (thumb_w + PADDING)
        y = PADDING + row * (thumb_h + strip_h + PADDING)
        bgr = cv2.cvtColor(clip.frames[k], cv2.COLOR_RGB2BGR)
        sheet[y : y + thumb_h, x : x + thumb_w] = cv2.resize(
            bgr, (thumb_w, thumb_h), interpolation=interpolation
        )
        strip = sheet[y + thumb_h : y + thumb_h + strip_h, x : x + thumb_w]
        strip[:] = _STRIP
        time_s = clip.timestamps[k] if k < len(clip.timestamps) else 0.0
        index = clip.indices[k] if k < len(clip.indices) else k
        _put_label(strip, f"{time_s:.2f}s", f"#{index}")

    ok, encoded = cv2.imencode(ext, sheet, SHEET_FORMATS[ext])
    if not ok:
        raise VideoError(f"cannot encode contact sheet '{out_path}' as {ext}")
    from vqa_cli.output.writer import write_text

    write_text(out_path, encoded.tobytes(), remember=True)  # atomic, and remembered as vqa's (docs/output.md)
