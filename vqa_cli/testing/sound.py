"""Videos with sound for the tests and the benchmarks: ``mux_audio`` writes audio tracks (int16 samples, at
known times) beside an optional video stream with PyAV; ``speech_samples`` reads the committed speech fixture
(tests/data/speech.opus, made by scripts/make-speech-fixture) and its text.

Shared by tests/ and benchmarks/, which import the project, never tests/.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"
SPEECH_AUDIO = DATA / "speech.opus"
SPEECH_TEXT = DATA / "speech.txt"
FRAME_SAMPLES = 1024  # samples per audio frame written


@dataclass(frozen=True)
class Track:
    """``samples`` int16 ``[channels, n]`` at ``rate`` Hz, its first sample at ``start`` seconds."""

    samples: np.ndarray
    rate: int
    start: float = 0.0
    codec: str = "pcm_s16le"
    bit_rate: int | None = None


def mux_audio(path: str | Path, tracks: list[Track], *, video: bool = True, fps: int = 5,
              seconds: float | None = None) -> Path:
    """Write ``tracks`` (in order: audio stream 0, 1, ...) and, with ``video``, a small black video stream of
    ``seconds`` (default: the longest track's end) into ``path`` (the container from its extension)."""
    import av
    import numpy as np

    path = Path(path)
    ends = [t.start + t.samples.shape[-1] / t.rate for t in tracks]
    length = seconds if seconds is not None else max(ends, default=1.0)
    with av.open(str(path), "w") as out:
        vstream = None
        if video:
            vstream = out.add_stream("mpeg4", rate=fps)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        streams = []
        for t in tracks:
            layout = "mono" if t.samples.shape[0] == 1 else "stereo"
            stream = out.add_stream(t.codec, rate=t.rate, layout=layout)
            if t.bit_rate:
                stream.bit_rate = t.bit_rate
            streams.append(stream)
        if vstream is not None:
            black = np.zeros((48, 64, 3), np.uint8)
            for i in range(max(1, int(length * fps))):
                frame = av.VideoFrame.from_ndarray(black, format="rgb24")
                frame.pts = i
                for packet in vstream.encode(frame):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
        for t, stream in zip(tracks, streams, strict=True):
            first = round(t.start * t.rate)
            layout = "mono" if t.samples.shape[0] == 1 else "stereo"
            data = np.ascontiguousarray(t.samples.astype(np.int16).T.reshape(1, -1)) if layout == "stereo" \
                else t.samples.astype(np.int16)
            step = FRAME_SAMPLES
            for i in range(0, t.samples.shape[-1], step):
                piece = data[:, i * t.samples.shape[0]:(i + step) * t.samples.shape[0]]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="s16", layout=layout)
                frame.sample_rate, frame.pts, frame.time_base = t.rate, first + i, Fraction(1, t.rate)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
    return path


def speech_samples(rate: int = 16000) -> np.ndarray:
    """The speech fixture decoded and resampled by PyAV to ``rate`` Hz mono int16 ``[1, n]``."""
    import av
    import numpy as np

    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    pieces = []
    with av.open(str(SPEECH_AUDIO)) as source:
        for frame in source.decode(audio=0):
            pieces += [p.to_ndarray()[0] for p in resampler.resample(frame)]
    pieces += [p.to_ndarray()[0] for p in resampler.resample(None)]
    return np.concatenate(pieces).reshape(1, -1)


def speech_text() -> str:
    return SPEECH_TEXT.read_text(encoding="utf-8").strip()
