"""Sidecar subtitles in the encodings users' tools save them in, files that are not text, and a cue longer than the
subtitle budget: as a hostile user hands them to ``vqa``."""

from __future__ import annotations

import codecs
import random

import pytest

from tests.clips import make_clip
from vqa_cli.cli import main
from vqa_cli.output import subtitles
from vqa_cli.output.subtitles import Cue
from vqa_cli.settings import check_encoding

TEXTS = ["Un café très “noir”", "Grüße aus Köln – naïve", "plain ASCII"]  # the oracle: what the test writes


def srt_text(texts: list[str], newline: str = "\n") -> str:
    blocks = [f"{i + 1}\n00:00:{i:02d},000 --> 00:00:{i:02d},900\n{text}\n" for i, text in enumerate(texts)]
    return "\n".join(blocks).replace("\n", newline)


ENCODED = {  # how editors and players on each platform save the same cues
    "utf-8": srt_text(TEXTS).encode("utf-8"),
    "utf-8 with BOM": codecs.BOM_UTF8 + srt_text(TEXTS).encode("utf-8"),
    "utf-16-le with BOM (Windows 'Unicode')": codecs.BOM_UTF16_LE + srt_text(TEXTS, "\r\n").encode("utf-16-le"),
    "utf-16-be with BOM": codecs.BOM_UTF16_BE + srt_text(TEXTS).encode("utf-16-be"),
    "utf-32-le with BOM": codecs.BOM_UTF32_LE + srt_text(TEXTS).encode("utf-32-le"),
    "utf-32-be with BOM": codecs.BOM_UTF32_BE + srt_text(TEXTS).encode("utf-32-be"),
    "cp1252 (Windows ANSI)": srt_text(TEXTS, "\r\n").encode("cp1252"),
}


@pytest.mark.parametrize("name", list(ENCODED))
def test_the_same_cues_in_every_encoding_give_the_texts_written(tmp_path, capsys, name):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    sidecar = tmp_path / "clip.srt"
    sidecar.write_bytes(ENCODED[name])
    assert subtitles.find_sidecar(str(video)) == sidecar  # auto takes it (not passed over as empty of cues)
    assert [c.text for c in subtitles.cues_for(str(video), "auto")] == TEXTS
    assert [c.text for c in subtitles.cues_for(str(video), str(sidecar))] == TEXTS
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    if name.startswith("cp1252"):  # no BOM, not UTF-8: read as cp1252, said once (two reads), naming the file
        assert len(warnings) == 1 and str(sidecar) in warnings[0] and "cp1252" in warnings[0]
    else:
        assert warnings == []


def test_a_declared_encoding_is_honoured(tmp_path, capsys):
    path = tmp_path / "s.srt"
    latin = ["Un café très noir", "Grüße aus Köln, naïve ½ ¿"]  # what latin-1 can hold
    path.write_bytes(srt_text(latin).encode("latin-1"))
    assert [c.text for c in subtitles.read(path, check_encoding("latin-1"))] == latin
    assert capsys.readouterr().err == ""  # declared: no fallback warning
    cyrillic = ["Привет, мир", "До свидания"]
    path.write_bytes(srt_text(cyrillic).encode("cp1251"))
    assert [c.text for c in subtitles.read(path, "cp1251")] == cyrillic
    assert [c.text for c in subtitles.read(path)] != cyrillic  # the default (cp1252) would not read it


def test_an_unknown_encoding_is_a_usage_error(tmp_path, tiny_dir, capsys):
    video = make_clip(str(tmp_path / "v.mp4"), 10, fps=10.0)
    for bad in ("no-such-codec", "base64"):
        with pytest.raises(SystemExit) as info:
            main(["ask", video, "What?", "--model", str(tiny_dir), "--subtitle-encoding", bad])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and len(err.splitlines()) == 1 and "--subtitle-encoding" in err


def test_a_utf16_sidecar_reaches_the_prompt(tmp_path, caption_asked):
    video = make_clip(str(tmp_path / "v.mp4"), 20, fps=10.0)  # 2 s: the first two cues are on screen
    (tmp_path / "v.srt").write_bytes(ENCODED["utf-16-le with BOM (Windows 'Unicode')"])
    code, recs, asked, err = caption_asked(video, "--frames", "2")
    assert code == 0, err
    assert asked[0].splitlines() == [subtitles.SUBTITLE_HEADER, *TEXTS[:2], "Describe."]
    assert recs[0]["subtitle_tokens"] > 0


