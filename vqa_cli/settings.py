"""Run settings: each value's choices and one default, the checks of values and combinations (one function per
rule), for the command line (``cli.options.run_settings`` maps options onto ``build``) and the server and client
(``vqa_cli.wire``: the same settings as request fields). A leaf (the standard library and ``vqa_cli.errors``
only), so ``vqa --help``, which reads the ``Literal`` choices, stays fast."""

from __future__ import annotations

import codecs
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from vqa_cli.errors import InvalidValueError, UsageError

# ---- the choices of each setting, and its default ----------------------------------------------
# The one list of mode names: the registry (vqa_cli/model/modes.py), the CLI's --mode choices and the records read it.
ModeName = Literal["anyres", "slowfast", "pooled"]
MODE_NAMES: tuple[str, ...] = get_args(ModeName)
DEFAULT_MODE: ModeName = "anyres"
Stride = Literal["1", "2", "4"]  # anyres per-frame pooling strides, as typed on the command line
STRIDES: tuple[int, ...] = tuple(int(s) for s in get_args(Stride))
ReduceName = Literal["none", "evs", "vidcom2"]  # video token reduction after the mode (model/reduce.py, reduction.py)
REDUCE_METHODS: tuple[str, ...] = get_args(ReduceName)
DEFAULT_KEEP = 0.25  # --reduce without --keep or --max-visual-tokens keeps a quarter of the video's tokens

SeekMode = Literal["exact", "keyframe", "auto"]  # see vqa_cli/video (sample_frames)
SEEK_MODES: tuple[str, ...] = get_args(SeekMode)
DEFAULT_SEEK: SeekMode = "auto"
# Which library decodes a file: auto (OpenCV when it decodes the file's first frame, else PyAV), or one forced.
# Both give the frames of a full sequential decode, so the choice never changes a run's settings id.
DecoderName = Literal["auto", "opencv", "pyav"]
DECODERS: tuple[str, ...] = get_args(DecoderName)
DEFAULT_DECODER: DecoderName = "auto"

Quant = Literal["4bit", "8bit", "none"]  # bitsandbytes 4-bit NF4, 8-bit, or full precision
QUANTS: tuple[str, ...] = get_args(Quant)
Dtype = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES: tuple[str, ...] = get_args(Dtype)
RopeType = Literal["linear", "dynamic"]
ROPE_TYPES: tuple[str, ...] = get_args(RopeType)
DEFAULT_ROPE_TYPE: RopeType = "linear"

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_TEMPERATURE = 0.0  # greedy
DEFAULT_GUIDE_MODEL = "openai/clip-vit-large-patch14-336"  # the CLIP model of LLaVA-NeXT-Video's vision tower

# Captions in time (vqa_cli/video/scenes.py, vqa_cli/output/subtitles.py).
DEFAULT_SEGMENTS = "none"  # --segments: none | scenes | fixed:SECONDS
SceneDetector = Literal["combined", "content", "adaptive", "histogram"]
SCENE_DETECTORS: tuple[str, ...] = get_args(SceneDetector)
DEFAULT_SCENE_DETECTOR: SceneDetector = "combined"
# Each detector's own default threshold (PySceneDetect's): ContentDetector's mean HSV change, AdaptiveDetector's
# ratio to its neighbourhood, HistogramDetector's 1 - correlation. ``combined``'s is the content threshold; its
# histogram threshold is scaled with it (``video.scenes.combined_thresholds``), so lower still finds more cuts.
DEFAULT_THRESHOLDS: dict[str, float] = {"combined": 27.0, "content": 27.0, "adaptive": 3.0, "histogram": 0.2}
DEFAULT_SCENE_THRESHOLD = DEFAULT_THRESHOLDS[DEFAULT_SCENE_DETECTOR]
DEFAULT_MIN_SCENE = 0.0  # seconds; 0 keeps every scene PySceneDetect reports
SUBTITLES_OFF = "off"  # RunSettings' default; the commands' --subtitles default is SUBTITLES_AUTO
SUBTITLES_AUTO = "auto"  # a .srt/.vtt beside the video
SUBTITLES_ASR = "asr"  # the video's speech, transcribed (vqa_cli/video/audio.py, vqa_cli/model/speech.py)
AsrFallback = Literal["off", "auto"]  # --asr auto: transcribe when --subtitles auto finds no sidecar file
ASR_FALLBACKS: tuple[str, ...] = get_args(AsrFallback)
DEFAULT_ASR: AsrFallback = "off"
DEFAULT_BEAM_SIZE = 5  # faster-whisper's and Whisper's own


