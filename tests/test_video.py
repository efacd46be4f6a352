"""Frame sampling through vqa_cli.video's public surface, on small synthetic files."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.clips import (
    audio_only,
    decode_all,
    ffmpeg_clip,
    ffmpeg_exe,
    frame_number,
    make_clip,
    make_lying_clip,
    make_rotated_clip,
    x264,
)
from tests.video_checks import (
    FPS,
    N_FRAMES,
    SEEKS,
    assert_clip_consistent,
    assert_real_frames,
    red_image,
)
from vqa_cli.errors import EXIT_FAILURE, VqaError, describe
from vqa_cli.video import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoError,
    is_image_path,
    read_image,
    sample_frames,
    uniform_indices,
)

# ------------------------------------------------------------------ sampling


@pytest.mark.parametrize("n", [1, 2, 3, 8, 16, 33, 99, 100])
def test_sampled_frames_are_the_frames_at_those_indices(clip100: str, n: int) -> None:
    clip = sample_frames(clip100, n)
    assert clip.indices == uniform_indices(N_FRAMES, n)
    assert_clip_consistent(clip)
    assert clip.timestamps == [round(i / FPS, 3) for i in clip.indices]
    assert clip.frames_from_content == N_FRAMES
    assert clip.frames_from_header == N_FRAMES
    assert clip.duration == pytest.approx(N_FRAMES / FPS)
    assert clip.fps == pytest.approx(FPS)
    assert clip.frames.shape[1:] == (48, 64, 3)
    assert not clip.is_image
    assert clip.path == clip100


def test_mjpg_avi_and_unicode_video_path(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "vidéo 動画.avi", 40, fps=25.0, fourcc="MJPG")
    clip = sample_frames(path, 8)
    assert clip.indices == uniform_indices(40, 8)
    assert_clip_consistent(clip)
    assert clip.fps == pytest.approx(25.0)
    assert clip.duration == pytest.approx(1.6)


def test_fewer_frames_than_asked(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "five.mp4", 5)
    clip = sample_frames(path, 16)
    assert clip.indices == [0, 1, 2, 3, 4]
    assert clip.frames_from_content == 5
    assert_clip_consistent(clip)


# ------------------------------------------------------------------ time window


def test_window_inside(clip100: str) -> None:
    clip = sample_frames(clip100, 6, start=2.0, end=5.0)
    assert len(clip.indices) == 6
    assert all(2.0 <= t < 5.0 for t in clip.timestamps)
    assert clip.indices == [20 + i for i in uniform_indices(30, 6)]
    assert_clip_consistent(clip)
    assert clip.frames_from_content == N_FRAMES  # the whole file is still measured


def test_window_start_only_and_end_only(clip100: str) -> None:
    tail = sample_frames(clip100, 4, start=7.5)
    assert all(t >= 7.5 for t in tail.timestamps) and len(tail.indices) == 4
    head = sample_frames(clip100, 4, end=1.0)
    assert all(t < 1.0 for t in head.timestamps) and len(head.indices) == 4
    assert_clip_consistent(tail)
    assert_clip_consistent(head)


def test_window_end_past_the_end_is_clamped(clip100: str) -> None:
    clip = sample_frames(clip100, 5, start=8.0, end=1000.0)
    assert clip.indices == [80 + i for i in uniform_indices(20, 5)]
    assert all(8.0 <= t < clip.duration for t in clip.timestamps)
    assert_clip_consistent(clip)


def test_window_with_fewer_frames_than_asked(clip100: str) -> None:
    clip = sample_frames(clip100, 10, start=1.0, end=1.5)
    assert clip.indices == [10, 11, 12, 13, 14]
    assert_clip_consistent(clip)


def test_window_on_a_lying_header(tmp_path: Path) -> None:
    path = make_lying_clip(tmp_path / "liar.avi", 68, 444)
    clip = sample_frames(path, 4, start=3.0, end=60.0)
    assert clip.indices == [30 + i for i in uniform_indices(38, 4)]
    assert_clip_consistent(clip)


@pytest.mark.parametrize(
    ("start", "end", "words"),
    [
        (10.0, None, "past the end"),  # start == duration
        (50.0, 60.0, "past the end"),
        (5.0, 5.0, "before end"),
        (6.0, 2.0, "before end"),
        (-1.0, None, "non-negative"),
        (None, -2.0, "non-negative"),
    ],
)
def test_bad_windows(clip100: str, start: float | None, end: float | None, words: str) -> None:
    with pytest.raises(VideoError) as info:
        sample_frames(clip100, 4, start=start, end=end)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ sampling by rate


def test_fps_sampling_matches_uniform_indices_for_constant_rate(clip100: str) -> None:
    for rate, count in ((1.0, 10), (2.5, 25), (0.3, 3), (0.01, 1)):
        clip = sample_frames(clip100, fps=rate)
        assert clip.indices == uniform_indices(N_FRAMES, count)
        assert_clip_consistent(clip)
    assert sample_frames(clip100, fps=1000.0).indices == list(range(N_FRAMES))


def test_fps_sampling_in_a_window_and_capped(clip100: str) -> None:
    window = sample_frames(clip100, fps=2.0, start=2.0, end=5.0)
    assert window.indices == [22, 27, 32, 37, 42, 47]
    assert sample_frames(clip100, fps=5.0, max_frames=8).indices == uniform_indices(N_FRAMES, 8)
    assert sample_frames(clip100, 50, max_frames=4).indices == uniform_indices(N_FRAMES, 4)
    assert sample_frames(clip100, fps=1.0, end=1000.0).indices == uniform_indices(N_FRAMES, 10)


def test_variable_frame_rate_timestamps_and_fps_sampling(tmp_path: Path) -> None:
    """Frames 0-99 at 30 fps, then 10 fps: timestamps are each frame's own, rate sampling follows time."""
    expr = "setpts='if(lt(N,100),N/30,100/30+(N-100)/10)/TB'"
    path = ffmpeg_clip(tmp_path / "vfr.mp4", 200, x264(25, 2, "-fps_mode", "passthrough"), filters=expr)
    oracle, _ = decode_all(path)

    def time_of(i: int) -> float:
        return round(i / 30 if i < 100 else 100 / 30 + (i - 100) / 10, 3)

    for seek in SEEKS:
        clip = sample_frames(path, 6, seek=seek)  # type: ignore[arg-type]
        assert_real_frames(clip, oracle)
        assert clip.timestamps == [time_of(i) for i in clip.indices]
    assert sample_frames(path, 6).indices == uniform_indices(200, 6)
    rate = sample_frames(path, fps=1.0)  # 13.27 s: 13 one-second slices
    assert len(rate.indices) == 13
    assert sum(t < 100 / 30 for t in rate.timestamps) == 3  # the first 3.3 s get 3 slices, not half of them
    assert clip.duration == pytest.approx(time_of(199) + 1 / 30, abs=2e-3)  # median interval


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("name", ["red.png", "red.jpg", "RED.JPEG", "красный кадр é.png"])
def test_image_one_frame_rgb(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    ok, encoded = cv2.imencode(path.suffix.lower(), red_image())
    assert ok
    encoded.tofile(str(path))
    for clip in (read_image(str(path)), sample_frames(str(path), 8)):
        assert clip.is_image
        assert clip.frames.shape == (1, 30, 40, 3)
        assert clip.frames.dtype == np.uint8 and clip.frames.flags["C_CONTIGUOUS"]
        assert clip.frames[0, ..., 0].min() > 200  # red is channel 0: RGB, not BGR
        assert clip.frames[0, ..., 1:].max() < 60
        assert clip.indices == [0] and clip.timestamps == [0.0]
        assert clip.duration == 0.0 and clip.fps == 0.0 and clip.frames_from_content == 1


def test_image_exif_orientation(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    image = pil.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))
    exif = pil.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif.tobytes())
    assert read_image(str(path)).frames.shape == (1, 40, 20, 3)


