"""Subtitles as context: SRT/VTT parsing, the cues of the sampled frames, the token budget, the prompt."""

from __future__ import annotations

import json

import pytest

from tests.clips import make_clip
from vqa_cli.cli import main
from vqa_cli.errors import UsageError
from vqa_cli.output import subtitles
from vqa_cli.output.subtitles import Cue
from vqa_cli.settings import check_subtitles

SRT = """\ufeff1
00:00:00,500 --> 00:00:01,500
Hello <i>there</i>

2
00:00:02,000 --> 00:00:03,250
Second cue
on two lines

3
01:00:00,000 --> 01:00:01,000
An hour in
"""

VTT = """WEBVTT - a title

NOTE a comment
00:00:09.000 --> 00:00:10.000 is not a cue here

intro
00:01.000 --> 00:02.500 align:start position:10%
<v Roger>First</v>

00:00:04.000 --> 00:00:05.000
Second
"""


def test_srt_and_vtt_parse_to_cues():
    assert subtitles.parse(SRT) == [Cue(0.5, 1.5, "Hello there"), Cue(2.0, 3.25, "Second cue on two lines"),
                                    Cue(3600.0, 3601.0, "An hour in")]
    assert subtitles.parse(VTT) == [Cue(1.0, 2.5, "First"), Cue(4.0, 5.0, "Second")]
    assert subtitles.parse(SRT.replace("\n", "\r\n")) == subtitles.parse(SRT)


def test_cues_are_sorted_and_broken_blocks_skipped():
    text = "2\n00:00:05,000 --> 00:00:06,000\nlater\n\nnot a cue\n\n1\n00:00:01,000 --> 00:00:02,000\nearlier\n"
    assert [c.text for c in subtitles.parse(text)] == ["earlier", "later"]


CUES = [Cue(0.0, 1.0, "a"), Cue(1.0, 2.0, "b"), Cue(2.5, 3.0, "c"), Cue(2.9, 6.0, "d"), Cue(7.0, 8.0, "e")]


def test_exactly_the_cues_on_screen_at_the_sampled_frames():
    assert subtitles.overlapping(CUES, [0.5, 2.95]) == [CUES[0], CUES[2], CUES[3]]
    assert subtitles.overlapping(CUES, [1.0]) == [CUES[1]]  # a cue ends where the next starts
    assert subtitles.overlapping(CUES, [2.2, 6.5]) == []
    assert subtitles.overlapping(CUES, [6.5], window=(2.0, 7.0)) == [CUES[2], CUES[3]]  # the segment's cues


def test_the_budget_keeps_the_earliest_cues_that_fit():
    count = len  # one token per character
    text, tokens = subtitles.render(CUES[:3], count, budget=10_000)
    assert text == f"{subtitles.SUBTITLE_HEADER}\na\nb\nc" and tokens == len(text)
    text, tokens = subtitles.render(CUES[:3], count, budget=len(subtitles.SUBTITLE_HEADER) + 4)
    assert text.splitlines()[1:] == ["a", "b"] and tokens <= len(subtitles.SUBTITLE_HEADER) + 4
    assert subtitles.render(CUES, count, budget=3) == ("", 0)
    assert subtitles.render([], count) == ("", 0)


