"""Frame sampling (vqa_cli.video) and contact sheets (vqa_cli.sheet) on small synthetic files."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clips import (  # noqa: E402
    audio_only,
    claim_fps_mkv,
    damage,
    decode_all,
    ffmpeg_clip,
    ffmpeg_exe,
    frame_number,
    make_clip,
    make_lying_clip,
    make_rotated_clip,
    truncate,
    x264,
)

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


# ------------------------------------------------------------------ seeking: exactness against a full decode

SEEKS = ["exact", "keyframe", "auto"]


def assert_real_frames(clip: Clip, oracle: list[np.ndarray]) -> None:
    """Oracle: a full sequential decode.  Every returned frame is the frame at its index."""
    assert clip.total_frames == len(oracle)
    for frame, i in zip(clip.frames, clip.indices, strict=True):
        assert np.array_equal(frame, oracle[i]), f"frame {i} differs from the sequential decode"


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Self-numbering 300-frame clips with known keyframe intervals (ffmpeg) plus OpenCV-written ones."""
    folder = tmp_path_factory.mktemp("encoded")
    return {
        "mp4v-gop12.mp4": make_clip(folder / "mp4v.mp4", 300, fps=30.0),
        "mjpg-intra.avi": make_clip(folder / "mjpg.avi", 120, fps=30.0, fourcc="MJPG"),
        "h264-gop10.mp4": ffmpeg_clip(folder / "g10.mp4", 300, x264(10, 0)),
        "h264-gop50-bf2.mp4": ffmpeg_clip(folder / "g50.mp4", 300, x264(50, 2)),
        "h264-gop25-bf3.mkv": ffmpeg_clip(folder / "g25.mkv", 300, x264(25, 3)),
        "h264-gop50-bf2.ts": ffmpeg_clip(folder / "g50.ts", 300, x264(50, 2)),
        "h264-open-gop.mkv": ffmpeg_clip(folder / "open.mkv", 300, x264(50, 2, "-x264opts", "open_gop=1")),
    }


@pytest.fixture(scope="module")
def oracles(encoded: dict[str, str]) -> dict[str, list[np.ndarray]]:
    return {name: decode_all(path)[0] for name, path in encoded.items()}


@pytest.mark.parametrize("seek", SEEKS)
def test_frames_equal_the_sequential_decode_in_every_seek_mode(
    encoded: dict[str, str], oracles: dict[str, list[np.ndarray]], seek: str
) -> None:
    for name, path in encoded.items():
        total = len(oracles[name])
        for n in (1, 5, 32):
            clip = sample_frames(path, n, seek=seek)  # type: ignore[arg-type]
            assert_real_frames(clip, oracles[name])
            assert [frame_number(f) for f in clip.frames] == clip.indices, name
            assert clip.timestamps == [round(i / 30.0, 3) for i in clip.indices], name
            if clip.seek == "exact":
                assert clip.indices == uniform_indices(total, n), name
            assert clip.seek in ("exact", "keyframe") and (seek != "exact" or clip.seek == "exact")


def test_exact_mode_decodes_less_than_the_whole_clip(encoded: dict[str, str]) -> None:
    for name in ("mp4v-gop12.mp4", "h264-gop10.mp4", "h264-gop25-bf3.mkv"):
        clip = sample_frames(encoded[name], 3)
        assert clip.decoded < clip.total_frames, name


def test_h264_packets_leave_out_non_reference_frames(encoded: dict[str, str]) -> None:
    """Frames 0..299 of a GOP-25, 3-B-frame clip: 32 targets need fewer decodes than frames."""
    clip = sample_frames(encoded["h264-gop25-bf3.mkv"], 32)
    assert clip.seek == "exact" and clip.indices == uniform_indices(300, 32)
    assert clip.decoded < 0.8 * clip.total_frames


