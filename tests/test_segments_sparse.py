"""Sparse and variable-frame-rate video: a window in which no frame starts gets the frame on screen during it
(segments, ``--start``/``--end``), and a file whose header counts nominal frames is not "cut short" when its
timestamps reach its end.  The oracle is a full sequential PyAV decode (``clips.pyav_decode_all``): its pts list
and its frames' own numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.cli_run import run
from tests.clips import frame_number, pyav_decode_all, truncate, vfr_clip
from vqa_cli.video import DecodeOptions, sample_frames

SPARSE_TIMES = [0.0, 3.0, 3.5, 6.0]  # a screen recording: the first frame stays up for 3 s
VFR_TIMES = [0.0, 0.1, 0.15, 0.9, 1.0, 1.7, 2.2, 2.25, 2.3, 3.1, 3.6, 4.0]  # at a nominal 60 fps
CUT_SHORT = "cut short"


@pytest.fixture(scope="module")
def sparse(tmp_path_factory) -> str:
    path = vfr_clip(tmp_path_factory.mktemp("sparse") / "sparse.mkv", SPARSE_TIMES)
    assert pyav_decode_all(path)[1] == SPARSE_TIMES  # the clip is what the tests say it is
    return path


@pytest.fixture(scope="module")
def vfr(tmp_path_factory) -> str:
    path = vfr_clip(tmp_path_factory.mktemp("vfr") / "vfr.mkv", VFR_TIMES, fps=60.0)
    assert pyav_decode_all(path)[1] == VFR_TIMES
    return path


def expected(pts: list[float], start: float, end: float, frames: int) -> list[int]:
    """The test's own rule: the frames starting inside ``[start, end)`` (``frames`` of them, each the middle of
    one of ``frames`` equal runs), else the one on screen: the last whose pts is at or before ``start``."""
    inside = [i for i, t in enumerate(pts) if start <= t < end]
    if inside:
        if len(inside) <= frames:
            return inside
        return [inside[math.floor((k + 0.5) * len(inside) / frames)] for k in range(frames)]
    return [max(i for i, t in enumerate(pts) if t <= start)]


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
@pytest.mark.parametrize("seek", ["exact", "keyframe"])
def test_a_window_without_a_new_frame_gets_the_frame_on_screen(sparse, decoder, seek):
    frames, pts = pyav_decode_all(sparse)
    for start in [0.0, 0.5, 1.0, 2.0, 2.999, 3.2, 4.0, 5.0, 6.5, 7.0]:
        clip = sample_frames(sparse, 2, start=start, end=start + 1.0, seek=seek,
                             options=DecodeOptions(decoder=decoder))
        want = expected(pts, start, start + 1.0, 2)
        assert clip.indices == want, start
        assert clip.timestamps == [pts[i] for i in want], start  # the frame's own pts, never the window's
        assert [frame_number(f) for f in clip.frames] == [frame_number(frames[i]) for i in want], start


def test_a_rate_over_a_window_without_a_new_frame(sparse):
    pts = pyav_decode_all(sparse)[1]
    clip = sample_frames(sparse, fps=2.0, start=1.0, end=2.5)
    assert clip.indices == [max(i for i, t in enumerate(pts) if t <= 1.0)]


def test_a_start_past_the_end_still_fails(sparse):
    from vqa_cli.video import VideoError

    with pytest.raises(VideoError, match="past the end"):
        sample_frames(sparse, 2, start=60.0)


def test_a_variable_frame_rate_reaching_its_end_is_not_cut_short(vfr, tmp_path):
    whole = sample_frames(vfr, 4)
    assert whole.frames_from_header > whole.frames_from_content + 1  # the header counts nominal frames
    assert whole.frames_from_content == len(VFR_TIMES)
    assert whole.warnings == []
    cut = sample_frames(truncate(vfr, tmp_path / "cut.mkv", 0.7), 4)  # its timestamps stop early
    assert cut.frames_from_content < len(VFR_TIMES)
    assert any(CUT_SHORT in w for w in cut.warnings)


def test_a_sparse_file_that_lost_its_last_frame_is_cut_short(tmp_path):
    """Frames a second apart, the last 0.9 s after the one before: cut short by that one frame, the timestamps
    stop 0.9 s before the end the header claims (more than a frame, though less than the frames' spacing)."""
    times = [0.0, 1.0, 2.0, 3.0, 4.0, 4.9]
    whole = vfr_clip(tmp_path / "whole.mkv", times)
    assert pyav_decode_all(whole)[1] == times and sample_frames(whole, 2).warnings == []
    for keep in (0.95, 0.93, 0.9, 0.88, 0.85):  # the first cut that loses the last frame alone, by the oracle
        cut = truncate(whole, tmp_path / f"cut{keep}.mkv", keep)
        if pyav_decode_all(cut)[1] == times[:-1]:
            break
    else:
        pytest.fail("no cut loses the last frame alone")
    assert any(CUT_SHORT in w for w in sample_frames(cut, 2).warnings)


# ---- the command line ----------------------------------------------------------------------------------


def _args(tiny_dir):
    return ["--model", str(tiny_dir), "--dtype", "float32", "--frames", "2", "--max-new-tokens", "3",
            "--subtitles", "off"]


def _check_segments(segs: list[dict], pts: list[float], text_key: str) -> None:
    assert segs[0]["start"] == 0.0
    assert all(a["end"] == b["start"] for a, b in zip(segs, segs[1:], strict=False))  # they tile the video
    assert all(s["end"] - s["start"] == pytest.approx(1.0) for s in segs[:-1])
    assert segs[-1]["end"] > pts[-1]  # every frame is in a window
    for s in segs:
        want = expected(pts, s["start"], s["end"], 2)
        assert s["frame_indices"] == want, s
        assert s["timestamps"] == [pts[i] for i in want], s
        assert isinstance(s[text_key], str)


def test_caption_fixed_segments_caption_every_window(sparse, tiny_dir, tmp_path, capsys):

    pts = pyav_decode_all(sparse)[1]
    out = tmp_path / "c.jsonl"
    code, _, err = run(["caption", sparse, "--out", str(out), "--segments", "fixed:1", *_args(tiny_dir)], capsys)
    assert code == 0, err
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["error"] is None
    _check_segments(rec["segments"], pts, "caption")
    assert len(rec["segments"]) > len(pts)  # windows without a frame of their own are captioned too
    assert rec["warnings"] == [] and CUT_SHORT not in err  # nominal 30 fps, 4 frames: whole


def test_ask_segments_on_a_sparse_clip(sparse, tiny_dir, capsys):

    pts = pyav_decode_all(sparse)[1]
    code, out, err = run(["ask", sparse, "What is shown?", "--segments", "fixed:1", "--json", *_args(tiny_dir)],
                         capsys)
    assert code == 0, err
    _check_segments(json.loads(out)["segments"], pts, "answer")


SCENE_TIMES = [0.0, 0.5, 1.0, 4.0, 4.5, 7.0, 7.5]  # red, red, red | blue, blue | green, green
SCENE_STARTS = [3, 5]  # the frames that start a scene


@pytest.fixture(scope="module")
def vfr_scenes(tmp_path_factory) -> str:
    colours = [(200, 30, 30)] * 3 + [(30, 30, 200)] * 2 + [(30, 200, 60)] * 2
    images = [np.full((48, 64, 3), colour, np.uint8) for colour in colours]
    for i, image in enumerate(images):  # a square moves within each scene
        image[5:15, 5 + 6 * i:15 + 6 * i] = 255
    path = vfr_clip(tmp_path_factory.mktemp("vfr_scenes") / "scenes.mkv", SCENE_TIMES, images=images)
    assert pyav_decode_all(path)[1] == SCENE_TIMES
    return path


def test_scene_cuts_of_a_variable_frame_rate_are_at_the_frames_own_times(vfr_scenes, tiny_dir, tmp_path, capsys):
    """PySceneDetect's end is its decoded count over the nominal rate (7 frames: 0.23 s), which put every cut
    past the end; the cuts and the end are the frames' own times."""
    from vqa_cli.video import scenes

    pts = pyav_decode_all(vfr_scenes)[1]
    cuts, duration, scanned = scenes.detect_cuts(vfr_scenes)
    assert cuts == [pts[i] for i in SCENE_STARTS] and duration > pts[-1] and scanned == len(pts)
    out = tmp_path / "c.jsonl"
    code, _, err = run(["caption", vfr_scenes, "--out", str(out), "--segments", "scenes", *_args(tiny_dir)], capsys)
    assert code == 0, err
    segs = json.loads(out.read_text())["segments"]
    assert [s["start"] for s in segs] == [0.0, *(pts[i] for i in SCENE_STARTS)]
    for s in segs:
        assert s["frame_indices"] == expected(pts, s["start"], s["end"], 2)


def test_caption_of_a_variable_frame_rate_file_has_no_cut_short_warning(vfr, tiny_dir, tmp_path, capsys):

    out = tmp_path / "c.jsonl"
    cut = truncate(vfr, tmp_path / "cut.mkv", 0.7)
    code, _, err = run(["caption", vfr, cut, "--out", str(out), *_args(tiny_dir)], capsys)
    assert code == 0, err
    by_video = {r["video"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert by_video[vfr]["warnings"] == [] and CUT_SHORT not in err
    assert any(CUT_SHORT in w for w in by_video[cut]["warnings"])