def test_sidecar_and_choices(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert subtitles.find_sidecar(str(video)) is None
    (tmp_path / "clip.vtt").write_text(VTT)
    assert subtitles.find_sidecar(str(video)) == tmp_path / "clip.vtt"
    (tmp_path / "clip.srt").write_text(SRT)
    assert subtitles.find_sidecar(str(video)) == tmp_path / "clip.srt"  # .srt first
    assert subtitles.cues_for(str(video), "off") == []
    assert subtitles.cues_for(str(video), "auto")[0].text == "Hello there"
    assert subtitles.cues_for(str(video), str(tmp_path / "clip.vtt"))[0].text == "First"
    with pytest.raises(UsageError):
        check_subtitles(str(tmp_path / "missing.srt"))


@pytest.fixture()
def captioned(caption_asked, tiny_dir):
    """Run `vqa caption` and return (records, the questions the model was asked); the run must succeed."""
    def run(*argv):
        code, recs, asked, err = caption_asked(*argv)
        assert code == 0, err
        return recs, asked

    run.tiny_dir = tiny_dir
    return run


def test_the_prompt_gets_the_cues_of_the_sampled_frames(tmp_path, captioned):
    video = make_clip(str(tmp_path / "v.mp4"), 40, fps=10.0)  # frames 0..39, 4 s
    (tmp_path / "v.srt").write_text(
        "1\n00:00:00,000 --> 00:00:00,400\nbefore\n\n2\n00:00:00,400 --> 00:00:00,600\nAT-FIRST\n\n"
        "3\n00:00:01,000 --> 00:00:02,000\nbetween\n\n4\n00:00:02,400 --> 00:00:03,000\nAT-SECOND\n")
    recs, asked = captioned(video, "--frames", "2")  # frames 10 and 30: 1.0 s and 3.0 s
    assert recs[0]["timestamps"] == [1.0, 3.0]
    assert asked[0].startswith(subtitles.SUBTITLE_HEADER) and asked[0].splitlines()[1:] == ["between", "Describe."]
    assert recs[0]["subtitle_tokens"] > 0
    recs2, asked2 = captioned(video, "--frames", "2", "--subtitles", "off")
    assert asked2 == ["Describe."] and recs2[0]["subtitle_tokens"] == 0
    assert recs2[0]["settings_id"] != recs[0]["settings_id"]


def test_segments_get_the_cues_within_them(tmp_path, captioned):
    video = make_clip(str(tmp_path / "v.mp4"), 40, fps=10.0)
    (tmp_path / "v.srt").write_text("1\n00:00:00,100 --> 00:00:00,300\nearly\n\n"
                                    "2\n00:00:02,500 --> 00:00:02,700\nlate\n")
    recs, asked = captioned(video, "--frames", "1", "--segments", "fixed:2")
    assert [q.splitlines()[1:-1] for q in asked] == [["early"], ["late"]]
    assert [s["subtitle_tokens"] > 0 for s in recs[0]["segments"]] == [True, True]


def test_no_sidecar_keeps_the_settings_id_of_a_run_without_subtitles(tmp_path, captioned):
    video = make_clip(str(tmp_path / "v.mp4"), 20, fps=10.0)
    auto, _ = captioned(video, "--frames", "1")
    off, _ = captioned(video, "--frames", "1", "--subtitles", "off")
    assert auto[0]["settings_id"] == off[0]["settings_id"]


def test_plan_shows_the_subtitle_budget(tmp_path, tiny_dir, capsys):
    video = make_clip(str(tmp_path / "v.mp4"), 20, fps=10.0)
    plans = []
    for extra in ([], ["--subtitles", "off"]):
        (tmp_path / "v.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhi\n")
        with pytest.raises(SystemExit) as info:
            main(["ask", video, "What?", "--plan", "--json", "--model", str(tiny_dir), *extra])
        assert info.value.code == 0
        plans.append(json.loads(capsys.readouterr().out))
    assert plans[0]["subtitle_tokens"] == subtitles.DEFAULT_SUBTITLE_TOKENS and plans[1]["subtitle_tokens"] == 0
    assert plans[0]["total_tokens"] == plans[1]["total_tokens"] + subtitles.DEFAULT_SUBTITLE_TOKENS


def test_context_is_the_cues_of_the_frames_within_the_budget(tmp_path):
    video = tmp_path / "v.mp4"
    (tmp_path / "v.srt").write_text(SRT)
    text, tokens = subtitles.context(str(video), "auto", [1.0, 3.0], len)
    assert text.splitlines() == [subtitles.SUBTITLE_HEADER, "Hello there", "Second cue on two lines"]
    assert tokens == len(text)
    assert subtitles.context(str(video), "off", [1.0], len) == ("", 0)
    assert subtitles.context(str(video), "auto", [1.6], len) == ("", 0)


def test_one_subtitle_file_takes_one_video(tmp_path, tiny_dir, capsys):
    a, b = make_clip(str(tmp_path / "a.mp4"), 10), make_clip(str(tmp_path / "b.mp4"), 10)
    (tmp_path / "s.srt").write_text(SRT)
    with pytest.raises(SystemExit) as info:
        main(["caption", a, b, "--subtitles", str(tmp_path / "s.srt"), "--model", str(tiny_dir)])
    assert info.value.code == 2 and "--subtitles FILE" in capsys.readouterr().err


# ---- vqa's own output is never read back as subtitles ----------------------------------------------------------


def _sidecar_seen_by_a_process(video, stdout) -> str:
    """``find_sidecar`` in a fresh process whose standard output is ``stdout`` (the answer comes on stderr)."""
    import subprocess
    import sys

    code = (f"import sys; from vqa_cli.output import subtitles; "
            f"print(subtitles.find_sidecar({str(video)!r}), file=sys.stderr)")
    return subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          check=True).stderr.strip()