@dataclass(frozen=True)
class SpeechSettings:
    """Everything that changes a transcript (faster-whisper): the transcript cache's key with the file and model."""

    model: str | None = None  # --asr-model NAME|DIR; None: the default for the device (vqa_cli/model/speech.py)
    language: str | None = None  # --language: an ISO 639-1 code; None: detected
    audio_stream: int | None = None  # --audio-stream N: the Nth audio stream (0-based); None: the first
    vad: bool = True  # faster-whisper's Silero VAD filter: skips silence
    beam_size: int = DEFAULT_BEAM_SIZE
    words: bool = False  # word timestamps too (Segment.words): a second alignment pass; vqa transcribe --words

# The settings the weights are loaded with: one engine serves requests that differ in any other setting.
LOAD_SETTINGS = ("model", "quant", "device", "dtype", "rope_scale", "rope_type", "max_memory", "offload_dir")
SEEDS = (-(2**63), 2**64 - 1)  # the seeds torch.manual_seed takes
FINITE = ("fps", "start", "end", "temperature", "rope_scale", "scene_threshold", "min_scene")  # RunSettings' floats

# The commands' own options: each default once, for the command line and the job or server it runs.
DEFAULT_WORKERS = 2  # decode threads: caption, eval, serve
DEFAULT_BATCH = 4  # caption: videos per generate call; serve: most requests in one
DEFAULT_CAPTION_FORMAT = "jsonl"
SERVE_HOST, SERVE_PORT, SERVE_MAX_UPLOAD_MB = "127.0.0.1", 8000, 256.0  # this machine only; data: and http(s) videos
SERVE_FEATURE_CACHE_GIB = SERVE_KV_CACHE_GIB = 2.0  # memory for visual tokens, and for conversations' KV caches


@dataclass(frozen=True)
class ModeSettings:
    """A mode and its parameters. ``None`` means: derive from the family's grid (vqa_cli/model/modes.py)."""

    name: ModeName = DEFAULT_MODE
    stride: int | None = None  # anyres: per-frame pooling stride override
    slow_frames: int | None = None  # slowfast
    fast_grid: int | None = None  # slowfast
    pool: tuple[int, int, int] | None = None  # pooled: (T, H, W)
    guide: bool = False  # pooled: PPLLaVA prompt-guided pooling instead of plain averaging
    guide_kernel: tuple[int, int, int] | None = None  # pooled + guide: 3-D window (= stride)
    max_pixels: int | None = None  # anyres of a native-resolution family (qwen-vl): pixel budget per clip
    reduce: ReduceName | None = None  # --reduce: the visual tokens reduced after the mode; None: not ("none")
    keep: float | None = None  # --keep: the ratio of the video's tokens a reduction keeps, in (0, 1]
    max_visual_tokens: int | None = None  # --max-visual-tokens: the ratio that leaves about this many (per clip)

    def to_dict(self) -> dict:
        """The parameters that are set (unset ones and ``guide=False`` left out)."""
        return {k: v for k, v in self.__dict__.items() if v is not None and v is not False}


