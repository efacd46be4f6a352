"""`--segments`: cut lists -> windows, PySceneDetect on clips with known cuts, and segment captioning
(frames inside their window, batched equals one at a time, resume and kill-safety, settings_id)."""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest

from vqa_cli.cli import main
from vqa_cli.errors import UsageError
from vqa_cli.testing import scene_clip  # the same generated scenes benchmarks/segments.py times
from vqa_cli.video import scenes as video_scenes
from vqa_cli.video.scenes import Window

LENGTHS = [23, 17, 31, 9, 20]  # 100 frames at 10 fps: cuts at 2.3, 4.0, 7.1, 8.0 s
CUT_FRAMES = [23, 40, 71, 80]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> str:
    return scene_clip(str(tmp_path_factory.mktemp("scenes") / "scenes.mp4"), LENGTHS)


# ---- pure ------------------------------------------------------------------------------------------


def test_parse_spec():
    assert video_scenes.parse_spec("none") == video_scenes.SegmentSpec("none")
    assert video_scenes.parse_spec("scenes").kind == "scenes"
    assert video_scenes.parse_spec("fixed:2.5") == video_scenes.SegmentSpec("fixed", 2.5)
    for bad in ("fixed:0", "fixed:-1", "fixed:x", "shots", "fixed:inf"):
        with pytest.raises(UsageError):
            video_scenes.parse_spec(bad)


def test_cut_windows_tile_the_video():
    assert video_scenes.cut_windows([2.3, 4.0, 4.0, 0.0, 12.0], 10.0) == [Window(0.0, 2.3), Window(2.3, 4.0),
                                                                      Window(4.0, 10.0)]
    assert video_scenes.cut_windows([], 5.0) == [Window(0.0, 5.0)]


def test_fixed_windows_are_exact():
    assert video_scenes.fixed_windows(4.0, 10.0) == [Window(0.0, 4.0), Window(4.0, 8.0), Window(8.0, 10.0)]
    assert video_scenes.fixed_windows(2.5, 5.0) == [Window(0.0, 2.5), Window(2.5, 5.0)]
    assert video_scenes.fixed_windows(0.1, 0.3) == [Window(0.0, 0.1), Window(0.1, 0.2), Window(0.2, 0.3)]


def test_short_windows_merge_with_the_shorter_neighbour():
    windows = video_scenes.cut_windows([2.3, 4.0, 7.1, 8.0], 10.0)  # lengths 2.3 1.7 3.1 0.9 2.0
    merged = video_scenes.merge_short(windows, 1.0)
    assert merged == [Window(0.0, 2.3), Window(2.3, 4.0), Window(4.0, 7.1), Window(7.1, 10.0)]  # 0.9 -> next (2.0)
    # 0.9 -> next (2.0 < 3.1), then 1.7 -> previous (2.3 < 3.1)
    assert video_scenes.merge_short(windows, 2.0) == [Window(0.0, 4.0), Window(4.0, 7.1), Window(7.1, 10.0)]
    assert video_scenes.merge_short(windows, 100.0) == [Window(0.0, 10.0)]
    assert video_scenes.merge_short([Window(0.0, 0.5), Window(0.5, 5.0)], 1.0) == [Window(0.0, 5.0)]  # first -> next
    for limit in (0.5, 1.0, 2.0, 3.0):  # still a tiling, and nothing short unless one window is left
        out = video_scenes.merge_short(windows, limit)
        assert out[0].start == 0.0 and out[-1].end == 10.0
        assert all(a.end == b.start for a, b in zip(out, out[1:], strict=False))
        assert len(out) == 1 or min(w.length for w in out) >= limit


# ---- PySceneDetect -----------------------------------------------------------------------------------


def test_detected_cuts_are_within_one_frame_of_the_true_cuts(scenes):
    cuts, duration, scanned = video_scenes.detect_cuts(scenes)
    assert duration == pytest.approx(10.0) and scanned == 100
    assert len(cuts) == len(CUT_FRAMES)
    for found, frame in zip(cuts, CUT_FRAMES, strict=True):
        assert abs(found * 10 - frame) <= 1


def test_a_high_threshold_finds_no_cut(scenes):
    cuts, _, _ = video_scenes.detect_cuts(scenes, threshold=250.0)
    assert cuts == []


# ---- hard cuts of several kinds, on lossless clips (FFV1: flat colours stay flat) ------------------------------

W, H, FPS = 96, 64, 10


