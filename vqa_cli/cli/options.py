"""The options several commands share, each declared once, and ``run_settings``, which turns them into
the ``RunSettings`` of a run.

A command lists the options it takes as its own parameters, typed with the aliases below (a value's
choices and its default come from ``vqa_cli.settings``, which also checks them), and passes them on to
``run_settings`` by name. Nothing here imports torch: ``vqa --help`` reads these aliases.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any

import typer

from vqa_cli.errors import UsageError
from vqa_cli.settings import (
    AsrFallback,
    DecoderName,
    Dtype,
    ModeName,
    Quant,
    ReduceName,
    RopeType,
    RunSettings,
    SceneDetector,
    SeekMode,
    Stride,
    build,
    check_path,
)

_NOT_AN_OPTION: Any = object()  # run_settings' model for a command without --model

VideoArg = Annotated[str, typer.Argument(help="Video file (or an image).", show_default=False,
                                         callback=lambda value: check_path("the video", value) or value)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]

# ---- which frames ---------------------------------------------------------------------------
FramesOpt = Annotated[int | None, typer.Option("--frames", "-n", min=1, help="Frames to sample (default: the mode's).")]
FpsOpt = Annotated[float | None, typer.Option("--fps", min=0.001, help="Sample at this rate instead of --frames.",
                                              show_default=False)]
MaxFramesOpt = Annotated[int | None, typer.Option("--max-frames", min=1, show_default=False,
                                                  help="Cap for --fps (default: the mode's frames).")]
MaxPixelsOpt = Annotated[int | None, typer.Option(
    "--max-pixels", min=1024, show_default=False,
    help="Pixel budget per clip (frames x height x width) of a native-resolution family (qwen-vl: the checkpoint's "
    "25165824 by default); lower it on a CPU.")]
SeekOpt = Annotated[SeekMode, typer.Option(
    "--seek", help="exact frames, nearest keyframes (fast on long videos), or auto (keyframes when exact would decode "
    "over 1000 frames).")]
DecoderOpt = Annotated[DecoderName, typer.Option(
    "--decoder", help="Which library decodes the video: auto (OpenCV when it decodes the file, else PyAV), opencv or "
    "pyav. The frames are the same either way.")]
StartOpt = Annotated[float | None, typer.Option("--start", min=0, help="Window start, seconds.")]
EndOpt = Annotated[float | None, typer.Option("--end", min=0, help="Window end, seconds.")]

# ---- which model, mode, precision and decoding -----------------------------------------------
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", show_default=False,
                 help="Hub id, local directory or alias (default: $VQA_MODEL, else llava-next-video-7b with CUDA, "
                      "qwen3-vl-2b on the CPU)."),
]
ModeOpt = Annotated[ModeName, typer.Option("--mode", help="How frames become tokens.")]
QuantOpt = Annotated[
    Quant | None,
    typer.Option("--quant",
                 help="bitsandbytes quantization (default: 4bit with CUDA, none on CPU).", show_default=False),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cuda, cuda:1, cpu (default: cuda if available).")]
DtypeOpt = Annotated[
    Dtype | None,
    typer.Option("--dtype",
                 help="Compute dtype (default: bfloat16/float16 on GPU, float32 on CPU).", show_default=False),
]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Most tokens to generate.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="0 = greedy and deterministic (at least 0; "
                                               "checked with the other values by settings.check_values).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed for sampling (temperature > 0).")]
StrideOpt = Annotated[Stride | None, typer.Option("--stride", help="anyres: per-frame pooling stride.",
                                                  show_default=False)]
SlowFramesOpt = Annotated[int | None, typer.Option("--slow-frames", min=1, help="slowfast: slow-pathway frames.")]
FastGridOpt = Annotated[int | None, typer.Option("--fast-grid", min=1, help="slowfast: fast-pathway grid side.")]
PoolOpt = Annotated[str | None, typer.Option("--pool", help="pooled: output T,H,W (default 16,12,12 at 24x24).")]
ReduceOpt = Annotated[ReduceName | None, typer.Option(
    "--reduce", show_default=False, help="Reduce the video's tokens after the mode, before the language model, blind "
    "to the question (docs/reduction.md): none; evs (Efficient Video Sampling: the tokens that changed most since "
    "the previous frame); vidcom2 (VidCom2: more tokens for the more unique frames, their most distinct tokens).")]
KeepOpt = Annotated[float | None, typer.Option("--keep", min=0.001, max=1.0, show_default=False,
                                               help="--reduce: the ratio of the video's tokens kept (default 0.25).")]
MaxVisualTokensOpt = Annotated[int | None, typer.Option(
    "--max-visual-tokens", min=1, show_default=False,
    help="--reduce: the ratio that leaves about this many visual tokens per clip, instead of --keep.")]
RopeScaleOpt = Annotated[float | None, typer.Option("--rope-scale", min=1, help="Force a RoPE scaling factor.")]
RopeTypeOpt = Annotated[RopeType, typer.Option("--rope-type", help="RoPE scaling kind.")]
TimePromptOpt = Annotated[bool, typer.Option("--time-prompt", help="Tell the model the duration and frame times.")]

# ---- a running `vqa serve` instead of a model here -------------------------------------------------
SERVED_MODEL = "<the server's model>"  # --model's value with --server and no --model: the client asks the server
ServerOpt = Annotated[str | None, typer.Option(
    "--server", envvar="VQA_SERVER", show_default=False, callback=lambda value: check_server(value),
    help="Send the requests to this `vqa serve` (e.g. http://127.0.0.1:8000) instead of loading the model here "
         "(default: $VQA_SERVER).")]

# ---- fitting the machine: placement and the memory check (not part of a run's identity) ------------
MaxMemoryOpt = Annotated[str | None, typer.Option(
    "--max-memory", show_default=False,
    help="Memory per device, e.g. cuda:0=6GiB,cpu=24GiB (accelerate's max_memory): layers that do not fit on the GPU "
         "are offloaded to the CPU, then to disk.")]
OffloadDirOpt = Annotated[str | None, typer.Option(
    "--offload-dir", show_default=False,
    help="Let --max-memory put the weights that do not fit its caps on disk (read from the checkpoint's files, or "
         "written here, again for every generated token: slow); without it such a cap is refused.")]
FitOpt = Annotated[bool, typer.Option(
    "--fit", help="Take the most frames (and if need be a cheaper mode) that fit the memory and the context.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Load even when the memory estimate says it does not fit; "
                                      "with --out-dir, also replace files there that vqa did not write.")]

# ---- prompt-guided pooling --------------------------------------------------------------------
GuideOpt = Annotated[bool, typer.Option("--guide", help="pooled: PPLLaVA prompt-guided pooling (needs a CLIP model).")]
GuideModelOpt = Annotated[str | None, typer.Option("--guide-model", help="CLIP model for --guide "
                                                   "(default: openai/clip-vit-large-patch14-336).", show_default=False)]
GuideKernelOpt = Annotated[str | None, typer.Option("--guide-kernel", help="pooled --guide: window T,H,W "
                                                    "(default 2,3,3 at 24x24).", show_default=False)]

# ---- captions in time: segments and subtitles (vqa_cli/video/scenes.py, vqa_cli/output/subtitles.py) --------------
SegmentsOpt = Annotated[str, typer.Option(
    "--segments", help="One answer per segment: none, scenes (PySceneDetect, --scene-detector) or fixed:SECONDS.")]
SceneDetectorOpt = Annotated[SceneDetector, typer.Option(
    "--scene-detector", help="--segments scenes: PySceneDetect's content and histogram detectors together "
    "(combined: hard cuts between textured shots and flat colours alike), or one of them, or adaptive.")]
SceneThresholdOpt = Annotated[float | None, typer.Option(
    "--scene-threshold", min=0.001, show_default=False, help="--segments scenes: the detector's threshold, lower "
    "finds more cuts (default: combined and content 27, adaptive 3, histogram 0.2).")]
MinSceneOpt = Annotated[float, typer.Option(
    "--min-scene", min=0, help="--segments scenes: scenes shorter than this many seconds merge with a neighbour.")]
SubtitlesOpt = Annotated[str, typer.Option(
    "--subtitles", help="The video's subtitles as context: auto (a .srt/.vtt beside the video), asr (its speech, "
    "transcribed: faster-whisper), a file, or off. Only the cues shown at the sampled frames (or within the segment) "
    "are given.")]
AsrOpt = Annotated[AsrFallback, typer.Option(
    "--asr", help="auto: --subtitles auto transcribes a video that has no subtitle file beside it.")]
AsrModelOpt = Annotated[str | None, typer.Option(
    "--asr-model", show_default=False, help="--subtitles asr: the faster-whisper model, a name (tiny, base, small, "
    "medium, large-v3, turbo, tiny.en, ...) or a CTranslate2 folder (default: see docs/speech.md).")]
LanguageOpt = Annotated[str | None, typer.Option(
    "--language", show_default=False, help="--subtitles asr: the spoken language's code (en, de, ...; default: "
    "detected).")]
AudioStreamOpt = Annotated[int | None, typer.Option(
    "--audio-stream", min=0, show_default=False, help="--subtitles asr: which audio stream to transcribe, from 0 "
    "(default: the first).")]
SubtitleEncodingOpt = Annotated[str | None, typer.Option(
    "--subtitle-encoding", show_default=False, help="The subtitle files' encoding (e.g. latin-1, shift_jis). "
    "Default: a byte-order mark decides (UTF-8/16/32), else UTF-8, else cp1252 with a warning.")]
FormatOpt = Annotated[str, typer.Option(
    "--format", help="Caption output: jsonl, srt, vtt, txt, csv or chapters (an ffmpeg metadata file).")]
OutDirOpt = Annotated[str | None, typer.Option(
    "--out-dir", show_default=False, help="Write one --format file per video here (clip.srt), with a JSON Lines "
    "index (index.jsonl) that makes the run resumable.")]


def run_settings(*, model: str | None = _NOT_AN_OPTION, device: str | None = None, max_memory: str | None = None,
                 **options: object) -> RunSettings:
    """The ``RunSettings`` of the options a command was given, by name (``settings.build`` takes them and holds
    their defaults: an option a command lacks keeps its default, so ``vqa frames`` and ``vqa chat`` pass only
    theirs). Here only what needs the model layer: ``--max-memory`` parsed, ``--model``'s default for the device.

    Raises ``UsageError`` for a value or a combination the options cannot express on their own (a window that
    ends before it starts, both --frames and --fps, --guide outside --mode pooled, ...: the rules in settings).
    """
    from vqa_cli.model.device import parse_max_memory

    settings = build(model=None if model is _NOT_AN_OPTION else model, device=device,
                     max_memory=parse_max_memory(max_memory), **options)  # type: ignore[arg-type]
    return replace(settings, model=_model(model, device))  # the default model's notice only for a valid run


def with_max_pixels(settings: RunSettings, max_pixels: int | None) -> RunSettings:
    """``--max-pixels`` into the anyres mode's settings (a native-resolution family's pixel budget per clip)."""
    if max_pixels is None:
        return settings
    if settings.mode.name != "anyres":
        raise UsageError("--max-pixels works with --mode anyres")
    return replace(settings, mode=replace(settings.mode, max_pixels=max_pixels))


def check_server(value: str | None) -> str | None:
    """``--server``: an http(s) URL with a host (``http://127.0.0.1:8000``), checked before anything loads."""
    if not value:
        return value
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise UsageError(f"--server {value!r} is not a URL ({exc}): give one such as http://127.0.0.1:8000") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c in value for c in "\0 \t\r\n"):
        raise UsageError(f"--server {value!r} is not an http(s) URL with a host: give one such as "
                         "http://127.0.0.1:8000")
    return value