@dataclass(frozen=True)
class RunSettings:
    """Everything that changes an answer. Caption resume compares these."""

    model: str
    mode: ModeSettings = field(default_factory=ModeSettings)
    frames: int | None = None  # None: the mode's default
    fps: float | None = None  # sample at this rate instead, capped by max_frames
    max_frames: int | None = None  # with fps; None: the mode's default frame count
    seek: SeekMode = DEFAULT_SEEK  # exact | keyframe | auto (see video.sample_frames)
    decoder: DecoderName = DEFAULT_DECODER  # --decoder: the same frames either way, so not in identity()
    start: float | None = None
    end: float | None = None
    quant: Quant | None = None  # None: 4bit on CUDA, none on CPU
    device: str | None = None
    dtype: Dtype | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    seed: int | None = None
    rope_scale: float | None = None  # None: automatic
    rope_type: RopeType = DEFAULT_ROPE_TYPE
    time_prompt: bool = False
    guide_model: str = DEFAULT_GUIDE_MODEL  # CLIP model for --guide (prompt-guided pooling)
    # Captions in time (vqa_cli/video/scenes.py, vqa_cli/output/subtitles.py): left out of identity() when unused.
    segments: str = DEFAULT_SEGMENTS  # --segments: none | scenes | fixed:SECONDS
    scene_detector: SceneDetector = DEFAULT_SCENE_DETECTOR  # --scene-detector
    scene_threshold: float = DEFAULT_SCENE_THRESHOLD  # --scene-threshold: the detector's own (DEFAULT_THRESHOLDS)
    min_scene: float = DEFAULT_MIN_SCENE  # --min-scene: seconds; shorter scenes merge with a neighbour
    subtitles: str = SUBTITLES_OFF  # --subtitles: auto | FILE | off (the commands' default is auto)
    subtitle_encoding: str | None = None  # --subtitle-encoding (codec name); None: BOM, UTF-8, else cp1252
    asr: AsrFallback = DEFAULT_ASR  # --asr: auto = --subtitles auto transcribes a video without a sidecar
    speech: SpeechSettings = field(default_factory=SpeechSettings)  # how (--asr-model, --language, ...)
    # Placement and the memory check (see vqa_cli/model/fit.py): where the weights go, not what they answer.
    max_memory: tuple[tuple[str, int], ...] = ()  # --max-memory: (device, bytes) pairs, e.g. ("cuda:0", 6 GiB)
    offload_dir: str | None = None  # --offload-dir: weights past --max-memory may go to disk (read from there)
    force: bool = False  # --force: load without the memory check
    fit: bool = False  # --fit: lower the frames (and mode) to what fits; the chosen ones replace them

    def __post_init__(self) -> None:
        check_values(self)

    def identity(self) -> dict:
        """The settings that decide the output: everything but the device placement and the memory check,
        with unused knobs left out (the seed when decoding greedily, the guide model without --guide)."""
        d = asdict(self)
        d["mode"] = self.mode.to_dict()
        for placement in ("device", "max_memory", "offload_dir", "force", "fit"):
            d.pop(placement)
        d.pop("decoder")  # which library decodes: the frames are those of a full sequential decode either way
        if self.temperature <= 0:
            d.pop("seed")
        if not self.mode.guide:
            d.pop("guide_model")
        if self.segments == DEFAULT_SEGMENTS:
            d.pop("segments")
        if self.segments != "scenes":
            d.pop("scene_detector")
            d.pop("scene_threshold")
            d.pop("min_scene")
        if self.subtitles == SUBTITLES_OFF:
            d.pop("subtitles")
        if self.subtitles == SUBTITLES_OFF or self.subtitle_encoding is None:  # the default keeps the ids it had
            d.pop("subtitle_encoding")
        if self.asr == DEFAULT_ASR or self.subtitles != SUBTITLES_AUTO:
            d.pop("asr")
        if not (self.subtitles == SUBTITLES_ASR or self.subtitles == SUBTITLES_AUTO and self.asr != DEFAULT_ASR):
            d.pop("speech")  # no transcript can be read
        return d


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"an integer of {len(text)} digits" if isinstance(value, int) else text[:40]