def test_exact_mode_without_packets_seeks_and_grabs(
    encoded: dict[str, str], oracles: dict[str, list[np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video, "_PACKETS_FOR_EXACT", False)
    for name in ("h264-gop50-bf2.mp4", "h264-gop25-bf3.mkv", "h264-gop50-bf2.ts"):
        for n in (2, 7):
            clip = sample_frames(encoded[name], n)
            assert clip.indices == uniform_indices(300, n)
            assert_real_frames(clip, oracles[name])


def test_parallel_captures_give_the_same_frames(encoded: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video, "_PACKETS_FOR_EXACT", False)
    monkeypatch.setattr(video, "_PARALLEL_MIN_DECODES", 0)
    path = encoded["h264-gop10.mp4"]
    monkeypatch.setattr(video, "_MAX_WORKERS", 1)
    one = sample_frames(path, 6)
    monkeypatch.setattr(video, "_MAX_WORKERS", 3)
    three = sample_frames(path, 6)
    assert one.indices == three.indices == uniform_indices(300, 6)
    assert np.array_equal(one.frames, three.frames)


def test_packet_decoding_that_disagrees_with_the_file_is_not_used(
    encoded: dict[str, str], oracles: dict[str, list[np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-file check (frame 0 through packets == frame 0 from the file) guards both packet paths."""
    real = video._PacketDecoder._decode
    calls = []

    def wrong(self: video._PacketDecoder, *args: object) -> dict[int, np.ndarray] | None:
        frames = real(self, *args)  # type: ignore[arg-type]
        calls.append(frames)
        if frames and 0 in frames:
            frames[0] = 255 - frames[0]
        return frames

    monkeypatch.setattr(video._PacketDecoder, "_decode", wrong)
    name = "h264-gop25-bf3.mkv"
    for seek in ("exact", "keyframe"):
        calls.clear()
        clip = sample_frames(encoded[name], 32, seek=seek)  # type: ignore[arg-type]
        assert calls, seek  # the packet path was tried
        assert_real_frames(clip, oracles[name])


def test_exact_packets_go_through_one_stream_per_group(encoded: dict[str, str], monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """Opening an in-memory stream costs several frames' decoding: the keyframe intervals share one."""
    opened = []
    real = video._PacketDecoder._decode

    def counting(self: video._PacketDecoder, *args: object) -> dict[int, np.ndarray] | None:
        opened.append(1)
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(video._PacketDecoder, "_decode", counting)
    monkeypatch.setattr(video, "_MAX_WORKERS", 1)
    clip = sample_frames(encoded["h264-gop10.mp4"], 8, seek="exact")  # 8 targets in 8 intervals, + frame 0, last
    assert clip.indices == uniform_indices(300, 8) and clip.decoded < 300
    assert len(opened) == 1


# ------------------------------------------------------------------ keyframe and auto modes


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


def test_auto_mode_picks_keyframes_above_the_threshold(
    encoded: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = encoded["h264-gop50-bf2.mp4"]
    monkeypatch.setattr(video, "AUTO_KEYFRAME_ABOVE", 50)
    assert sample_frames(path, 4, seek="auto").seek == "keyframe"
    # 32 targets share 6 keyframes: auto does not drop frames, it decodes exactly.
    assert sample_frames(path, 32, seek="auto").seek == "exact"
    monkeypatch.setattr(video, "AUTO_KEYFRAME_ABOVE", 10_000)
    assert sample_frames(path, 4, seek="auto").seek == "exact"


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


# ------------------------------------------------------------------ headers that lie, damaged files


@pytest.mark.parametrize("seek", SEEKS)
def test_lying_frame_count_in_every_seek_mode(tmp_path: Path, seek: str) -> None:
    for real, claimed in ((68, 444), (162, 0), (30, 20)):
        path = make_lying_clip(tmp_path / f"liar{claimed}.avi", real, claimed)
        oracle, _ = decode_all(path)
        clip = sample_frames(path, 8, seek=seek)  # type: ignore[arg-type]
        assert clip.total_frames == real and clip.header_frames == claimed
        assert_real_frames(clip, oracle)
        assert max(clip.timestamps) < clip.duration == pytest.approx(real / FPS)


@pytest.mark.parametrize("claimed", [187.0, 10.0])
def test_lying_frame_rate(tmp_path: Path, claimed: float, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ffmpeg_clip(tmp_path / "rate.mkv", 250, x264(25, 2), fps=25.0)
    claim_fps_mkv(path, claimed)
    oracle, _ = decode_all(path)
    for packets in (True, False):
        monkeypatch.setattr(video, "_PACKETS_FOR_EXACT", packets)
        for seek in SEEKS:
            clip = sample_frames(path, 5, seek=seek)  # type: ignore[arg-type]
            assert clip.header_fps == pytest.approx(claimed, abs=0.5)
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


@pytest.mark.parametrize("seek", SEEKS)
def test_one_frame_video(tmp_path: Path, seek: str) -> None:
    path = make_clip(tmp_path / "one.mp4", 1)
    clip = sample_frames(path, 5, seek=seek)  # type: ignore[arg-type]
    assert clip.indices == [0] and clip.timestamps == [0.0] and clip.total_frames == 1
    assert frame_number(clip.frames[0]) == 0
    assert clip.duration > 0 and clip.fps > 0
    assert sample_frames(path, fps=30.0).indices == [0]


def test_audio_only_file_is_not_a_video(tmp_path: Path) -> None:
    path = audio_only(tmp_path / "sound.mp4")
    with pytest.raises(VideoError, match="cannot decode"):
        sample_frames(path, 4)


@pytest.mark.parametrize("seek", SEEKS)
def test_timeout_in_every_seek_mode(clip100: str, seek: str) -> None:
    with pytest.raises(VideoError, match="took longer than"):
        sample_frames(clip100, 4, timeout=1e-9, seek=seek)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the packet index and its helpers


def test_packet_index_matches_the_sequential_decode(encoded: dict[str, str]) -> None:
    for name, path in encoded.items():
        index = video._scan_index(path, video._Deadline(path, None))
        if name == "mjpg-intra.avi":
            assert index is not None and index.keys == list(range(120))
        if index is None:
            continue
        _, ms = decode_all(path)
        assert index.ms == ms, name
        assert index.keys[0] == 0


def test_h264_bitstream_helpers() -> None:
    # ue(v): 1 -> 0, 010 -> 1, 011 -> 2, 00100 -> 3
    assert video._read_ue(bytes([0b10100110, 0b01000000]), 0) == (0, 1)
    assert video._read_ue(bytes([0b10100110, 0b01000000]), 1) == (1, 4)
    assert video._read_ue(bytes([0b10100110, 0b01000000]), 4) == (2, 7)
    assert video._read_ue(bytes([0b10100110, 0b01000000]), 7) == (3, 12)
    assert video._read_ue(b"\x00", 0) is None
    sps, idr, b_nonref = b"\x00\x00\x00\x01\x67\x64", b"\x00\x00\x01\x65\x88\x84", b"\x00\x00\x01\x01\x9e\x00"
    assert [u[0] for u in video._nal_units(sps + idr)] == [0x67, 0x65]
    assert video._self_contained(sps + idr, "h264") and not video._self_contained(b_nonref, "h264")
    assert video._h264_picture(sps + idr) == (True, "I")  # first_mb 0, slice_type 7 -> I
    assert video._h264_picture(b_nonref)[0] is False
    assert video._stream_header(sps + idr, "h264") == b"\x00\x00\x00\x01\x67\x64"


def test_core_budget_limits_this_threads_decoders_and_keeps_the_frames(clip_path):
    import threading

    from vqa_cli import video

    full = video.sample_frames(clip_path, 6)
    with video.core_budget(1):
        assert video._cpu_count() == 1 and video._default_threads() == 1
        seen = []
        other = threading.Thread(target=lambda: seen.append(video._default_threads()))
        other.start()
        other.join()
        assert seen == [0]  # another thread keeps the default
        budgeted = video.sample_frames(clip_path, 6)
    assert video._default_threads() == 0
    assert budgeted.indices == full.indices and np.array_equal(budgeted.frames, full.frames)


def test_each_target_snaps_to_its_nearest_keyframe_inside_the_window_ties_to_the_earlier() -> None:
    from types import SimpleNamespace

    index = SimpleNamespace(keys=[0, 10, 20, 40])
    # 5 and 15 are halfway: the earlier keyframe; 12 -> 10, 31 -> 40 (9 away vs 11), 30 -> 20 (a tie).
    assert video._nearest_keys(index, [5, 15, 12, 31, 30], range(0, 50)) == [0, 10, 10, 40, 20]
    # Keyframes outside the window are never chosen, however near.
    assert video._nearest_keys(index, [3, 25, 45], range(10, 35)) == [10, 20, 20]
