"""Subtitles as context: SRT/VTT parsing, the cues of the sampled frames, the token budget, the prompt."""

from __future__ import annotations

import json

import pytest
from clips import make_clip

from vqa_cli import subtitles
from vqa_cli.cli import main
from vqa_cli.errors import UsageError
from vqa_cli.subtitles import Cue

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
        subtitles.check_choice(str(tmp_path / "missing.srt"))


@pytest.fixture()
def captioned(tmp_path, tiny_dir, monkeypatch, capsys):
    """Run `vqa caption` and return (records, the questions the model was asked)."""
    from vqa_cli.engine import Engine

    asked: list[str] = []
    original = Engine.answer_batch

    def spy(self, clips, question, *args, **kwargs):
        asked.extend([question] * len(clips) if isinstance(question, str) else question)
        return original(self, clips, question, *args, **kwargs)

    monkeypatch.setattr(Engine, "answer_batch", spy)

    def run(*argv):
        out = tmp_path / "out.jsonl"
        out.unlink(missing_ok=True)
        asked.clear()
        with pytest.raises(SystemExit) as info:
            main(["caption", *argv, "--out", str(out), "--model", str(tiny_dir), "--dtype", "float32",
                  "--max-new-tokens", "2", "--prompt", "Describe."])
        capsys.readouterr()
        assert info.value.code == 0
        return [json.loads(x) for x in out.read_text().splitlines()], list(asked)

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