def test_extension_sets() -> None:
    assert {".mp4", ".mkv", ".webm", ".ts", ".3gp"} <= VIDEO_EXTENSIONS
    assert {".jpg", ".png", ".tiff"} <= IMAGE_EXTENSIONS
    assert not VIDEO_EXTENSIONS & IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS)
    assert is_image_path("a/B.PNG") and is_image_path("x.jpeg")
    assert not is_image_path("clip.mp4") and not is_image_path("noext")


# ------------------------------------------------------------------ broken inputs


def _garbage(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())


def _wav(p: Path) -> None:
    import wave

    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(8000, dtype=np.int16).tobytes())


@pytest.mark.parametrize(
    ("name", "make", "words"),
    [
        ("garbage.mp4", _garbage, "cannot decode"),
        ("empty.mp4", lambda p: p.write_bytes(b""), "cannot decode"),
        ("notes.mp4", lambda p: p.write_text("hello\nthis is not a video\n"), "cannot decode"),
        ("audio.mp4", _wav, "cannot decode"),
        ("garbage.png", _garbage, "cannot decode"),
        ("empty.jpg", lambda p: p.write_bytes(b""), "cannot decode"),
        ("missing.mp4", None, "no such file"),
        ("folder.mp4", lambda p: p.mkdir(), "directory"),
    ],
)
def test_broken_inputs(tmp_path: Path, name: str, make: Callable[[Path], object] | None, words: str) -> None:
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(VideoError) as info:
        sample_frames(str(path), 4)
    message = str(info.value)
    assert words in message
    assert name in message
    assert "\n" not in message