def check_values(settings: RunSettings) -> None:
    """The values no option's range catches, for the command line and the server alike (``RunSettings`` runs
    it whenever settings are made): every number finite, the temperature at least 0, the seed in torch's range.
    An ``InvalidValueError`` names the setting."""
    for name in FINITE:
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            raise InvalidValueError(f"{name} must be a finite number, not {_shown(value)}", name)
    if settings.temperature < 0:
        raise InvalidValueError(f"temperature must be at least 0 (0: greedy), not {settings.temperature!r}",
                                "temperature")
    seed = settings.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not SEEDS[0] <= seed <= SEEDS[1]):
        raise InvalidValueError(f"seed must be an integer from -2**63 to 2**64 - 1 (torch's seeds), not {_shown(seed)}",
                                "seed")


# ---- the values of the captions-in-time settings -------------------------------------------------------
def parse_segments(text: str | None) -> tuple[str, float]:
    """``--segments``: ``none``, ``scenes`` or ``fixed:SECONDS`` (SECONDS > 0) as (kind, seconds); anything else is
    a ``UsageError``. ``video.scenes.parse_spec`` reads it so."""
    value = (text or DEFAULT_SEGMENTS).strip().lower()
    if value in ("none", "scenes"):
        return value, 0.0
    if value.startswith("fixed:"):
        try:
            seconds = float(value.removeprefix("fixed:"))
        except ValueError:
            seconds = 0.0
        if seconds > 0 and seconds != float("inf"):
            return "fixed", seconds
    raise UsageError(f"--segments takes none, scenes or fixed:SECONDS (SECONDS > 0), not {text!r}")


def canonical_segments(text: str | None) -> str:
    """``--segments`` as settings ids spell it: ``fixed:5`` for ``fixed:5.0``."""
    kind, seconds = parse_segments(text)
    return f"fixed:{seconds:g}" if kind == "fixed" else kind


def threshold_for(detector: str, threshold: float | None) -> float:
    """``--scene-threshold`` for ``detector``: the value given, else the detector's own default."""
    if detector not in DEFAULT_THRESHOLDS:
        raise UsageError(f"--scene-detector takes one of {', '.join(SCENE_DETECTORS)}, not {detector!r}")
    if detector == "histogram" and threshold is not None and threshold > 1:
        raise UsageError("--scene-detector histogram takes a --scene-threshold up to 1 (1 - the histograms' "
                         f"correlation), not {threshold:g}")
    return float(DEFAULT_THRESHOLDS[detector] if threshold is None else threshold)


def check_subtitles(value: str | None) -> str:
    """``--subtitles``: ``auto``, ``asr`` (the video's speech), ``off`` or an existing file."""
    choice = value or SUBTITLES_AUTO
    if choice not in (SUBTITLES_AUTO, SUBTITLES_ASR, SUBTITLES_OFF) and not Path(choice).is_file():
        raise UsageError(f"--subtitles takes auto, asr, off or a subtitle file; no such file: {choice!r}")
    return choice


def check_speech(subtitles: str, asr: str, speech: SpeechSettings) -> SpeechSettings:
    """``--asr auto`` only with ``--subtitles auto``; the speech options only where a transcript can be read
    (``--subtitles asr``, or ``auto`` with ``--asr auto``); ``--language`` a language code (``en``, ``yue``)."""
    if asr not in ASR_FALLBACKS:
        raise UsageError(f"--asr takes {' or '.join(ASR_FALLBACKS)}, not {asr!r}")
    if asr != DEFAULT_ASR and subtitles != SUBTITLES_AUTO:
        raise UsageError(f"--asr {asr} is what --subtitles auto does without a subtitle file (transcribe): it does "
                         f"not go with --subtitles {subtitles}")
    given = [flag for flag, value in (("--asr-model", speech.model), ("--language", speech.language),
                                      ("--audio-stream", speech.audio_stream)) if value is not None]
    if given and not (subtitles == SUBTITLES_ASR or subtitles == SUBTITLES_AUTO and asr != DEFAULT_ASR):
        raise UsageError(f"{given[0]} is for the transcript: give --subtitles asr (or --asr auto)")
    if speech.language is not None and not (speech.language.isascii() and speech.language.isalpha()
                                            and 2 <= len(speech.language) <= 3):
        raise UsageError(f"--language takes a language code such as en, de or yue, not {speech.language!r}")
    if speech.audio_stream is not None and speech.audio_stream < 0:
        raise UsageError(f"--audio-stream counts the audio streams from 0, not {speech.audio_stream}")
    return replace(speech, language=speech.language.lower()) if speech.language else speech


