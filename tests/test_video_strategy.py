"""Keyframe and auto modes (vqa_cli.video._strategy): which way the frames are reached, and what comes back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.clips import decode_all, frame_number, make_rotated_clip
from tests.video_checks import N_FRAMES, assert_real_frames
from vqa_cli.video import DecodeOptions, sample_frames, uniform_indices


def test_keyframe_mode_snaps_targets_to_the_nearest_keyframe(encoded: dict[str, str]) -> None:
    clip = sample_frames(encoded["h264-gop50-bf2.mp4"], 4, seek="keyframe")
    # Targets 37, 112, 187, 262; keyframes every 50 frames.
    assert clip.seek == "keyframe"
    assert clip.indices == [50, 100, 200, 250]
    assert clip.timestamps == [round(i / 30.0, 3) for i in clip.indices]
    assert [frame_number(f) for f in clip.frames] == clip.indices
    assert not clip.warnings


def test_keyframe_mode_decodes_about_one_frame_per_target(encoded: dict[str, str]) -> None:
    path = encoded["h264-gop10.mp4"]
    two = sample_frames(path, 2, seek="keyframe")
    twenty = sample_frames(path, 20, seek="keyframe")
    assert len(twenty.indices) == 20 and all(i % 10 == 0 for i in twenty.indices)
    # The fixed part (frame 0 check, end check) is the same; each further keyframe costs one decode.
    assert twenty.decoded - two.decoded <= len(twenty.indices) - len(two.indices)


def test_keyframe_mode_returns_one_frame_per_keyframe_and_says_so(encoded: dict[str, str]) -> None:
    clip = sample_frames(encoded["h264-gop50-bf2.mp4"], 32, seek="keyframe")
    assert clip.indices == [0, 50, 100, 150, 200, 250]
    assert any("share 6 keyframes" in w for w in clip.warnings)


def test_keyframe_mode_stays_inside_the_window(encoded: dict[str, str]) -> None:
    clip = sample_frames(encoded["h264-gop50-bf2.mp4"], 3, start=3.0, end=6.0, seek="keyframe")
    assert all(3.0 <= t < 6.0 for t in clip.timestamps)
    assert clip.indices == [100, 150]
    # No keyframe inside the window: exact frames instead.
    inside = sample_frames(encoded["h264-gop50-bf2.mp4"], 3, start=3.4, end=4.9, seek="keyframe")
    assert inside.seek == "exact" and all(3.4 <= t < 4.9 for t in inside.timestamps)


def test_keyframe_mode_reaches_open_gop_keyframes_by_seeking(
    encoded: dict[str, str], oracles: dict[str, list[np.ndarray]]
) -> None:
    """Open-GOP I-frames are not IDR frames: they are not decoded from their packet alone."""
    name = "h264-open-gop.mkv"
    clip = sample_frames(encoded[name], 4, seek="keyframe")
    assert clip.seek == "keyframe"
    assert_real_frames(clip, oracles[name])
    assert any("decoded them by seeking" in w for w in clip.warnings)


def test_auto_mode_is_exact_when_exact_decoding_is_cheap(clip100: str) -> None:
    clip = sample_frames(clip100, 8, seek="auto")
    assert clip.seek == "exact" and clip.indices == uniform_indices(N_FRAMES, 8)


def test_auto_mode_picks_keyframes_above_the_threshold(encoded: dict[str, str]) -> None:
    path = encoded["h264-gop50-bf2.mp4"]
    low = DecodeOptions(auto_keyframe_above=50)
    assert sample_frames(path, 4, seek="auto", options=low).seek == "keyframe"
    # 32 targets share 6 keyframes: auto does not drop frames, it decodes exactly.
    assert sample_frames(path, 32, seek="auto", options=low).seek == "exact"
    high = DecodeOptions(auto_keyframe_above=10_000)
    assert sample_frames(path, 4, seek="auto", options=high).seek == "exact"


def test_keyframe_mode_on_an_intra_only_clip_is_exact(encoded: dict[str, str]) -> None:
    clip = sample_frames(encoded["mjpg-intra.avi"], 7, seek="keyframe")
    assert clip.indices == uniform_indices(120, 7)
    assert [frame_number(f) for f in clip.frames] == clip.indices


def test_keyframe_mode_applies_rotation(tmp_path: Path) -> None:
    path = make_rotated_clip(tmp_path / "phone.mp4", 40, size=(64, 48))
    exact = sample_frames(path, 3)
    keyframes = sample_frames(path, 3, seek="keyframe")
    assert keyframes.frames.shape[1:] == (64, 48, 3)
    oracle, _ = decode_all(path)
    assert_real_frames(keyframes, oracle)
    assert_real_frames(exact, oracle)