def test_bad_arguments(clip100: str) -> None:
    with pytest.raises(ValueError):
        sample_frames(clip100, 0)
    with pytest.raises(ValueError):
        sample_frames(clip100, 4, timeout=0)
    bad: list[dict[str, object]] = [
        {},  # neither num_frames nor fps
        {"num_frames": 4, "fps": 1.0},  # both
        {"fps": 0.0},
        {"fps": -1.0},
        {"fps": math.nan},
        {"fps": "fast"},
        {"num_frames": 4, "max_frames": 0},
        {"num_frames": 4, "seek": "fast"},
        {"num_frames": True},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            sample_frames(clip100, **kwargs)  # type: ignore[arg-type]


def test_timeout(clip100: str) -> None:
    with pytest.raises(VideoError, match="took longer than"):
        sample_frames(clip100, 4, timeout=1e-9)
    assert len(sample_frames(clip100, 4, timeout=60).indices) == 4


@pytest.mark.parametrize("seek", SEEKS)
def test_timeout_in_every_seek_mode(clip100: str, seek: str) -> None:
    with pytest.raises(VideoError, match="took longer than"):
        sample_frames(clip100, 4, timeout=1e-9, seek=seek)  # type: ignore[arg-type]


@pytest.mark.parametrize("seek", SEEKS)
def test_one_frame_video(tmp_path: Path, seek: str) -> None:
    path = make_clip(tmp_path / "one.mp4", 1)
    clip = sample_frames(path, 5, seek=seek)  # type: ignore[arg-type]
    assert clip.indices == [0] and clip.timestamps == [0.0] and clip.frames_from_content == 1
    assert frame_number(clip.frames[0]) == 0
    assert clip.duration > 0 and clip.fps > 0
    assert sample_frames(path, fps=30.0).indices == [0]


def test_audio_only_file_is_not_a_video(tmp_path: Path) -> None:
    path = audio_only(tmp_path / "sound.mp4")
    with pytest.raises(VideoError, match="cannot decode"):
        sample_frames(path, 4)


def test_video_error_is_a_vqa_error_of_kind_video_with_exit_1() -> None:
    error = VideoError("cannot decode 'x.mp4':\n  not a video file")
    assert isinstance(error, VqaError) and str(error) == "cannot decode 'x.mp4': not a video file"
    assert describe(error) == (EXIT_FAILURE, "video", "cannot decode 'x.mp4': not a video file")


# ------------------------------------------------------------------ rotation


def test_rotation_metadata_is_applied(tmp_path: Path) -> None:
    path = make_rotated_clip(tmp_path / "phone.mp4", 6, size=(64, 48))
    clip = sample_frames(path, 3)
    assert clip.frames.shape == (3, 64, 48, 3)  # H and W swapped: upright


def test_rotation_written_by_ffmpeg(tmp_path: Path) -> None:
    ffmpeg = ffmpeg_exe()
    src = make_clip(tmp_path / "src.mp4", 6, size=(64, 48))
    out = tmp_path / "rotated.mp4"
    cmd = [ffmpeg, "-v", "error", "-y", "-display_rotation", "90", "-i", src, "-c", "copy", str(out)]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        cmd = [ffmpeg, "-v", "error", "-y", "-i", src, "-c", "copy", "-metadata:s:v", "rotate=90", str(out)]
        subprocess.run(cmd, check=True, capture_output=True)
    clip = sample_frames(str(out), 3)
    assert clip.frames.shape == (3, 64, 48, 3)


# ------------------------------------------------------------------ no heavy imports


def test_no_torch_or_transformers_imported() -> None:
    code = (
        "import sys, vqa_cli.video, vqa_cli.output.sheet; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