def test_auto_passes_over_empty_files_stdout_and_out(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    srt_file, vtt_file = tmp_path / "clip.srt", tmp_path / "clip.vtt"
    srt_file.write_text("")
    assert subtitles.find_sidecar(str(video)) is None  # empty (the shell's `> clip.srt` before vqa starts)
    srt_file.write_text("1\nno timing line here\n")
    assert subtitles.find_sidecar(str(video)) is None  # no cue
    srt_file.write_text(SRT)
    assert subtitles.find_sidecar(str(video)) == srt_file
    with open(srt_file, "a") as out:  # the same file as this process's stdout: not subtitles
        assert _sidecar_seen_by_a_process(video, out) == "None"
    with open(tmp_path / "elsewhere.txt", "w") as out:
        assert _sidecar_seen_by_a_process(video, out) == str(srt_file)
    vtt_file.write_text(VTT)
    try:
        subtitles.set_outputs([str(srt_file)])  # --out clip.srt: the run's own output
        assert subtitles.find_sidecar(str(video)) == vtt_file  # the next candidate
    finally:
        subtitles.set_outputs([])
    assert subtitles.find_sidecar(str(video)) == srt_file


def test_files_vqa_wrote_are_recognised_by_their_content(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    mine = "1\n00:00:00,000 --> 00:00:02,000\nA caption vqa wrote.\n\n"
    (tmp_path / "clip.srt").write_text(mine)
    assert subtitles.find_sidecar(str(video)) == tmp_path / "clip.srt"
    subtitles.remember_written(mine.encode(), str(tmp_path / "clip.srt"))
    assert subtitles.find_sidecar(str(video)) is None
    other = tmp_path / "copy"  # copied elsewhere: still vqa's
    other.mkdir()
    (other / "clip.mp4").write_bytes(b"")
    (other / "clip.srt").write_text(mine)
    assert subtitles.find_sidecar(str(other / "clip.mp4")) is None
    (tmp_path / "clip.srt").write_text(mine.replace("vqa wrote", "a user corrected"))  # edited: the user's now
    assert subtitles.find_sidecar(str(video)) == tmp_path / "clip.srt"


def test_the_readme_recipe_twice_then_a_plain_run_equal_a_run_before_it(tmp_path, tiny_dir, capsys):
    """`vqa caption clip.mp4 --segments scenes --format srt > clip.srt` (a real process, stdout opened on the file
    beside the clip), twice, then a plain run: none reads clip.srt back, so all equal the run before the recipe."""
    import subprocess
    import sys

    from vqa_cli.output.writer._formats import format_writer
    from vqa_cli.testing import scene_clip

    video = scene_clip(str(tmp_path / "clip.mp4"), [12, 9, 14])
    common = [video, "--model", str(tiny_dir), "--dtype", "float32", "--frames", "2", "--max-new-tokens", "4",
              "--segments", "scenes"]

    def plain(name):
        out = tmp_path / name
        with pytest.raises(SystemExit) as info:
            main(["caption", *common, "--out", str(out)])
        capsys.readouterr()
        assert info.value.code == 0
        rec = json.loads(out.read_text())
        return {k: rec[k] for k in ("settings_id", "caption", "segments", "subtitle_tokens", "visual_tokens")}

    before = plain("before.jsonl")
    assert len(before["segments"]) == 3 and before["subtitle_tokens"] == 0
    expected_srt = format_writer("srt").text({"segments": before["segments"]})
    for _ in range(2):
        with open(tmp_path / "clip.srt", "w") as stdout:  # the shell's `> clip.srt`
            subprocess.run([sys.executable, "-c", "from vqa_cli.cli import main; main()", "caption", *common,
                            "--format", "srt"], stdout=stdout, stderr=subprocess.PIPE, check=True)
        assert (tmp_path / "clip.srt").read_text() == expected_srt
    assert plain("after.jsonl") == before  # clip.srt (vqa's own) beside the clip is not its subtitles


def test_sidecars_written_into_the_video_folder_are_not_read_back(tmp_path, captioned):
    """`--out-dir` the videos' own folder puts clip.vtt beside clip.mp4: the next run does not take it."""
    video = make_clip(str(tmp_path / "v.mp4"), 30, fps=10.0)
    before, asked = captioned(video, "--frames", "1", "--segments", "fixed:1.5")
    index = tmp_path / "index.jsonl"
    with pytest.raises(SystemExit) as info:
        main(["caption", video, "--frames", "1", "--segments", "fixed:1.5", "--format", "vtt", "--out-dir",
              str(tmp_path), "--out", str(index), "--model", str(captioned.tiny_dir), "--dtype", "float32",
              "--max-new-tokens", "2", "--prompt", "Describe."])
    assert info.value.code == 0 and (tmp_path / "v.vtt").read_text().startswith("WEBVTT")
    after, asked_after = captioned(video, "--frames", "1", "--segments", "fixed:1.5")
    assert asked_after == asked == ["Describe.", "Describe."]
    assert [r["settings_id"] for r in after] == [r["settings_id"] for r in before]


def test_the_list_of_written_files_keeps_the_latest(tmp_path, monkeypatch):
    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(subtitles, "_WRITTEN_KEEP", 3)  # trimmed past 3 * 400 bytes, to the last 3
    files = [f"1\n00:00:00,000 --> 00:00:01,000\nfile {k}\n".encode() for k in range(12)]
    for data in files:
        subtitles.remember_written(data, "x" * 100)
    kept = [subtitles._is_written(data) for data in files]
    assert kept[-3:] == [True] * 3 and not any(kept[:-4])
    lines = (tmp_path / "cache" / subtitles.WRITTEN_FILE).read_text().splitlines()
    assert 3 <= len(lines) < 12