def writable_folder(flag: str) -> Callable[[str | None], str | None]:
    """A typer callback: the option's folder (made if missing) must be a folder this process can write, so a
    file, a path under a file or a read-only place fails in one line before the model loads."""

    def check(value: str | None) -> str | None:
        if not value:
            return value
        check_path(flag, value)
        import tempfile
        from pathlib import Path

        folder = Path(value).expanduser()
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{flag} {value!r} is a file, not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise UsageError(f"{flag} {value!r} is not a folder vqa can write: {exc.strerror or exc}") from None
        return value

    return check


def _model(model: str | None, device: str | None) -> str:
    """``--model``, else the default for the device the run uses (``hub.default_model``: the 7B model
    with CUDA, Qwen3-VL-2B on the CPU, which a notice names). A command without ``--model`` (``frames``)
    opens no model: it gets the CUDA default without asking torch."""
    from vqa_cli import console
    from vqa_cli.model.families.registry import DEFAULT_CPU_MODEL, DEFAULT_MODEL, SMALL_CPU_MODEL
    from vqa_cli.model.weights import hub

    if model is _NOT_AN_OPTION:
        return os.environ.get("VQA_MODEL") or DEFAULT_MODEL
    if model:
        return model
    chosen = hub.default_model(device)
    if chosen == DEFAULT_CPU_MODEL and not os.environ.get("VQA_MODEL"):
        console.info(f"running on the CPU: the default model is {chosen} (--model or $VQA_MODEL picks another; "
                     f"--model {SMALL_CPU_MODEL} for a slow or small machine)")
    return chosen
