"""Frame sampling (vqa_cli.video) and contact sheets (vqa_cli.sheet) on small synthetic files."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clips import frame_number, make_clip, make_lying_clip, make_rotated_clip  # noqa: E402

from vqa_cli import video  # noqa: E402
from vqa_cli.sheet import PADDING, contact_sheet, label_height, sheet_size  # noqa: E402
from vqa_cli.video import (  # noqa: E402
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Clip,
    VideoError,
    is_image_path,
    read_image,
    sample_frames,
    uniform_indices,
)

N_FRAMES = 100
FPS = 10.0


@pytest.fixture(scope="module")
def clip100(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_clip(tmp_path_factory.mktemp("v") / "hundred.mp4", N_FRAMES, fps=FPS)


def assert_clip_consistent(clip: Clip) -> None:
    """Invariants every sampled clip satisfies, checked against the frames' own numbers."""
    n = len(clip.indices)
    assert clip.frames.dtype == np.uint8
    assert clip.frames.ndim == 4 and clip.frames.shape[0] == n and clip.frames.shape[3] == 3
    assert clip.frames.flags["C_CONTIGUOUS"]
    assert len(clip.timestamps) == n
    assert clip.indices == sorted(set(clip.indices))
    assert all(0 <= i < clip.total_frames for i in clip.indices)
    assert all(0.0 <= t < clip.duration for t in clip.timestamps)
    assert [frame_number(f) for f in clip.frames] == clip.indices


# ------------------------------------------------------------------ uniform_indices


def test_uniform_indices_properties() -> None:
    for total in range(1, 60):
        for n in range(1, 70):
            got = uniform_indices(total, n)
            assert len(got) == min(n, total)
            assert got == sorted(set(got))
            assert all(0 <= i < total for i in got)
            if n >= total:
                assert got == list(range(total))
            else:
                assert got == [math.floor((k + 0.5) * total / n) for k in range(n)]


def test_uniform_indices_examples_and_errors() -> None:
    assert uniform_indices(100, 1) == [50]
    assert uniform_indices(10, 2) == [2, 7]
    assert uniform_indices(5, 10) == [0, 1, 2, 3, 4]
    assert uniform_indices(0, 3) == []
    big = uniform_indices(10**12, 4)
    assert big == [125_000_000_000, 375_000_000_000, 625_000_000_000, 875_000_000_000]
    for bad in (0, -1):
        with pytest.raises(ValueError):
            uniform_indices(10, bad)


# ------------------------------------------------------------------ sampling


@pytest.mark.parametrize("n", [1, 2, 3, 8, 16, 33, 99, 100])
def test_sampled_frames_are_the_frames_at_those_indices(clip100: str, n: int) -> None:
    clip = sample_frames(clip100, n)
    assert clip.indices == uniform_indices(N_FRAMES, n)
    assert_clip_consistent(clip)
    assert clip.timestamps == [round(i / FPS, 3) for i in clip.indices]
    assert clip.total_frames == N_FRAMES
    assert clip.header_frames == N_FRAMES
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