def test_a_binary_file_named_srt_is_a_warning_and_no_subtitles(tmp_path, caption_asked):
    video = make_clip(str(tmp_path / "v.mp4"), 20, fps=10.0)
    junk = tmp_path / "v.srt"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + random.Random(3).randbytes(4000))
    said = []
    for choice in (["--subtitles", "auto"], ["--subtitles", str(junk)]):
        code, recs, asked, err = caption_asked(video, "--frames", "2", *choice)
        assert code == 0, err
        assert asked == ["Describe."] and recs[0]["subtitle_tokens"] == 0 and recs[0]["error"] is None
        said += [line for line in err.splitlines() if str(junk) in line]
    assert len(said) == 1 and "not text" in said[0]  # once a process, however many reads


def _long_cue(words: int) -> str:
    rng = random.Random(11)
    vocabulary = ["the", "river", "bank", "under", "quiet", "lamps", "seven", "orange", "boats", "drift", "slowly"]
    return " ".join(rng.choice(vocabulary) + (str(i) if i % 7 == 0 else "") for i in range(words))


def test_one_cue_longer_than_the_budget_is_cut_to_it(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))  # the model's own tokenizer, not vqa's wrapper

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    long = _long_cue(3000)
    assert count(long) > 4 * 512
    cues = [Cue(0.0, 1.0, "Before it."), Cue(0.5, 9.0, long), Cue(2.0, 3.0, "After it.")]
    text, tokens = subtitles.render(cues, count, budget=512)
    assert tokens == count(text) == 512  # filled to the budget, not dropped
    lines = text.split("\n")
    assert lines[:2] == [subtitles.SUBTITLE_HEADER, "Before it."]  # the cues before it stay whole
    assert len(lines) == 3 and lines[2].endswith(subtitles.ELLIPSIS)  # the cut cue ends the text: "After it." is out
    assert long.startswith(lines[2][:-1]) and len(lines[2]) > 500
    alone, alone_tokens = subtitles.render(cues[1:2], count, budget=512)  # the cue alone: cut, never dropped
    assert alone_tokens == count(alone) == 512 and long.startswith(alone.split("\n")[1][:-1])


def test_a_run_with_one_over_long_cue_gives_the_budget(tmp_path, tiny_dir, caption_asked):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    video = make_clip(str(tmp_path / "v.mp4"), 20, fps=10.0)
    (tmp_path / "v.srt").write_text(f"1\n00:00:00,000 --> 00:00:02,000\n{_long_cue(3000)}\n", encoding="utf-8")
    code, recs, asked, err = caption_asked(video, "--frames", "2")
    assert code == 0, err
    given = asked[0].rsplit("\nDescribe.", 1)[0]  # the subtitle text before the prompt
    assert len(tokenizer(given, add_special_tokens=False)["input_ids"]) == subtitles.DEFAULT_SUBTITLE_TOKENS
    assert recs[0]["subtitle_tokens"] == subtitles.DEFAULT_SUBTITLE_TOKENS


# ---- --questions: UTF-8 text, else one line -----------------------------------------------------------------------


def test_questions_that_are_not_utf8_are_one_line_and_exit_2(tmp_path, tiny_dir, capsys, monkeypatch):
    import io
    import sys

    video = make_clip(str(tmp_path / "v.mp4"), 10, fps=10.0)
    latin = "Qu'est-ce que le garçon mange ?\nÀ quelle heure ?\n".encode("latin-1")
    questions = tmp_path / "questions.txt"
    questions.write_bytes(latin)
    with pytest.raises(SystemExit) as info:
        main(["ask", video, "--questions", str(questions), "--model", str(tiny_dir)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1
    assert str(questions) in err and "not UTF-8" in err and "0xe7" in err  # the file and the byte: ç in latin-1
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(latin), encoding="utf-8"))
    with pytest.raises(SystemExit) as info:
        main(["ask", video, "--questions", "-", "--model", str(tiny_dir)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "standard input" in err and "not UTF-8" in err


def test_the_encoding_is_part_of_the_settings_only_when_given():
    from vqa_cli.cli.options import run_settings
    from vqa_cli.output.records import settings_id

    def sid(**kw):
        return settings_id(run_settings(model="m", subtitles="auto", **kw).identity(), "p")

    assert sid() == settings_id(run_settings(model="m", subtitles="auto").identity(), "p")
    assert sid(subtitle_encoding="latin-1") == sid(subtitle_encoding="ISO-8859-1") != sid()  # it changes the text
    assert "subtitle_encoding" not in run_settings(model="m", subtitle_encoding="latin-1").identity()  # subtitles off


def test_a_given_file_without_a_cue_is_a_warning(tmp_path, capsys):
    notes = tmp_path / "notes.srt"
    notes.write_text("These are my notes about the video, not subtitles.\n", encoding="utf-8")
    assert subtitles.cues_for("v.mp4", str(notes)) == []
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and str(notes) in said[0] and "no SRT or WebVTT cue" in said[0]
