"""Run settings: every value a run can be given, its choices and its one default, and the checks of its values.

The command line (``vqa_cli/cli/options.py``), the server (``vqa_cli/serve``) and the client
(``vqa_cli/remote``) all read the choices, the defaults and the checks here. A leaf: it imports only the
standard library and ``vqa_cli.errors``, so ``vqa --help`` (which reads the ``Literal`` choices) stays fast.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from vqa_cli.errors import InvalidValueError

# ---- the choices of each setting, and its default ----------------------------------------------
# The one list of mode names: the registry (vqa_cli/model/modes.py), the CLI's --mode choices and the records read it.
ModeName = Literal["anyres", "slowfast", "pooled"]
MODE_NAMES: tuple[str, ...] = get_args(ModeName)
DEFAULT_MODE: ModeName = "anyres"
Stride = Literal["1", "2", "4"]  # anyres per-frame pooling strides, as typed on the command line
STRIDES: tuple[int, ...] = tuple(int(s) for s in get_args(Stride))

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
SUBTITLES_AUTO = "auto"

# The settings the weights are loaded with: one engine serves requests that differ in any other setting.
LOAD_SETTINGS = ("model", "quant", "device", "dtype", "rope_scale", "rope_type", "max_memory", "offload_dir")
SEEDS = (-(2**63), 2**64 - 1)  # the seeds torch.manual_seed takes
FINITE = ("fps", "start", "end", "temperature", "rope_scale", "scene_threshold", "min_scene")  # RunSettings' floats


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
