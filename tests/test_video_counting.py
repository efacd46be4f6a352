"""Headers that lie and damaged files: the packet index or the counting pass (vqa_cli.video._counting) measures
what the header claims, and frames stay the real ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.clips import (
    claim_fps_mkv,
    damage,
    decode_all,
    ffmpeg_clip,
    frame_number,
    make_clip,
    make_lying_clip,
    truncate,
    x264,
)
from tests.video_checks import FPS, SEEKS, assert_clip_consistent, assert_real_frames
from vqa_cli.video import DecodeOptions, VideoError, sample_frames, uniform_indices


@pytest.mark.parametrize(
    ("real", "claimed"),
    [(68, 444), (162, 0), (30, 20), (25, 1)],
)
def test_lying_header(tmp_path: Path, real: int, claimed: int) -> None:
    path = make_lying_clip(tmp_path / "liar.avi", real, claimed)
    for n in (1, 8, 24, 500):
        clip = sample_frames(path, n)
        assert clip.frames_from_content == real
        assert clip.frames_from_header == claimed
        assert clip.indices == uniform_indices(real, n)
        assert_clip_consistent(clip)
        assert max(clip.timestamps) < clip.duration == pytest.approx(real / FPS)


@pytest.mark.parametrize("seek", SEEKS)
def test_lying_frame_count_in_every_seek_mode(tmp_path: Path, seek: str) -> None:
    for real, claimed in ((68, 444), (162, 0), (30, 20)):
        path = make_lying_clip(tmp_path / f"liar{claimed}.avi", real, claimed)
        oracle, _ = decode_all(path)
        clip = sample_frames(path, 8, seek=seek)  # type: ignore[arg-type]
        assert clip.frames_from_content == real and clip.frames_from_header == claimed
        assert_real_frames(clip, oracle)
        assert max(clip.timestamps) < clip.duration == pytest.approx(real / FPS)


@pytest.mark.parametrize("claimed", [187.0, 10.0])
def test_lying_frame_rate(tmp_path: Path, claimed: float) -> None:
    path = ffmpeg_clip(tmp_path / "rate.mkv", 250, x264(25, 2), fps=25.0)
    claim_fps_mkv(path, claimed)
    oracle, _ = decode_all(path)
    for packets in (True, False):
        options = DecodeOptions(packets_for_exact=packets)
        for seek in SEEKS:
            clip = sample_frames(path, 5, seek=seek, options=options)  # type: ignore[arg-type]
            assert clip.fps_from_header == pytest.approx(claimed, abs=0.5)
            assert clip.fps == pytest.approx(25.0)
            assert clip.duration == pytest.approx(10.0)
            assert_real_frames(clip, oracle)


def test_damaged_packet_is_skipped_and_reported(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "clean.avi", 40, fps=25.0, fourcc="MJPG")
    data = bytearray(Path(path).read_bytes())
    chunks = [i for i in range(len(data)) if data[i : i + 4] == b"00dc"]
    frame = chunks[20] + 8 + 100  # inside the 21st JPEG, past its headers
    data[frame : frame + 60] = np.random.default_rng(1).integers(0, 256, 60, dtype=np.uint8).tobytes()
    broken = tmp_path / "broken.avi"
    broken.write_bytes(bytes(data))
    oracle, _ = decode_all(broken)
    assert len(oracle) == 39
    for seek in ("exact", "auto"):
        clip = sample_frames(str(broken), 10, seek=seek)  # type: ignore[arg-type]
        assert_real_frames(clip, oracle)
        assert clip.damaged == 1 and any("skipped 1 undecodable packet" in w for w in clip.warnings)
    # Keyframe seeking decodes only the keyframes it returns, so it cannot see damage elsewhere:
    # its frames are still the real frames at their timestamps (indices follow the packets).
    clip = sample_frames(str(broken), 10, seek="keyframe")
    assert [frame_number(f) for f in clip.frames] == [round(t * 25) for t in clip.timestamps]


@pytest.mark.parametrize("name", ["h264-gop50-bf2.ts", "h264-gop25-bf3.mkv"])
def test_garbage_in_the_middle_never_breaks_exact_frames(encoded: dict[str, str], tmp_path: Path, name: str) -> None:
    broken = damage(encoded[name], tmp_path / f"broken{Path(name).suffix}", at=0.5, n_bytes=3000)
    oracle, _ = decode_all(broken)
    clip = sample_frames(broken, 32)
    assert clip.indices == uniform_indices(len(oracle), 32)
    assert_real_frames(clip, oracle)


@pytest.mark.parametrize("name", ["mjpg-intra.avi", "h264-gop25-bf3.mkv", "h264-gop50-bf2.ts"])
def test_truncated_file(encoded: dict[str, str], tmp_path: Path, name: str) -> None:
    cut = truncate(encoded[name], tmp_path / f"cut{Path(name).suffix}", keep=0.7)
    oracle, _ = decode_all(cut)
    for seek in SEEKS:
        clip = sample_frames(cut, 6, seek=seek)  # type: ignore[arg-type]
        assert_real_frames(clip, oracle)
        assert max(clip.timestamps) < clip.duration


def test_truncated_mp4_without_its_index_is_an_error(tmp_path: Path) -> None:
    """OpenCV's VideoWriter puts the moov box last: cut short, nothing is decodable."""
    cut = truncate(make_clip(tmp_path / "whole.mp4", 30), tmp_path / "cut.mp4", keep=0.7)
    with pytest.raises(VideoError, match="cannot decode"):
        sample_frames(cut, 4)
