"""A video's sound: one audio stream decoded with PyAV, as 16 kHz mono float32, in bounded chunks.

``chunks`` decodes the first audio stream (or the ``stream``-th, 0-based, among the file's audio streams) and
resamples it with FFmpeg's resampler (through PyAV) to ``RATE`` Hz mono 16-bit samples, as float32 in [-1, 1]: the
input Whisper takes, sample for sample what faster-whisper's own decoding gives. The samples form one continuous
signal on the video's own clock: sample ``i`` of the whole signal is at ``origin + i / RATE`` seconds, where
``origin`` is ``start`` (else 0); silence (zeros) stands where the stream has no samples (before its first frame, in
a gap between frames), so a time in a transcript is a time in the video.
``end`` cuts the signal there; the stream's last sample ends it sooner (a window past the end is no error, and no
silence is made up after the stream). Chunks hold at most ``chunk_seconds`` of audio each, so a two-hour file never
sits in memory: the caller keeps what it needs.

A file without an audio stream (or without the one asked for) is ``NoAudioError``: one line, exit 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vqa_cli.errors import NoAudioError, VqaError
from vqa_cli.video._inputs import VideoError, check_file, quote, undecodable

if TYPE_CHECKING:
    import numpy as np

RATE = 16000  # Hz: Whisper's input rate
CHUNK_SECONDS = 30.0  # audio per chunk: Whisper's window
GAP_SAMPLES = 2  # a frame this many samples (at RATE) beyond its time base's rounding late: zeros fill the gap


@dataclass(frozen=True)
class Chunk:
    """``samples`` (float32, mono, ``RATE`` Hz) starting at ``start`` seconds of the video's clock."""

    start: float
    samples: np.ndarray


def chunks(path: str, *, stream: int | None = None, start: float | None = None, end: float | None = None,
           chunk_seconds: float = CHUNK_SECONDS) -> Iterator[Chunk]:
    """The audio of ``path`` from ``start`` (else 0) to ``end`` (else the stream's end), in chunks."""
    import av

    fs_path = check_file(path)
    try:
        container = av.open(fs_path)
    except (av.FFmpegError, OSError, ValueError):
        raise undecodable(path) from None
    with container:
        source = _stream(container, path, stream)
        out = _Signal(float(start or 0.0), end, max(1, int(chunk_seconds * RATE)))
        if out.origin > 0:
            container.seek(max(0, int(out.origin / source.time_base)), stream=source, backward=True)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        expected: float | None = None  # where the next frame starts if the stream is continuous (samples)
        slack = GAP_SAMPLES + float(source.time_base or 0) * RATE  # timestamps are rounded to the time base (MKV: ms)
        try:
            for frame in container.decode(source):
                at = out.position_of(frame.time) if frame.time is not None else expected
                if at is None:
                    at = 0.0
                if expected is None:
                    yield from out.begin(round(at))
                elif at > expected + slack:  # a gap: what the resampler holds goes first, then zeros
                    for piece in resampler.resample(None):
                        yield from out.place(_floats(piece), until=round(expected))
                    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
                    yield from out.silence_to(round(at))
                else:
                    at = expected  # continuous: the frame's rounded time does not move the signal
                expected = at + frame.samples * RATE / frame.sample_rate
                for piece in resampler.resample(frame):
                    yield from out.place(_floats(piece))
                if out.done:
                    break
            else:  # the resampler's tail, up to where the stream's last frame ends (not its filter's ringing)
                for piece in resampler.resample(None):
                    yield from out.place(_floats(piece), until=round(expected or 0))
        except av.FFmpegError as exc:
            raise VideoError(f"cannot decode the audio of {quote(path)}: {exc}") from None
        yield from out.flush()


def _floats(frame: object) -> np.ndarray:
    """A resampled frame's 16-bit samples as float32 in [-1, 1): as faster-whisper's own ``decode_audio`` makes
    them (FFmpeg's resampler to s16, then / 32768), so both give Whisper the same samples."""
    import numpy as np

    return frame.to_ndarray()[0].astype(np.float32) / 32768.0  # type: ignore[attr-defined]


def _stream(container: object, path: str, index: int | None) -> object:
    """The ``index``-th audio stream (0-based; None: the first), or ``NoAudioError``."""
    audio = list(container.streams.audio)  # type: ignore[attr-defined]
    if not audio:
        raise NoAudioError(f"{quote(path)} has no audio stream: there is no speech to transcribe")
    which = index or 0
    if which < 0 or which >= len(audio):
        raise NoAudioError(f"{quote(path)} has no audio stream {which} (--audio-stream): it has {len(audio)}, "
                           f"numbered 0 to {len(audio) - 1}")
    chosen = audio[which]
    if chosen.codec_context is None:
        raise VideoError(f"cannot decode audio stream {which} of {quote(path)}: no decoder for its codec")
    chosen.codec_context.thread_type = "AUTO"
    return chosen


class _Signal:
    """The continuous signal from ``origin``: places samples at their positions, cuts the window, fills chunks."""

    def __init__(self, origin: float, end: float | None, chunk: int) -> None:
        self.origin = origin
        self.stop = None if end is None else max(0, round((end - origin) * RATE))  # samples in the window
        self.chunk = chunk
        self.written = 0  # position (samples from origin; negative before it) of the next sample placed
        self.pending: list[np.ndarray] = []
        self.pending_size = 0
        self.emitted = 0  # samples yielded in chunks so far

    @property
    def done(self) -> bool:
        return self.stop is not None and self.written >= self.stop

    def position_of(self, seconds: float) -> float:
        return (seconds - self.origin) * RATE

    def begin(self, position: int) -> Iterator[Chunk]:
        """The first frame starts at ``position``: before the window (a seek lands early) or after it (zeros)."""
        self.written = min(position, 0)
        yield from self.silence_to(position)

    def silence_to(self, position: int) -> Iterator[Chunk]:
        import numpy as np

        if position > self.written:
            yield from self.place(np.zeros(position - self.written, dtype=np.float32))

    def place(self, samples: np.ndarray, until: int | None = None) -> Iterator[Chunk]:
        if until is not None:
            samples = samples[:max(0, until - self.written)]
        begin = self.written
        self.written += len(samples)
        lo = max(0, -begin)  # samples before the window's start are dropped
        hi = len(samples) if self.stop is None else min(len(samples), self.stop - begin)
        if hi > lo:
            self.pending.append(samples[lo:hi])
            self.pending_size += hi - lo
        while self.pending_size >= self.chunk:
            yield self._take(self.chunk)

    def _take(self, size: int) -> Chunk:
        import numpy as np

        joined = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        head, rest = joined[:size], joined[size:]
        self.pending, self.pending_size = ([rest] if len(rest) else []), len(rest)
        chunk = Chunk(self.origin + self.emitted / RATE, np.ascontiguousarray(head, dtype=np.float32))
        self.emitted += size
        return chunk

    def flush(self) -> Iterator[Chunk]:
        if self.pending_size:
            yield self._take(self.pending_size)


def duration_hint(path: str, stream: int | None = None) -> float | None:
    """The audio stream's duration from the container's header (seconds), None when it does not say: for ETAs."""
    import av

    try:
        with av.open(check_file(path)) as container:
            source = _stream(container, path, stream)
            if source.duration is not None and source.time_base is not None:  # type: ignore[attr-defined]
                return float(source.duration * source.time_base)  # type: ignore[attr-defined]
            return container.duration / 1e6 if container.duration else None
    except (av.FFmpegError, OSError, VqaError):  # the transcription itself says what is wrong
        return None