def lossless_clip(path, frames: list[np.ndarray]) -> str:
    """``frames`` (RGB) encoded losslessly with the ffmpeg binary (FFV1 in Matroska) at ``FPS``."""
    import subprocess

    from tests.clips import ffmpeg_exe

    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", str(FPS),
           "-i", "-", "-c:v", "ffv1", "-pix_fmt", "bgr0", str(path)]
    subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), check=True, capture_output=True)
    return str(path)


def flat(rgb, n: int, speed: int = 4) -> list[np.ndarray]:
    """``n`` full frames of one colour with a white box moving across them."""
    out = []
    for k in range(n):
        frame = np.empty((H, W, 3), np.uint8)
        frame[:] = rgb
        x = (k * speed) % (W - 12)
        frame[20:32, x:x + 12] = 255
        out.append(frame)
    return out


def noise(n: int, seed: int, block: int = 8) -> list[np.ndarray]:
    """A random block texture drifting one pixel a frame."""
    tiles = np.random.default_rng(seed).integers(0, 256, (H // block, W // block, 3), dtype=np.uint8)
    image = np.kron(tiles, np.ones((block, block, 1), np.uint8))
    return [np.roll(image, k, axis=1).copy() for k in range(n)]


def stripes(n: int, period: int, horizontal: bool) -> list[np.ndarray]:
    """Grey and dark stripes scrolling: the two orientations have one and the same histogram."""
    out = []
    for k in range(n):
        axis = np.arange(H)[:, None] if horizontal else np.arange(W)[None, :]
        mask = np.broadcast_to(((axis + k) // period) % 2 == 0, (H, W))
        frame = np.empty((H, W, 3), np.uint8)
        frame[mask], frame[~mask] = (200, 200, 200), (30, 30, 30)
        out.append(frame)
    return out


def fade(a: np.ndarray, b: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` frames blending from ``a`` to ``b`` (neither end included)."""
    return [((1 - t) * a.astype(float) + t * b.astype(float)).astype(np.uint8) for t in np.linspace(0, 1, n + 2)[1:-1]]


def shots(*parts: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """The frames of ``parts`` one after another and the frames where each part after the first starts."""
    starts = np.cumsum([len(p) for p in parts])[:-1].tolist()
    return [f for p in parts for f in p], starts


HARD_CUTS = {
    # the clip: blue 3 s, cyan 2 s, green 4 s (cyan -> green: same saturation and value, close hue)
    "blue-cyan-green": shots(flat((0, 0, 255), 30), flat((0, 255, 255), 20), flat((0, 255, 0), 40)),
    "flat pairs": shots(flat((255, 0, 0), 20), flat((255, 0, 255), 20), flat((255, 255, 0), 20),
                        flat((128, 128, 128), 20), flat((140, 140, 140), 20), flat((0, 0, 0), 20)),
    "close hues": shots(flat((200, 60, 60), 20), flat((200, 90, 60), 20), flat((60, 60, 200), 20),
                        flat((60, 100, 200), 20)),
    "textures": shots(noise(25, 1), noise(25, 2), stripes(25, 4, True), stripes(25, 6, False), noise(25, 3, 4)),
}


@pytest.mark.parametrize("name", list(HARD_CUTS))
def test_the_default_detector_finds_every_hard_cut_within_one_frame(name, tmp_path):
    frames, truth = HARD_CUTS[name]
    cuts, duration, scanned = video_scenes.detect_cuts(lossless_clip(tmp_path / "cuts.mkv", frames))
    assert scanned == len(frames) and duration == pytest.approx(len(frames) / FPS)
    assert len(cuts) == len(truth), (cuts, truth)
    for found, frame in zip(cuts, truth, strict=True):
        assert abs(found * FPS - frame) <= 1


def test_a_fade_is_at_most_one_cut_and_a_cut_after_it_is_found(tmp_path):
    """A fade is one gradual transition: no cut, or one inside it (vqa gives one at its middle); a hard cut after
    it is still found."""
    a, b = flat((0, 0, 255), 30), flat((255, 200, 0), 30)
    frames, (fade_start, fade_end, cut) = shots(a, fade(a[-1], b[0], 15), b, flat((0, 255, 0), 30))
    cuts, _, _ = video_scenes.detect_cuts(lossless_clip(tmp_path / "fade.mkv", frames))
    in_fade = [c for c in cuts if fade_start - 1 <= c * FPS <= fade_end + 1]
    assert len(in_fade) <= 1 and len(cuts) == len(in_fade) + 1, cuts
    assert abs(cuts[-1] * FPS - cut) <= 1
    textured, _ = shots(noise(30, 1), fade(noise(1, 1)[0], noise(1, 2)[0], 10), noise(30, 2))  # a dissolve
    cuts, _, _ = video_scenes.detect_cuts(lossless_clip(tmp_path / "dissolve.mkv", textured))
    assert len(cuts) <= 1 and all(29 <= c * FPS <= 41 for c in cuts), cuts


def test_cuts_on_consecutive_frames_are_one_transition():
    assert video_scenes.collapse_runs([]) == []
    assert video_scenes.collapse_runs([30, 50]) == [30, 50]
    assert video_scenes.collapse_runs([31, 30, 30]) == [30]  # two: the earlier
    assert video_scenes.collapse_runs(list(range(30, 46)) + [75]) == [37, 75]  # 30..45: the middle (earlier of two)
    assert video_scenes.collapse_runs([10, 11, 12, 20]) == [11, 20]


def test_each_detector_has_its_own_threshold_and_the_choice_is_in_the_settings_id():
    from vqa_cli.cli.options import run_settings
    from vqa_cli.output.records import settings_id

    assert run_settings(model="m").scene_detector == "combined"
    for detector, default in (("combined", 27.0), ("content", 27.0), ("adaptive", 3.0), ("histogram", 0.2)):
        assert run_settings(model="m", scene_detector=detector).scene_threshold == default
        assert run_settings(model="m", scene_detector=detector, scene_threshold=0.5).scene_threshold == 0.5
    assert video_scenes.combined_thresholds(27.0) == (27.0, 0.2)
    assert video_scenes.combined_thresholds(13.5) == (13.5, 0.1)
    assert video_scenes.combined_thresholds(135.0) == (135.0, None)  # PySceneDetect caps the histogram's at 1

    def sid(**kw):
        return settings_id(run_settings(model="m", **kw).identity(), "p")

    assert sid(segments="scenes", scene_detector="content") != sid(segments="scenes")
    assert sid(segments="scenes", scene_detector="adaptive") != sid(segments="scenes", scene_detector="histogram")
    assert sid(scene_detector="adaptive") == sid()  # without scenes the detector changes nothing


def test_scene_detector_reaches_pyscenedetect(tmp_path, tiny_dir, capsys):
    """--scene-detector and --scene-threshold on the command line reach the detector: stripes turned sideways
    have the very same luma histogram (checked here), so the histogram detector alone cannot see that cut, while
    the default (content with histogram) does; a threshold no change reaches gives one segment."""
    frames, truth = shots(stripes(25, 4, True), stripes(25, 6, False))
    luma = [np.histogram(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), bins=256, range=(0, 256))[0] for f in frames]
    assert all((h == luma[0]).all() for h in luma)
    clip = lossless_clip(tmp_path / "stripes.mkv", frames)
    from vqa_cli.cli.options import run_settings
    from vqa_cli.jobs.segments import windows_of

    for extra, windows in (({}, [(0.0, 2.5), (2.5, 5.0)]),
                           ({"scene_detector": "histogram"}, [(0.0, 5.0)]),
                           ({"scene_detector": "content"}, [(0.0, 2.5), (2.5, 5.0)]),
                           ({"scene_detector": "content", "scene_threshold": 250.0}, [(0.0, 5.0)]),
                           ({"scene_threshold": 250.0}, [(0.0, 5.0)])):
        found, _, scanned = windows_of(clip, run_settings(model="m", segments="scenes", **extra))
        assert [(w.start, w.end) for w in found] == windows and scanned == 50, extra
    out = tmp_path / "c.jsonl"  # the option on the command line
    assert _run([clip, "--out", str(out), "--segments", "scenes", "--scene-detector", "histogram",
                 *_args(tiny_dir)], capsys)[0] == 0
    assert [(s["start"], s["end"]) for s in json.loads(out.read_text())["segments"]] == [(0.0, 5.0)]
    for bad in (["--scene-detector", "shots"], ["--scene-detector", "histogram", "--scene-threshold", "2"]):
        code, _, err = _run([clip, "--segments", "scenes", *bad, *_args(tiny_dir)], capsys)
        assert code == 2 and "--scene-detector" in err, bad


def test_scene_detection_is_not_imported_by_help():
    import subprocess

    code = "import sys, vqa_cli.cli; print('scenedetect' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# ---- captioning in segments ----------------------------------------------------------------------------


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", *argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _args(tiny_dir, *extra):
    return ["--model", str(tiny_dir), "--dtype", "float32", "--frames", "2", "--max-new-tokens", "3",
            "--subtitles", "off", *extra]


def test_each_scene_is_captioned_from_frames_inside_it(scenes, tiny_dir, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    code, _, _ = _run([scenes, "--out", str(out), "--segments", "scenes", *_args(tiny_dir)], capsys)
    assert code == 0
    rec = json.loads(out.read_text())
    segs = rec["segments"]
    assert [round(s["start"] * 10) for s in segs] == [0, *CUT_FRAMES]
    assert segs[-1]["end"] == pytest.approx(10.0)
    for s in segs:
        assert s["frame_indices"] and all(s["start"] <= t < s["end"] for t in s["timestamps"])
        assert isinstance(s["caption"], str)
    assert rec["frames"] == sum(len(s["frame_indices"]) for s in segs)
    assert rec["caption"] == "\n".join(s["caption"] for s in segs)


def test_fixed_segments_are_exact_windows(scenes, tiny_dir, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    assert _run([scenes, "--out", str(out), "--segments", "fixed:3", *_args(tiny_dir)], capsys)[0] == 0
    segs = json.loads(out.read_text())["segments"]
    assert [(s["start"], s["end"]) for s in segs] == [(0.0, 3.0), (3.0, 6.0), (6.0, 9.0), (9.0, 10.0)]
    assert [s["frame_indices"] for s in segs] == [[7, 22], [37, 52], [67, 82], [92, 97]]


def test_min_scene_merges_short_scenes(scenes, tiny_dir, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    assert _run([scenes, "--out", str(out), "--segments", "scenes", "--min-scene", "1.5", *_args(tiny_dir)],
                capsys)[0] == 0
    segs = json.loads(out.read_text())["segments"]
    assert [(s["start"], s["end"]) for s in segs] == [(0.0, 2.3), (2.3, 4.0), (4.0, 7.1), (7.1, 10.0)]


def test_batched_segments_equal_one_at_a_time(scenes, tiny_dir, tmp_path, capsys):
    second = scene_clip(str(tmp_path / "two.mp4"), [12, 18])
    results = []
    for batch in ("1", "4"):
        out = tmp_path / f"b{batch}.jsonl"
        assert _run([scenes, second, "--out", str(out), "--segments", "scenes", "--batch-size", batch,
                     *_args(tiny_dir)], capsys)[0] == 0
        results.append([(r["video"], [(s["start"], s["caption"], s["frame_indices"]) for s in r["segments"]])
                        for r in map(json.loads, out.read_text().splitlines())])
    assert results[0] == results[1] and len(results[0]) == 2


def test_resume_and_a_killed_run_with_segments(scenes, tiny_dir, tmp_path, capsys):
    second = scene_clip(str(tmp_path / "two.mp4"), [12, 18])
    out = tmp_path / "c.jsonl"
    args = [scenes, second, "--out", str(out), "--segments", "fixed:4", *_args(tiny_dir)]
    assert _run(args, capsys)[0] == 0
    first, _ = out.read_text().splitlines()
    out.write_text(first + "\n" + '{"video": "' + second + '", "caption": "cut o')  # killed mid-line
    code, _, err = _run(args, capsys)
    assert code == 0 and "1 captioned" in err and "1 already done" in err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["video"] for r in lines] == [scenes, second] and lines[0] == json.loads(first)
    assert all(r["segments"] for r in lines)
    code, _, err = _run(args, capsys)
    assert code == 0 and "nothing to do" in err


def test_an_undecodable_video_gets_one_error_record_with_every_field(tiny_dir, tmp_path, capsys):
    from vqa_cli.output.records import CAPTION_FIELDS

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 4096)
    out = tmp_path / "c.jsonl"
    assert _run([str(bad), "--out", str(out), "--segments", "scenes", *_args(tiny_dir)], capsys)[0] == 1
    rec = json.loads(out.read_text())
    assert list(rec) == list(CAPTION_FIELDS) and rec["error"] and rec["segments"] is None


def test_settings_id_follows_the_settings_that_change_captions():
    from vqa_cli.cli.options import run_settings
    from vqa_cli.output.records import settings_id

    def sid(**kw):
        return settings_id(run_settings(model="m", **kw).identity(), "p")

    base = sid()
    assert sid(segments="none", scene_threshold=5.0, min_scene=3.0) == base  # unused knobs left out
    assert sid(segments="scenes") != base and sid(segments="fixed:2") != base
    assert sid(segments="scenes", scene_threshold=30.0) != sid(segments="scenes")
    assert sid(segments="scenes", min_scene=2.0) != sid(segments="scenes")
    assert sid(segments="fixed:2") == sid(segments="fixed:2.0") != sid(segments="fixed:3")
    assert sid(subtitles="auto") != base and sid(subtitles="off") == base


def test_format_and_out_dir_keep_the_settings_id(scenes, tiny_dir, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    assert _run([scenes, "--out", str(out), "--segments", "fixed:5", *_args(tiny_dir)], capsys)[0] == 0
    code, _, err = _run([scenes, "--out", str(out), "--out-dir", str(tmp_path / "d"), "--format", "srt",
                         "--segments", "fixed:5", *_args(tiny_dir)], capsys)
    assert code == 0 and "nothing to do" in err


def test_usage_errors(scenes, tiny_dir, tmp_path, capsys):
    for extra, message in ((["--segments", "fixed:0"], "--segments"), (["--format", "srt", "--out", "x.jsonl"],
                                                                         "--out-dir"),
                           (["--format", "xml"], "--format"), (["--out-dir", str(tmp_path / "o")], "--format")):
        code, _, err = _run([scenes, *_args(tiny_dir), *extra], capsys)
        assert code == 2 and message in err, (extra, err)


def test_ask_answers_each_segment(scenes, tiny_dir, capsys):
    with pytest.raises(SystemExit) as info:
        main(["ask", scenes, "What happens?", "--json", "--segments", "fixed:4", *_args(tiny_dir)])
    out, _ = capsys.readouterr()
    assert info.value.code == 0
    rec = json.loads(out)
    assert [(s["start"], s["end"]) for s in rec["segments"]] == [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]
    assert rec["answer"] == "\n".join(s["answer"] for s in rec["segments"])
    for s in rec["segments"]:
        assert all(s["start"] <= t < s["end"] for t in s["timestamps"])
    with pytest.raises(SystemExit) as info:
        main(["ask", scenes, "What happens?", "--segments", "scenes", *_args(tiny_dir)])
    out, _ = capsys.readouterr()
    assert info.value.code == 0 and [line.split("]")[0] for line in out.splitlines()] == [
        "[0.000-2.300", "[2.300-4.000", "[4.000-7.100", "[7.100-8.000", "[8.000-10.000"]


def test_an_image_is_one_segment(tiny_dir, tmp_path, capsys):
    image = tmp_path / "still.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 90, np.uint8))
    out = tmp_path / "c.jsonl"
    assert _run([str(image), "--out", str(out), "--segments", "scenes", *_args(tiny_dir)], capsys)[0] == 0
    rec = json.loads(out.read_text())
    assert rec["error"] is None and rec["segments"] is None and rec["frames"] == 1


def test_a_run_killed_mid_video_leaves_whole_records_and_resumes(tiny_dir, tmp_path):
    import os
    import signal
    import subprocess
    import time

    videos = [scene_clip(str(tmp_path / f"v{i}.mp4"), [12, 14, 11, 13]) for i in range(6)]
    out = tmp_path / "c.jsonl"
    argv = [sys.executable, "-c", "from vqa_cli.cli import main; main()", "caption", *videos, "--out", str(out),
            "--segments", "scenes", "--batch-size", "1", "--workers", "1", *_args(tiny_dir)]
    argv[argv.index("3")] = "24"  # more new tokens: slow enough to be killed mid-run
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and out.read_text().count("\n") >= 1):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lines = out.read_text().splitlines()
    assert 1 <= len(lines) < len(videos)
    for line in lines:
        rec = json.loads(line)
        assert rec["error"] is None and len(rec["segments"]) == 4  # never a video with part of its segments
    assert subprocess.run(argv, capture_output=True).returncode == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["video"] for r in recs) == sorted(videos) and all(len(r["segments"]) == 4 for r in recs)


def test_segments_are_cut_to_start_and_end(scenes, tiny_dir, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    assert _run([scenes, "--out", str(out), "--segments", "fixed:3", "--start", "2", "--end", "8",
                 *_args(tiny_dir)], capsys)[0] == 0
    segs = json.loads(out.read_text())["segments"]
    assert [(s["start"], s["end"]) for s in segs] == [(2.0, 3.0), (3.0, 6.0), (6.0, 8.0)]
    assert all(s["start"] <= t < s["end"] for s in segs for t in s["timestamps"])
