"""What the tests of vqa_cli.video share: the clip sets they sample, and the checks of a sampled clip.

The clips themselves come from ``clips.py`` (the clip factory); this module only names sets of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.clips import av1_clip, ffmpeg_clip, frame_number, make_clip, vpx, x264, x265
from vqa_cli.video import Clip

N_FRAMES = 100  # the clip100 clip: 100 frames at 10 fps, 64x48 mp4v
FPS = 10.0
SEEKS = ["exact", "keyframe", "auto"]


def hundred_frame_clip(folder: Path) -> str:
    return make_clip(folder / "hundred.mp4", N_FRAMES, fps=FPS)


def encoded_clips(folder: Path) -> dict[str, str]:
    """Self-numbering 300-frame clips with known keyframe intervals (ffmpeg) plus OpenCV-written ones."""
    return {
        "mp4v-gop12.mp4": make_clip(folder / "mp4v.mp4", 300, fps=30.0),
        "mjpg-intra.avi": make_clip(folder / "mjpg.avi", 120, fps=30.0, fourcc="MJPG"),
        "h264-gop10.mp4": ffmpeg_clip(folder / "g10.mp4", 300, x264(10, 0)),
        "h264-gop50-bf2.mp4": ffmpeg_clip(folder / "g50.mp4", 300, x264(50, 2)),
        "h264-gop25-bf3.mkv": ffmpeg_clip(folder / "g25.mkv", 300, x264(25, 3)),
        "h264-gop50-bf2.ts": ffmpeg_clip(folder / "g50.ts", 300, x264(50, 2)),
        "h264-open-gop.mkv": ffmpeg_clip(folder / "open.mkv", 300, x264(50, 2, "-x264opts", "open_gop=1")),
    }


def codec_clips(folder: Path) -> dict[str, str]:
    """One self-numbering clip per codec the tests make (named by codec), each with several keyframes."""
    return {
        "mpeg4": make_clip(folder / "mpeg4.mp4", 90, fps=30.0),
        "mjpeg": make_clip(folder / "mjpeg.avi", 60, fps=30.0, fourcc="MJPG"),
        "h264": ffmpeg_clip(folder / "h264.mp4", 120, x264(30, 2)),
        "hevc": ffmpeg_clip(folder / "hevc.mkv", 120, x265(30, 2)),
        "vp8": ffmpeg_clip(folder / "vp8.webm", 120, vpx("libvpx", 30)),
        "vp9": ffmpeg_clip(folder / "vp9.webm", 120, vpx("libvpx-vp9", 30)),
        "av1": av1_clip(folder / "av1.mkv", 120, gop=30),
    }


def red_image(height: int = 30, width: int = 40) -> np.ndarray:
    """A pure red BGR image (as OpenCV writes it)."""
    bgr = np.zeros((height, width, 3), dtype=np.uint8)
    bgr[..., 2] = 255
    return bgr


def assert_clip_consistent(clip: Clip) -> None:
    """Invariants every sampled clip satisfies, checked against the frames' own numbers."""
    n = len(clip.indices)
    assert clip.frames.dtype == np.uint8
    assert clip.frames.ndim == 4 and clip.frames.shape[0] == n and clip.frames.shape[3] == 3
    assert clip.frames.flags["C_CONTIGUOUS"]
    assert len(clip.timestamps) == n
    assert clip.indices == sorted(set(clip.indices))
    assert all(0 <= i < clip.frames_from_content for i in clip.indices)
    assert all(0.0 <= t < clip.duration for t in clip.timestamps)
    assert [frame_number(f) for f in clip.frames] == clip.indices


def assert_real_frames(clip: Clip, oracle: list[np.ndarray]) -> None:
    """Oracle: a full sequential decode.  Every returned frame is the frame at its index."""
    assert clip.frames_from_content == len(oracle)
    for frame, i in zip(clip.frames, clip.indices, strict=True):
        assert np.array_equal(frame, oracle[i]), f"frame {i} differs from the sequential decode"