def check_encoding(value: str | None) -> str | None:
    """``--subtitle-encoding``: a text encoding Python knows, by its canonical name (``latin-1`` -> ``iso8859-1``,
    so two spellings make one settings id); None (not given) stays None."""
    if not value:
        return None
    try:
        name = codecs.lookup(value).name
        b"x".decode(name, errors="ignore")  # a bytes-to-bytes codec (base64, zlib) is no text encoding: LookupError
    except LookupError:
        raise UsageError(f"--subtitle-encoding {value!r} is not a text encoding Python knows "
                         "(e.g. utf-8, cp1252, latin-1, utf-16, shift_jis)") from None
    return name


# ---- the combinations no single option's range catches: one function per rule ----------------------------
def check_path(flag: str, path: object) -> None:
    """A path the operating system cannot take (a NUL byte in it) is the user's mistake, said in one line."""
    if isinstance(path, str) and "\0" in path:
        raise UsageError(f"{flag} {path!r} has a NUL byte: no file can be named so")


def check_window(start: float | None, end: float | None) -> None:
    if start is not None and end is not None and end <= start:
        raise UsageError("--end must be after --start")


def check_rate(frames: int | None, fps: float | None, max_frames: int | None) -> None:
    if fps and frames:
        raise UsageError("--frames and --fps are two ways to choose frames: pick one (--max-frames caps --fps)")
    if max_frames and not fps:
        raise UsageError("--max-frames caps --fps; with --frames give the count itself")


def check_fit_force(fit: bool, force: bool) -> None:
    if fit and force:
        raise UsageError("--fit makes the request fit and --force skips the memory check: pick one")


def offload_folder(path: str | None, max_memory: tuple[tuple[str, int], ...]) -> str | None:
    """``--offload-dir``: only with ``--max-memory``, and not a file; made absolute."""
    if not path:
        return None
    if not max_memory:
        raise UsageError("--offload-dir lets --max-memory put weights on disk: give --max-memory too")
    folder = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"--offload-dir {path!r} is not a folder")
    return folder


def parse_triple(flag: str, text: str | None) -> tuple[int, int, int] | None:
    """``--pool`` and ``--guide-kernel``: ``T,H,W``, three positive integers."""
    if not text:
        return None
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise UsageError(f"{flag} takes three positive integers T,H,W, not {text!r}")
    return values  # type: ignore[return-value]


def check_reduce_given(reduce: str | None, keep: float | None, max_visual_tokens: int | None) -> None:
    if (keep is not None or max_visual_tokens is not None) and reduce in (None, "none"):
        raise UsageError(f"{'--keep' if keep is not None else '--max-visual-tokens'} sets a reduction: give --reduce")


def check_keep_or_budget(keep: float | None, max_visual_tokens: int | None) -> None:
    if keep is not None and max_visual_tokens is not None:
        raise UsageError("--keep and --max-visual-tokens are two ways to choose the ratio: pick one")


def mode_settings(mode: ModeName, stride: Stride | int | None, slow_frames: int | None, fast_grid: int | None,
                  pool: str | None, guide: bool, guide_kernel: str | None, *, reduce: str | None = None,
                  keep: float | None = None, max_visual_tokens: int | None = None) -> ModeSettings:
    """The ``ModeSettings`` of the mode options: ``--guide`` only with ``--mode pooled`` and not with ``--pool``."""
    if (guide or guide_kernel) and mode != "pooled":
        raise UsageError("--guide works with --mode pooled")
    if guide and pool:
        raise UsageError("--pool and --guide are two different poolings: pick one (--guide-kernel sets the window)")
    check_reduce_given(reduce, keep, max_visual_tokens)
    check_keep_or_budget(keep, max_visual_tokens)
    on = reduce not in (None, "none")
    ratio = float(keep) if keep is not None else DEFAULT_KEEP if on and not max_visual_tokens else None
    return ModeSettings(mode, stride=int(stride) if stride else None, slow_frames=slow_frames, fast_grid=fast_grid,
                        pool=parse_triple("--pool", pool), guide=guide,
                        guide_kernel=parse_triple("--guide-kernel", guide_kernel), reduce=reduce if on else None,
                        keep=ratio, max_visual_tokens=max_visual_tokens)


