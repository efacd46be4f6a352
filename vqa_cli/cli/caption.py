"""``vqa caption``: one JSON Lines record per video, for folders of them."""

from __future__ import annotations

from typing import Annotated

import typer

from vqa_cli.cli.options import (
    SERVED_MODEL,
    DecoderOpt,
    DeviceOpt,
    DtypeOpt,
    EndOpt,
    FastGridOpt,
    FitOpt,
    ForceOpt,
    FormatOpt,
    FpsOpt,
    FramesOpt,
    GuideKernelOpt,
    GuideModelOpt,
    GuideOpt,
    MaxFramesOpt,
    MaxMemoryOpt,
    MaxNewTokensOpt,
    MaxPixelsOpt,
    MinSceneOpt,
    ModelOpt,
    ModeOpt,
    OffloadDirOpt,
    OutDirOpt,
    PoolOpt,
    QuantOpt,
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
    run_settings,
    with_max_pixels,
    writable_folder,
)
from vqa_cli.errors import UsageError
from vqa_cli.settings import (
    DEFAULT_BATCH,
    DEFAULT_CAPTION_FORMAT,
    DEFAULT_DECODER,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MIN_SCENE,
    DEFAULT_MODE,
    DEFAULT_ROPE_TYPE,
    DEFAULT_SCENE_DETECTOR,
    DEFAULT_SEEK,
    DEFAULT_SEGMENTS,
    DEFAULT_TEMPERATURE,
    DEFAULT_WORKERS,
    SUBTITLES_AUTO,
)


def caption(
    paths: Annotated[list[str], typer.Argument(help="Videos, folders (recursive) or - for paths on stdin.",
                                               show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="JSON Lines output (- for stdout); re-runs resume it.")] = "-",
    prompt: Annotated[str | None, typer.Option("--prompt", help="The captioning instruction.",
                                               show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Videos per generate call.")]
    = DEFAULT_BATCH,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Decode-ahead threads.")] = DEFAULT_WORKERS,
    shard: Annotated[str | None, typer.Option("--shard", help="Take share I of N (I/N, 0-based): array jobs.",
                                              show_default=False)] = None,
    summary: Annotated[str | None, typer.Option("--summary", help="Also write the run summary as JSON here.",
                                                show_default=False)] = None,
    feature_cache: Annotated[str | None, typer.Option(
        "--feature-cache", help="Keep each video's visual tokens in this folder: a re-run with another --prompt "
        "skips decoding and encoding.", show_default=False, callback=writable_folder("--feature-cache"))] = None,
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
    output_format: FormatOpt = DEFAULT_CAPTION_FORMAT,
    out_dir: OutDirOpt = None,
) -> int:
    """Caption videos into JSON Lines, one record per video. Exit 0: all captioned; 1: some failed; 2: usage."""
    from vqa_cli.jobs.caption import run_caption
    from vqa_cli.model.prompt import DEFAULT_CAPTION_PROMPT

    if server and max_pixels:
        raise UsageError("--max-pixels works with a local model, not with --server")
    settings = run_settings(
        frames=frames, fps=fps, max_frames=max_frames, seek=seek, decoder=decoder, start=start, end=end,
        model=model or (SERVED_MODEL if server else None), mode=mode, quant=quant, device=device, dtype=dtype,
        max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed, stride=stride, slow_frames=slow_frames, fast_grid=fast_grid, pool=pool,
        rope_scale=rope_scale, rope_type=rope_type, time_prompt=time_prompt,
        guide=guide, guide_model=guide_model, guide_kernel=guide_kernel,
        max_memory=max_memory, offload_dir=offload_dir, fit=fit, force=force,
        segments=segments, scene_detector=scene_detector, scene_threshold=scene_threshold, min_scene=min_scene,
        subtitles=subtitles, subtitle_encoding=subtitle_encoding,
    )
    settings = with_max_pixels(settings, max_pixels)
    return run_caption(settings, paths, out, prompt if prompt is not None else DEFAULT_CAPTION_PROMPT,
                       batch_size=batch_size, workers=workers, shard=shard, summary_path=summary, server=server,
                       model_given=model is not None, feature_cache=feature_cache, output_format=output_format,
                       out_dir=out_dir)
