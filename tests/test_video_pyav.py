"""The PyAV fallback: AV1 files (which OpenCV's FFmpeg opens but cannot decode) sampled through PyAV.

The oracle is a full sequential PyAV decode written here (``clips.pyav_decode_all``), never vqa itself.
"""

from __future__ import annotations

import json

import av
import cv2
import numpy as np
import pytest
from clips import av1_clip, damage, frame_number, make_clip, make_rotated_clip, pyav_decode_all
from test_cli import run

from vqa_cli.video import DecodeOptions, _pyav, probe, sample_frames
from vqa_cli.video._sampling import validate


@pytest.fixture(scope="module")
def av1(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("av1")
    return {
        "g60.mkv": av1_clip(folder / "g60.mkv", 300, gop=60),
        "g240.mp4": av1_clip(folder / "g240.mp4", 480, gop=240, fps=24),
    }


@pytest.fixture(scope="module")
def oracle(av1) -> dict[str, tuple[list[np.ndarray], list[float]]]:
    return {name: pyav_decode_all(path) for name, path in av1.items()}


def keyframes(path: str) -> list[int]:
    """Presentation ranks of the keyframe packets, read from the demuxer here."""
    with av.open(path) as container:
        packets = [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size]
    return [rank for rank, (_, key) in enumerate(sorted(packets)) if key]


def expected(timestamps: list[float], n: int, lo: float = 0.0, hi: float = float("inf")) -> list[int]:
    """Segment-midpoint uniform sampling over the frames with lo <= t < hi, written out independently."""
    inside = [i for i, t in enumerate(timestamps) if lo <= round(t, 3) < hi]
    if n >= len(inside):
        return inside
    return [inside[(2 * k + 1) * len(inside) // (2 * n)] for k in range(n)]


def test_opencv_really_cannot_decode_av1(av1):
    for path in av1.values():
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        try:
            assert cap.isOpened() and not cap.grab()
        finally:
            cap.release()
        assert _pyav.wanted(path, path, None)
        probe(path)  # the CLI's fail-fast check accepts it


@pytest.mark.parametrize("name", ["g60.mkv", "g240.mp4"])
@pytest.mark.parametrize(("n", "start", "end"), [(1, None, None), (8, None, None), (33, None, None),
                                                 (5, 2.5, 7.0), (400, None, None), (3, 9.5, None)])
def test_exact_equals_a_sequential_pyav_decode(av1, oracle, name, n, start, end):
    frames, times = oracle[name]
    clip = sample_frames(av1[name], n, start=start, end=end, seek="exact")
    assert (clip.decoder, clip.codec, clip.seek, clip.damaged) == ("pyav", "av1", "exact", 0)
    assert clip.frames_from_content == len(frames)
    assert clip.indices == expected(times, n, start or 0.0, end or float("inf"))
    assert clip.timestamps == [round(times[i], 3) for i in clip.indices]  # the decoder's own
    for frame, i in zip(clip.frames, clip.indices, strict=True):
        assert frame_number(frame) == i
        assert np.array_equal(frame, frames[i]), f"frame {i} differs from the sequential decode"
    if n <= 8:
        assert clip.decoded < len(frames)  # not a full decode


@pytest.mark.parametrize(("rate", "start", "end"), [(2.0, None, None), (3.0, 1.0, 4.0), (0.5, 6.0, None)])
def test_exact_with_fps_equals_a_sequential_pyav_decode(av1, oracle, rate, start, end):
    frames, times = oracle["g60.mkv"]
    clip = sample_frames(av1["g60.mkv"], fps=rate, start=start, end=end)
    span = min(end or 10.0, 10.0) - (start or 0.0)
    assert len(clip.indices) == int(span * rate)
    assert all((start or 0.0) <= t < (end or 10.0) for t in clip.timestamps)
    for frame, i in zip(clip.frames, clip.indices, strict=True):
        assert np.array_equal(frame, frames[i]) and frame_number(frame) == i


@pytest.mark.parametrize("name", ["g60.mkv", "g240.mp4"])
def test_keyframe_mode_lands_on_keyframes(av1, oracle, name):
    frames, times = oracle[name]
    keys = keyframes(av1[name])
    assert len(keys) == len(frames) // (60 if name == "g60.mkv" else 240)
    clip = sample_frames(av1[name], 8, seek="keyframe")
    assert clip.seek == "keyframe" and clip.decoder == "pyav"
    assert clip.indices and set(clip.indices) <= set(keys)
    assert clip.decoded <= len(clip.indices) + 1  # about one decoded frame per returned frame
    assert clip.timestamps == [round(times[i], 3) for i in clip.indices]
    for frame, i in zip(clip.frames, clip.indices, strict=True):
        assert np.array_equal(frame, frames[i]) and frame_number(frame) == i


def test_keyframes_a_single_pass_misses_are_reached_by_seeking(av1, oracle, monkeypatch):
    """The one-pass keyframe decode falls back to demuxer seeks for any keyframe it did not get."""
    from vqa_cli.video import _pyav

    frames, _ = oracle["g60.mkv"]
    keys = keyframes(av1["g60.mkv"])
    sought: list[list[int]] = []
    real = _pyav._keyframes_by_seeking

    def spy(decoder, pts, missing):
        sought.append(list(missing))
        return real(decoder, pts, missing)

    monkeypatch.setattr(_pyav, "_keyframes_by_seeking", spy)
    clip = sample_frames(av1["g60.mkv"], len(keys), seek="keyframe")
    assert clip.indices == keys and sought == []  # one pass was enough
    # The seeking path on its own gives the same frames.
    from vqa_cli.video._inputs import Deadline
    from vqa_cli.video._options import DecodeOptions as Options

    with _pyav._opened(av1["g60.mkv"], av1["g60.mkv"], Options()) as (container, stream):
        _, pts = _pyav.scan(container, stream, Deadline(av1["g60.mkv"], None))
        kept = real(_pyav.Decoder(container, stream, Deadline(av1["g60.mkv"], None)), pts, keys)
    assert sorted(kept) == keys and all(np.array_equal(kept[k], frames[k]) for k in keys)


def test_auto_uses_the_cost_model(av1, oracle):
    frames, _ = oracle["g60.mkv"]
    keys = keyframes(av1["g60.mkv"])
    # One target per keyframe: keyframes are far cheaper than exact decoding once exact is "too much".
    cheap = sample_frames(av1["g60.mkv"], len(keys), seek="auto", options=DecodeOptions(auto_keyframe_above=10))
    assert cheap.seek == "keyframe" and cheap.indices == keys
    default = sample_frames(av1["g60.mkv"], len(keys), seek="auto")
    assert default.seek == "exact"
    assert all(np.array_equal(f, frames[i]) for f, i in zip(default.frames, default.indices, strict=True))


def test_a_damaged_av1_file_reports_the_damage(av1, tmp_path):
    broken = damage(av1["g60.mkv"], tmp_path / "broken.mkv", at=0.5, n_bytes=200)
    clip = sample_frames(broken, 8)
    assert clip.decoder == "pyav" and len(clip.indices) == 8
    assert clip.damaged > 0 or clip.warnings
    assert clip.frames_from_content < 300


def test_decoder_threads_stay_within_the_cores(av1):
    with _pyav._opened("x", av1["g60.mkv"], DecodeOptions(cores=1)) as (_, stream):
        assert stream.codec_context.thread_count == 1


def test_rotation_is_applied_as_opencv_applies_it(tmp_path):
    path = make_rotated_clip(tmp_path / "rotated.mp4", 10)
    by_opencv = sample_frames(path, 3)
    options = DecodeOptions()
    by_pyav = _pyav.sample_pyav(path, path, validate(3, None, None, "exact", None, None), "exact",
                                _pyav.Deadline(path, None), options)
    assert by_pyav.decoder == "pyav" and by_opencv.decoder == "opencv"
    assert by_pyav.frames.shape == by_opencv.frames.shape and by_pyav.indices == by_opencv.indices
    assert np.abs(by_pyav.frames.astype(int) - by_opencv.frames.astype(int)).mean() < 4


def test_a_file_opencv_decodes_stays_with_opencv(tmp_path):
    path = make_clip(tmp_path / "c.mp4", 20)
    clip = sample_frames(path, 4)
    assert (clip.decoder, clip.codec) == ("opencv", "fmp4")  # OpenCV's name for this MPEG-4 part 2 stream
    assert not _pyav.wanted(path, path, None)  # even when probed, OpenCV grabs its first frame


def test_frames_json_reports_decoder_and_codec(av1, capsys):
    code, out, err = run(["frames", av1["g60.mkv"], "--frames", "6", "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert (record["decoder"], record["codec"], record["total_frames"]) == ("pyav", "av1", 300)
    keys = list(record)
    assert keys[keys.index("warnings") + 1 : keys.index("warnings") + 3] == ["decoder", "codec"]


def test_ask_json_answers_about_an_av1_clip(av1, tiny_dir, capsys):
    code, out, err = run(["ask", av1["g60.mkv"], "What happens?", "--model", str(tiny_dir), "--frames", "4",
                          "--max-new-tokens", "3", "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert (record["decoder"], record["codec"], record["frames"]) == ("pyav", "av1", 4)