def test_honest_header_decodes_once(clip100: str, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = []
    real_open = video._open_capture

    def counting_open(*args: object) -> cv2.VideoCapture:
        opened.append(args)
        return real_open(*args)

    monkeypatch.setattr(video, "_open_capture", counting_open)
    sample_frames(clip100, 8)
    assert len(opened) == 1


def test_fewer_frames_than_asked(tmp_path: Path) -> None:
    path = make_clip(tmp_path / "five.mp4", 5)
    clip = sample_frames(path, 16)
    assert clip.indices == [0, 1, 2, 3, 4]
    assert clip.total_frames == 5
    assert_clip_consistent(clip)


@pytest.mark.parametrize(
    ("real", "claimed"),
    [(68, 444), (162, 0), (30, 20), (25, 1)],
)
def test_lying_header(tmp_path: Path, real: int, claimed: int) -> None:
    path = make_lying_clip(tmp_path / "liar.avi", real, claimed)
    for n in (1, 8, 24, 500):
        clip = sample_frames(path, n)
        assert clip.total_frames == real
        assert clip.header_frames == claimed
        assert clip.indices == uniform_indices(real, n)
        assert_clip_consistent(clip)
        assert max(clip.timestamps) < clip.duration == pytest.approx(real / FPS)


# ------------------------------------------------------------------ time window


def test_window_inside(clip100: str) -> None:
    clip = sample_frames(clip100, 6, start=2.0, end=5.0)
    assert len(clip.indices) == 6
    assert all(2.0 <= t < 5.0 for t in clip.timestamps)
    assert clip.indices == [20 + i for i in uniform_indices(30, 6)]
    assert_clip_consistent(clip)
    assert clip.total_frames == N_FRAMES  # the whole file is still measured


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


# ------------------------------------------------------------------ images


def _red(height: int = 30, width: int = 40) -> np.ndarray:
    bgr = np.zeros((height, width, 3), dtype=np.uint8)
    bgr[..., 2] = 255
    return bgr


@pytest.mark.parametrize("name", ["red.png", "red.jpg", "RED.JPEG", "красный кадр é.png"])
def test_image_one_frame_rgb(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    ok, encoded = cv2.imencode(path.suffix.lower(), _red())
    assert ok
    encoded.tofile(str(path))
    for clip in (read_image(str(path)), sample_frames(str(path), 8)):
        assert clip.is_image
        assert clip.frames.shape == (1, 30, 40, 3)
        assert clip.frames.dtype == np.uint8 and clip.frames.flags["C_CONTIGUOUS"]
        assert clip.frames[0, ..., 0].min() > 200  # red is channel 0: RGB, not BGR
        assert clip.frames[0, ..., 1:].max() < 60
        assert clip.indices == [0] and clip.timestamps == [0.0]
        assert clip.duration == 0.0 and clip.fps == 0.0 and clip.total_frames == 1


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


def test_timeout(clip100: str) -> None:
    with pytest.raises(VideoError, match="took longer than"):
        sample_frames(clip100, 4, timeout=1e-9)
    assert len(sample_frames(clip100, 4, timeout=60).indices) == 4


# ------------------------------------------------------------------ rotation


def test_rotation_metadata_is_applied(tmp_path: Path) -> None:
    path = make_rotated_clip(tmp_path / "phone.mp4", 6, size=(64, 48))
    clip = sample_frames(path, 3)
    assert clip.frames.shape == (3, 64, 48, 3)  # H and W swapped: upright


def test_rotation_written_by_ffmpeg(tmp_path: Path) -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg not installed")
    src = make_clip(tmp_path / "src.mp4", 6, size=(64, 48))
    out = tmp_path / "rotated.mp4"
    cmd = [ffmpeg, "-v", "error", "-y", "-display_rotation", "90", "-i", src, "-c", "copy", str(out)]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        cmd = [ffmpeg, "-v", "error", "-y", "-i", src, "-c", "copy", "-metadata:s:v", "rotate=90", str(out)]
        subprocess.run(cmd, check=True, capture_output=True)
    clip = sample_frames(str(out), 3)
    assert clip.frames.shape == (3, 64, 48, 3)


# ------------------------------------------------------------------ contact sheet


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
    cv2.imencode(".png", _red())[1].tofile(str(path))
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


# ------------------------------------------------------------------ no heavy imports


def test_no_torch_or_transformers_imported() -> None:
    code = (
        "import sys, vqa_cli.video, vqa_cli.sheet; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_broken_timestamps_are_repaired() -> None:
    seconds, interval = video._repair_timestamps([0.0, 40.0, 80.0, 80.0, 160.0, 200.0], header_fps=999.0)
    assert interval == pytest.approx(0.04)
    assert seconds == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16, 0.2])
    shifted, _ = video._repair_timestamps([-80.0, -40.0, 0.0], header_fps=0.0)
    assert shifted == pytest.approx([0.0, 0.04, 0.08])
    single, interval = video._repair_timestamps([0.0], header_fps=0.0)
    assert single == [0.0] and interval > 0
