"""``vqa ask``: answer questions about one video."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vqa_cli.cli.options import (
    SERVED_MODEL,
    AsrModelOpt,
    AsrOpt,
    AudioStreamOpt,
    DecoderOpt,
    DeviceOpt,
    DtypeOpt,
    EndOpt,
    FastGridOpt,
    FitOpt,
    ForceOpt,
    FpsOpt,
    FramesOpt,
    GuideKernelOpt,
    GuideModelOpt,
    GuideOpt,
    JsonOpt,
    KeepOpt,
    LanguageOpt,
    MaxFramesOpt,
    MaxMemoryOpt,
    MaxNewTokensOpt,
    MaxPixelsOpt,
    MaxVisualTokensOpt,
    MinSceneOpt,
    ModelOpt,
    ModeOpt,
    OffloadDirOpt,
    PoolOpt,
    QuantOpt,
    ReduceOpt,
    RopeScaleOpt,
    RopeTypeOpt,
    SceneDetectorOpt,
    SceneThresholdOpt,
    SeedOpt,
    SeekOpt,
    SegmentsOpt,
    ServerOpt,
    SlowFramesOpt,
    StartOpt,
    StrideOpt,
    SubtitleEncodingOpt,
    SubtitlesOpt,
    TemperatureOpt,
    TimePromptOpt,
    VideoArg,
    run_settings,
    with_max_pixels,
)
from vqa_cli.errors import UsageError
from vqa_cli.settings import (
    DEFAULT_ASR,
    DEFAULT_DECODER,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MIN_SCENE,
    DEFAULT_MODE,
    DEFAULT_ROPE_TYPE,
    DEFAULT_SCENE_DETECTOR,
    DEFAULT_SEEK,
    DEFAULT_SEGMENTS,
    DEFAULT_TEMPERATURE,
    SUBTITLES_AUTO,
)


def ask(
    video: VideoArg,
    questions: Annotated[list[str] | None, typer.Argument(help="One or more questions (the video is encoded once).",
                                                          show_default=False)] = None,
    questions_file: Annotated[str | None, typer.Option("--questions", help="More questions, one per line (- = stdin).",
                                                       show_default=False)] = None,
    as_json: JsonOpt = False,
    plan: Annotated[bool, typer.Option("--plan", help="Show frames, tokens, RoPE and memory without running.")] = False,
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    max_frames: MaxFramesOpt = None,
    max_pixels: MaxPixelsOpt = None,
    seek: SeekOpt = DEFAULT_SEEK,
    decoder: DecoderOpt = DEFAULT_DECODER,
    start: StartOpt = None,
    end: EndOpt = None,
    model: ModelOpt = None,
    server: ServerOpt = None,
    mode: ModeOpt = DEFAULT_MODE,
    quant: QuantOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_dir: OffloadDirOpt = None,
    fit: FitOpt = False,
    force: ForceOpt = False,
    max_new_tokens: MaxNewTokensOpt = DEFAULT_MAX_NEW_TOKENS,
    temperature: TemperatureOpt = DEFAULT_TEMPERATURE,
    seed: SeedOpt = None,
    stride: StrideOpt = None,
    reduce: ReduceOpt = None,
    keep: KeepOpt = None,
    max_visual_tokens: MaxVisualTokensOpt = None,
    slow_frames: SlowFramesOpt = None,
    fast_grid: FastGridOpt = None,
    pool: PoolOpt = None,
    rope_scale: RopeScaleOpt = None,
    rope_type: RopeTypeOpt = DEFAULT_ROPE_TYPE,
    time_prompt: TimePromptOpt = False,
    guide: GuideOpt = False,
    guide_model: GuideModelOpt = None,
    guide_kernel: GuideKernelOpt = None,
    segments: SegmentsOpt = DEFAULT_SEGMENTS,
    scene_detector: SceneDetectorOpt = DEFAULT_SCENE_DETECTOR,
    scene_threshold: SceneThresholdOpt = None,
    min_scene: MinSceneOpt = DEFAULT_MIN_SCENE,
    subtitles: SubtitlesOpt = SUBTITLES_AUTO,
    subtitle_encoding: SubtitleEncodingOpt = None,
    asr: AsrOpt = DEFAULT_ASR,
    asr_model: AsrModelOpt = None,
    language: LanguageOpt = None,
    audio_stream: AudioStreamOpt = None,
) -> int:
    """Answer questions about a video, streaming the answers to stdout."""
    from vqa_cli.jobs.ask import run_ask

    asked = list(questions or []) + _read_questions(questions_file)
    if not asked:
        raise UsageError("give a question (or --questions FILE)")
    if server and max_pixels:
        raise UsageError("--max-pixels works with a local model, not with --server")

    settings = run_settings(
        frames=frames, fps=fps, max_frames=max_frames, seek=seek, decoder=decoder, start=start, end=end,
        model=model or (SERVED_MODEL if server else None), mode=mode, quant=quant, device=device, dtype=dtype,
        max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed, stride=stride, slow_frames=slow_frames, fast_grid=fast_grid, pool=pool,
        reduce=reduce, keep=keep, max_visual_tokens=max_visual_tokens,
        rope_scale=rope_scale, rope_type=rope_type, time_prompt=time_prompt,
        guide=guide, guide_model=guide_model, guide_kernel=guide_kernel,
        max_memory=max_memory, offload_dir=offload_dir, fit=fit, force=force,
        segments=segments, scene_detector=scene_detector, scene_threshold=scene_threshold, min_scene=min_scene,
        subtitles=subtitles, subtitle_encoding=subtitle_encoding, asr=asr, asr_model=asr_model, language=language,
        audio_stream=audio_stream,
    )
    settings = with_max_pixels(settings, max_pixels)
    return run_ask(settings, video, asked, as_json=as_json, plan_only=plan, server=server,
                   model_given=model is not None)


def _read_questions(path: str | None) -> list[str]:
    """``--questions``: UTF-8 text (a BOM is skipped), one question a line; a file that is not UTF-8 is a usage
    error naming it and the first byte that is not, never a guess at another encoding."""
    if not path:
        return []
    if path == "-":
        buffer = getattr(sys.stdin, "buffer", None)
        data = buffer.read() if buffer is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
    else:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise UsageError(f"cannot read --questions {path!r}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = "standard input" if path == "-" else repr(path)
        raise UsageError(f"--questions {where} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start} ({exc.reason}); save it as UTF-8") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
