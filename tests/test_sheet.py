"""Contact sheets (vqa_cli.output.sheet) of sampled clips."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.video_checks import red_image
from vqa_cli.output.sheet import PADDING, contact_sheet, label_height, sheet_size
from vqa_cli.video import VideoError, read_image, sample_frames


@pytest.mark.parametrize(
    ("n", "columns", "suffix", "grid"),
    [(7, None, ".png", (3, 3)), (4, None, ".jpg", (2, 2)), (5, 5, ".jpeg", (5, 1)), (3, 10, ".png", (3, 1))],
)
def test_contact_sheet_grid(
    clip100: str, tmp_path: Path, n: int, columns: int | None, suffix: str, grid: tuple[int, int]
) -> None:
    clip = sample_frames(clip100, n)
    out = tmp_path / f"sheet{suffix}"
    contact_sheet(clip, str(out), columns=columns, thumb_width=160)
    image = cv2.imread(str(out))
    assert image is not None
    cols, rows = grid
    thumb_h = 120  # 64x48 frames scaled to 160 wide
    expected_w = cols * 160 + (cols + 1) * PADDING
    expected_h = rows * (thumb_h + label_height(160)) + (rows + 1) * PADDING
    assert image.shape == (expected_h, expected_w, 3)
    assert sheet_size(clip, columns, 160) == (expected_w, expected_h)


def test_contact_sheet_unicode_path_and_image_clip(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    cv2.imencode(".png", red_image())[1].tofile(str(path))
    out = tmp_path / "лист.png"
    contact_sheet(read_image(str(path)), str(out))
    image = cv2.imdecode(np.fromfile(str(out), dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] == 320 + 2 * PADDING
    # The thumbnail stays red (BGR order on disk).
    assert tuple(image[PADDING + 10, PADDING + 10]) == (0, 0, 255)


def test_contact_sheet_unknown_extension(clip100: str, tmp_path: Path) -> None:
    clip = sample_frames(clip100, 2)
    with pytest.raises(VideoError, match="unknown image format"):
        contact_sheet(clip, str(tmp_path / "sheet.gif"))
    assert not (tmp_path / "sheet.gif").exists()
