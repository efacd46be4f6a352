"""Speech to timed text: a video's audio through faster-whisper (CTranslate2), cached on disk.

``transcript(video, speech)`` is the one entry point (``vqa transcribe``, ``--subtitles asr``, the server): a list of
``Segment`` (start, end, text and, with ``SpeechSettings.words``, ``Word``s), times in the video's own seconds.

- Audio: ``video.audio.chunks`` (PyAV, 16 kHz mono float32, bounded chunks). The model gets bounded *pieces*
  (``PIECE_SECONDS``), so a two-hour file never sits in memory: a piece is cut at the quietest stretch of its
  last ``CUT_SEARCH_SECONDS`` (a pause between words: no word is cut in two, none is heard twice), the tokens so
  far (timestamps included) are the next piece's prompt, as faster-whisper conditions each 30 s window on the tokens
  before it (plain text as the prompt made Whisper leave out the timestamps: minute-long segments), and the
  language found in the first piece is kept. Segment times, relative to the piece, are shifted to the video's.
- The model: a faster-whisper name or a local CTranslate2 folder (``speech_models.resolve``); int8 on the CPU,
  float16 on CUDA; loaded once per process (``_loaded``). ``_run_model`` is the only place the model runs.
- The cache: one JSON file per transcript in vqa's cache folder (``transcripts/``), keyed by the file's identity
  (resolved path, size, modification time), the model's files, the compute type and every ``SpeechSettings``
  field, the window (``start``/``end``) and this module's ``FORMAT``. A second call, in this process or another,
  reads it and runs nothing; a changed file or model gets a new key; a damaged entry is a miss and is rewritten.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vqa_cli.errors import UsageError
from vqa_cli.fingerprint import file_stamp, json_sha256
from vqa_cli.settings import SpeechSettings

if TYPE_CHECKING:
    import numpy as np
    from faster_whisper import WhisperModel

SPEECH_EXTRA = "pip install 'vqa-cli[speech]'"
FORMAT = 2  # the cache entries' layout and this module's cutting: bump it when either changes
CACHE_FOLDER = "transcripts"  # in vqa's cache folder
PIECE_SECONDS = 900.0  # audio the model gets at once (15 min: 58 MB of float32 samples)
CUT_SEARCH_SECONDS = 60.0  # a piece ends at the quietest stretch of its last minute
QUIET_SECONDS = 0.4  # the stretch whose energy decides the cut
PROMPT_TOKENS = 223  # the tokens carried to the next piece as its prompt (faster-whisper's own cap: 448 // 2 - 1)
RESET_TEMPERATURE = 0.5  # faster-whisper's prompt_reset_on_temperature: a window decoded hotter starts a fresh prompt
COMPUTE_TYPES = {"cpu": "int8", "cuda": "float16"}  # CTranslate2's: int8 is the fast CPU path; float16 on a GPU


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()


def transcript(video: str | Path, speech: SpeechSettings, *, device: str | None = None,
               start: float | None = None, end: float | None = None,
               progress: Callable[[float], None] | None = None) -> list[Segment]:
    """The speech of ``video`` (its ``speech.audio_stream``-th audio stream) between ``start`` and ``end``, as timed
    segments; from the cache when this file, model and settings were transcribed before. ``progress`` is told the
    seconds of audio done (video time) after each piece."""
    from vqa_cli.model import speech_models
    from vqa_cli.model.features import file_identity  # the feature cache's: resolved path, size, mtime
    from vqa_cli.video._inputs import check_file

    path = check_file(str(video))
    target = speech_device(device)
    model_dir = speech_models.resolve(speech.model or speech_models.default_model(target))
    compute = COMPUTE_TYPES["cuda" if target.startswith("cuda") else "cpu"]
    inputs = {"format": FORMAT, "file": file_identity(path), "model": _model_identity(model_dir),
              "compute_type": compute, "settings": {k: v for k, v in asdict(speech).items() if k != "model"},
              "window": [start, end]}
    key = json_sha256(inputs)
    cached = _read(key, inputs)
    if cached is not None:
        return cached
    model = _loaded(model_dir, target, compute)
    segments = list(_pieces(model, path, speech, start, end, progress))
    _write(key, inputs, segments)
    return segments


def speech_device(device: str | None) -> str:
    """The device the speech model runs on: ``cuda`` when CTranslate2 sees a GPU and none was asked for, else ``cpu``
    (CTranslate2's own view, not torch's: a CPU build of torch beside a CUDA CTranslate2 still transcribes on the
    GPU, and torch is not imported for it)."""
    cuda = _cuda_devices()
    if device in (None, "", "auto"):
        return "cuda" if cuda else "cpu"
    if device.startswith("cuda") and not cuda:
        raise UsageError(f"--device {device}: no CUDA GPU is available here")
    return device


def _cuda_devices() -> int:
    try:
        import ctranslate2
    except ImportError:  # no speech extra: the CPU (the missing package is said when the model loads)
        return 0
    return ctranslate2.get_cuda_device_count()


def cache_folder() -> Path:
    from vqa_cli.model.weights.copies import cache_dir  # the one place vqa's cache folder is spelled

    return cache_dir().parent / CACHE_FOLDER


def _model_identity(model_dir: Path) -> dict:
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    return {"dir": os.path.realpath(model_dir), "files": [file_stamp(p) for p in files]}


def _faster_whisper() -> object:
    try:
        import faster_whisper
    except ImportError:
        raise UsageError(f"transcribing speech needs faster-whisper: {SPEECH_EXTRA}") from None
    return faster_whisper


_models: dict[tuple[str, str, str], WhisperModel] = {}
_models_lock = threading.Lock()
_run_lock = threading.Lock()  # one transcription at a time per process: CTranslate2 uses every core already


def _loaded(model_dir: Path, device: str, compute: str) -> WhisperModel:
    """The faster-whisper model of ``model_dir`` on ``device``, loaded once per process."""
    key = (os.path.realpath(model_dir), device, compute)
    with _models_lock:
        if key not in _models:
            fw = _faster_whisper()
            kind, _, index = device.partition(":")
            try:
                _models[key] = fw.WhisperModel(str(model_dir), device=kind, device_index=int(index or 0),  # type: ignore[attr-defined]
                                               compute_type=compute)
            except (RuntimeError, ValueError, OSError) as exc:
                from vqa_cli.errors import CheckpointError, one_line

                raise CheckpointError(f"cannot load the speech model in {model_dir}: {one_line(str(exc))}") from None
        return _models[key]


def _pieces(model: WhisperModel, path: str, speech: SpeechSettings, start: float | None, end: float | None,
            progress: Callable[[float], None] | None) -> Iterator[Segment]:
    """Every segment of the window, one bounded piece of audio at a time (see the module's docstring)."""
    import numpy as np

    from vqa_cli.video.audio import RATE, chunks

    limit = int(PIECE_SECONDS * RATE)
    held: list[np.ndarray] = []
    held_size = 0
    held_start = float(start or 0.0)
    language, prompt = speech.language, []
    for chunk in chunks(path, stream=speech.audio_stream, start=start, end=end):
        held.append(chunk.samples)
        held_size += len(chunk.samples)
        if held_size < limit + int(CUT_SEARCH_SECONDS * RATE):
            continue
        audio = np.concatenate(held)
        cut = quiet_cut(audio, limit)
        segments, language, prompt = _run_model(model, audio[:cut], speech, language, prompt)
        yield from _shifted(segments, held_start)
        held, held_size, held_start = [audio[cut:]], len(audio) - cut, held_start + cut / RATE
        del audio
        if progress:
            progress(held_start)
    if held_size:
        audio = np.concatenate(held)
        segments, language, _ = _run_model(model, audio, speech, language, prompt)
        yield from _shifted(segments, held_start)
        if progress:
            progress(held_start + len(audio) / RATE)


def quiet_cut(audio: np.ndarray, limit: int) -> int:
    """Where to end a piece: the middle of the quietest ``QUIET_SECONDS`` within the ``CUT_SEARCH_SECONDS`` before
    ``limit`` samples (the lowest mean square; the latest of equally quiet stretches)."""
    import numpy as np

    from vqa_cli.video.audio import RATE

    search = int(CUT_SEARCH_SECONDS * RATE)
    width = int(QUIET_SECONDS * RATE)
    lo = max(0, limit - search)
    region = audio[lo:limit].astype(np.float64)
    if len(region) <= width:
        return limit
    energy = np.concatenate([[0.0], np.cumsum(region * region)])
    windows = energy[width:] - energy[:-width]  # windows[i]: the energy of region[i:i + width]
    best = len(windows) - 1 - int(np.argmin(windows[::-1]))
    return lo + best + width // 2


def _run_model(model: WhisperModel, audio: np.ndarray, speech: SpeechSettings, language: str | None,
               prompt: list[int]) -> tuple[list[Segment], str | None, list[int]]:
    """The one place the model runs: one piece of audio (16 kHz mono float32), the previous tokens as its prompt ->
    its segments (times relative to the piece), the language it is in and the prompt for the next piece (the tokens
    since faster-whisper's last prompt reset, the last ``PROMPT_TOKENS``)."""
    with _run_lock:
        found, info = model.transcribe(audio, language=language, beam_size=speech.beam_size, vad_filter=speech.vad,
                                       word_timestamps=speech.words, initial_prompt=prompt or None)
        raw = list(found)
    segments = [Segment(float(s.start), float(s.end), s.text.strip(),
                        tuple(Word(float(w.start), float(w.end), w.word.strip()) for w in s.words or ()))
                for s in raw]
    carried = list(prompt)
    for s in raw:  # as faster-whisper: a window decoded above RESET_TEMPERATURE resets the prompt after it
        carried = [] if s.temperature > RESET_TEMPERATURE else carried + list(s.tokens)
    return segments, language or (info.language if segments else None), carried[-PROMPT_TOKENS:]


def _shifted(segments: list[Segment], offset: float) -> Iterator[Segment]:
    for s in segments:
        if s.text:
            yield Segment(_t(s.start + offset), _t(s.end + offset), s.text,
                          tuple(Word(_t(w.start + offset), _t(w.end + offset), w.text) for w in s.words))


def _t(seconds: float) -> float:
    return round(seconds, 3)


def _entry_path(key: str) -> Path:
    return cache_folder() / f"{key}.json"


def _read(key: str, inputs: dict) -> list[Segment] | None:
    try:
        entry = json.loads(_entry_path(key).read_text(encoding="utf-8"))
        if entry.get("inputs") != json.loads(json.dumps(inputs)):
            return None
        return [Segment(s[0], s[1], s[2], tuple(Word(*w) for w in s[3])) for s in entry["segments"]]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None  # no entry, or a damaged one: transcribed again and replaced


def _write(key: str, inputs: dict, segments: list[Segment]) -> None:
    """Write the entry atomically (``vqa_cli.atomic``); a cache that cannot be written is skipped: the transcript is
    still returned."""
    from vqa_cli.atomic import replace_atomically

    body = {"inputs": inputs,
            "segments": [[s.start, s.end, s.text, [[w.start, w.end, w.text] for w in s.words]] for s in segments]}
    try:
        cache_folder().mkdir(parents=True, exist_ok=True)
        replace_atomically(_entry_path(key), [json.dumps(body, ensure_ascii=False)])
    except OSError:
        pass