def build(*, model: str | None = None, mode: ModeName = DEFAULT_MODE, stride: Stride | None = None,
          slow_frames: int | None = None, fast_grid: int | None = None, pool: str | None = None, guide: bool = False,
          guide_kernel: str | None = None, reduce: str | None = None, keep: float | None = None,
          max_visual_tokens: int | None = None, frames: int | None = None, fps: float | None = None,
          max_frames: int | None = None, seek: SeekMode = DEFAULT_SEEK, decoder: DecoderName = DEFAULT_DECODER,
          start: float | None = None, end: float | None = None, quant: Quant | None = None, device: str | None = None,
          dtype: Dtype | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
          temperature: float = DEFAULT_TEMPERATURE, seed: int | None = None, rope_scale: float | None = None,
          rope_type: RopeType = DEFAULT_ROPE_TYPE, time_prompt: bool = False, guide_model: str | None = None,
          max_memory: tuple[tuple[str, int], ...] = (), offload_dir: str | None = None, fit: bool = False,
          force: bool = False, segments: str = DEFAULT_SEGMENTS,
          scene_detector: SceneDetector = DEFAULT_SCENE_DETECTOR, scene_threshold: float | None = None,
          min_scene: float = DEFAULT_MIN_SCENE, subtitles: str = SUBTITLES_OFF,
          subtitle_encoding: str | None = None, asr: AsrFallback = DEFAULT_ASR, asr_model: str | None = None,
          language: str | None = None, audio_stream: int | None = None) -> RunSettings:
    """The ``RunSettings`` of a run's options as the command line names them (``pool`` as ``T,H,W``, ``stride`` as
    typed, ``max_memory`` parsed), every rule above checked; a value ``check_values`` refuses is a ``UsageError``
    naming the option (``--seed``). ``model``: None leaves it empty (the command line picks the default)."""
    check_window(start, end)
    check_rate(frames, fps, max_frames)
    check_fit_force(fit, force)
    modes = mode_settings(mode, stride, slow_frames, fast_grid, pool, guide, guide_kernel, reduce=reduce, keep=keep,
                          max_visual_tokens=max_visual_tokens)
    for flag, path in (("--model", model), ("--offload-dir", offload_dir), ("--guide-model", guide_model),
                       ("--subtitles", subtitles), ("--asr-model", asr_model)):
        check_path(flag, path)
    speech = check_speech(check_subtitles(subtitles), asr, SpeechSettings(asr_model or None, language or None,
                                                                         audio_stream))
    try:  # RunSettings checks its values (check_values): finite numbers, the seed's range
        return RunSettings(model=model or "", mode=modes, frames=frames, fps=fps, max_frames=max_frames, seek=seek,
                           decoder=decoder, start=start, end=end, quant=quant, device=device, dtype=dtype,
                           max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, rope_scale=rope_scale,
                           rope_type=rope_type, time_prompt=time_prompt,
                           guide_model=guide_model or DEFAULT_GUIDE_MODEL, max_memory=max_memory,
                           offload_dir=offload_folder(offload_dir, max_memory), fit=fit, force=force,
                           segments=canonical_segments(segments), scene_detector=scene_detector,
                           scene_threshold=threshold_for(scene_detector, scene_threshold),
                           min_scene=float(min_scene), subtitles=check_subtitles(subtitles),
                           subtitle_encoding=check_encoding(subtitle_encoding), asr=asr, speech=speech)
    except InvalidValueError as exc:
        raise exc.for_flag() from None
