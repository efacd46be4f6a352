"""vqa_cli.video.audio against the samples the test wrote: tones at known times, muxed with PyAV in a lossless codec
(pcm_s16le), come back at 16 kHz mono float32 as exactly those samples / 32768 (the s16 -> float conversion is exact),
at their times on the video's clock, cut exactly at --start/--end, in bounded chunks."""

from __future__ import annotations

import numpy as np
import pytest

from vqa_cli.errors import EXIT_USAGE, NoAudioError
from vqa_cli.testing.sound import Track, mux_audio
from vqa_cli.video import audio

RATE = 16000


def tones(seconds: float, bursts: list[tuple[float, float, float]], rate: int = RATE) -> np.ndarray:
    """int16 [n]: silence with sine bursts (start s, end s, Hz) at amplitude 0.5."""
    signal = np.zeros(round(seconds * rate), np.int16)
    for begin, end, hz in bursts:
        i, j = round(begin * rate), round(end * rate)
        t = np.arange(j - i) / rate
        signal[i:j] = np.round(0.5 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return signal


def decoded(path, **kw) -> np.ndarray:
    return np.concatenate([c.samples for c in audio.chunks(str(path), **kw)])


@pytest.fixture(scope="module")
def tone_clip(tmp_path_factory):
    signal = tones(4.0, [(1.0, 1.5, 440.0), (2.25, 2.5, 1000.0)])
    path = mux_audio(tmp_path_factory.mktemp("audio") / "tones.mkv", [Track(signal.reshape(1, -1), RATE)])
    return path, signal


def test_samples_and_rate_exact(tone_clip):
    path, signal = tone_clip
    got = decoded(path)
    assert got.dtype == np.float32 and len(got) == len(signal)
    np.testing.assert_array_equal(got, signal.astype(np.float32) / 32768)


def test_window_cut_exact(tone_clip):
    path, signal = tone_clip
    got = decoded(path, start=1.25, end=2.3)
    assert len(got) == round((2.3 - 1.25) * RATE)
    np.testing.assert_array_equal(got, signal[20000:36800].astype(np.float32) / 32768)
    first = next(audio.chunks(str(path), start=1.25, end=2.3))
    assert first.start == 1.25


def test_chunks_bounded_and_timed(tone_clip):
    path, signal = tone_clip
    parts = list(audio.chunks(str(path), chunk_seconds=0.75))
    assert [len(c.samples) for c in parts] == [12000] * 5 + [len(signal) - 60000]
    assert [c.start for c in parts] == [0.0, 0.75, 1.5, 2.25, 3.0, 3.75]


def test_end_past_the_stream_stops_with_it(tone_clip):
    """A window past the stream's end: the samples up to its end, no silence made up after it."""
    path, signal = tone_clip
    got = decoded(path, start=3.5, end=500.0)
    np.testing.assert_array_equal(got, signal[56000:].astype(np.float32) / 32768)


def test_stream_starting_late_keeps_the_video_clock(tmp_path):
    """An audio stream whose first sample is at 1.5 s: zeros before it, so sample i is at i / 16000 s."""
    signal = tones(1.0, [(0.0, 0.5, 440.0)])
    path = mux_audio(tmp_path / "late.mkv", [Track(signal.reshape(1, -1), RATE, start=1.5)])
    got = decoded(path)
    assert not got[:24000].any()
    np.testing.assert_array_equal(got[24000:24000 + len(signal)], signal.astype(np.float32) / 32768)


def test_audio_stream_n(tmp_path):
    first, second = tones(1.0, [(0.0, 1.0, 440.0)]), tones(1.0, [(0.5, 1.0, 1000.0)])
    path = mux_audio(tmp_path / "two.mkv", [Track(first.reshape(1, -1), RATE), Track(second.reshape(1, -1), RATE)])
    np.testing.assert_array_equal(decoded(path), first / 32768)
    np.testing.assert_array_equal(decoded(path, stream=1), second / 32768)
    with pytest.raises(NoAudioError, match="no audio stream 2"):
        decoded(path, stream=2)


def test_resampled_48k_stereo(tmp_path):
    """48 kHz stereo -> 16 kHz mono: the length, the burst's onset (1 ms) and its frequency (the FFT's peak)."""
    left = tones(2.0, [(0.5, 1.5, 440.0)], rate=48000)
    path = mux_audio(tmp_path / "stereo.mkv", [Track(np.stack([left, left]), 48000)])
    got = decoded(path)
    assert len(got) == 2 * RATE
    onset = np.flatnonzero(np.abs(got) > 0.05)[0] / RATE
    assert abs(onset - 0.5) < 0.001
    burst = got[round(0.6 * RATE):round(1.4 * RATE)]
    peak = np.argmax(np.abs(np.fft.rfft(burst))) * RATE / len(burst)
    assert abs(peak - 440.0) <= RATE / len(burst)


def test_no_audio_is_one_usage_line(tmp_path):
    path = mux_audio(tmp_path / "silent.mp4", [], seconds=1.0)
    with pytest.raises(NoAudioError) as caught:
        decoded(path)
    assert caught.value.exit_code == EXIT_USAGE
    assert "has no audio stream" in str(caught.value) and "\n" not in str(caught.value)


def test_same_samples_as_faster_whispers_decoding(tmp_path):
    """A 48 kHz stereo AAC track: the samples faster-whisper's own ``decode_audio`` gives (the oracle: its
    implementation), to the last few samples of the resampler's tail."""
    fw_audio = pytest.importorskip("faster_whisper.audio")
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal((2, 48000 * 3)) * 3000).astype(np.int16)
    path = mux_audio(tmp_path / "aac.mp4", [Track(noise, 48000, codec="aac")])
    theirs = fw_audio.decode_audio(str(path))
    ours = decoded(path)
    assert abs(len(ours) - len(theirs)) <= 16
    n = min(len(ours), len(theirs)) - 16
    np.testing.assert_array_equal(ours[:n], theirs[:n])
