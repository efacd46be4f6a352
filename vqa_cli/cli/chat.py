"""``vqa chat``: a conversation about one video."""

from __future__ import annotations

from vqa_cli.cli.options import (
    SERVED_MODEL,
    DecoderOpt,
    DeviceOpt,
    DtypeOpt,
    EndOpt,
    FastGridOpt,
    FitOpt,
    ForceOpt,
    FpsOpt,
    FramesOpt,
    MaxFramesOpt,
    MaxMemoryOpt,
    MaxNewTokensOpt,
    ModelOpt,
    ModeOpt,
    OffloadDirOpt,
    PoolOpt,
    QuantOpt,
    RopeScaleOpt,
    RopeTypeOpt,
    SeedOpt,
    SeekOpt,
    ServerOpt,
    SlowFramesOpt,
    StartOpt,
    StrideOpt,
    TemperatureOpt,
    TimePromptOpt,
    VideoArg,
    run_settings,
)
from vqa_cli.settings import (
    DEFAULT_DECODER,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MODE,
    DEFAULT_ROPE_TYPE,
    DEFAULT_SEEK,
    DEFAULT_TEMPERATURE,
)


def chat(
    video: VideoArg,
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    max_frames: MaxFramesOpt = None,
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
) -> int:
    """Talk about a video: the conversation stays in the KV cache (/reset, /frames, /save FILE, /quit)."""
    from vqa_cli.jobs.chat import run_chat

    settings = run_settings(
        frames=frames, fps=fps, max_frames=max_frames, seek=seek, decoder=decoder, start=start, end=end,
        model=model or (SERVED_MODEL if server else None), mode=mode, quant=quant, device=device, dtype=dtype,
        max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed, stride=stride, slow_frames=slow_frames, fast_grid=fast_grid, pool=pool,
        rope_scale=rope_scale, rope_type=rope_type, time_prompt=time_prompt,
        max_memory=max_memory, offload_dir=offload_dir, fit=fit, force=force,
    )
    return run_chat(settings, video, server=server, model_given=model is not None)
