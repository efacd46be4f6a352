"""``vqa serve``: an OpenAI-compatible server that keeps the model loaded."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from vqa_cli.cli.options import (
    AsrModelOpt,
    AsrOpt,
    AudioStreamOpt,
    DecoderOpt,
    DeviceOpt,
    DtypeOpt,
    EndOpt,
    FastGridOpt,
    ForceOpt,
    FpsOpt,
    FramesOpt,
    GuideKernelOpt,
    GuideModelOpt,
    GuideOpt,
    KeepOpt,
    LanguageOpt,
    MaxFramesOpt,
    MaxMemoryOpt,
    MaxNewTokensOpt,
    MaxVisualTokensOpt,
    ModelOpt,
    ModeOpt,
    OffloadDirOpt,
    PoolOpt,
    QuantOpt,
    ReduceOpt,
    RopeScaleOpt,
    RopeTypeOpt,
    SeedOpt,
    SeekOpt,
    SlowFramesOpt,
    StartOpt,
    StrideOpt,
    SubtitlesOpt,
    TemperatureOpt,
    TimePromptOpt,
    run_settings,
    writable_folder,
)
from vqa_cli.errors import UsageError
from vqa_cli.settings import (
    DEFAULT_ASR,
    DEFAULT_BATCH,
    DEFAULT_DECODER,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MODE,
    DEFAULT_ROPE_TYPE,
    DEFAULT_SEEK,
    DEFAULT_TEMPERATURE,
    DEFAULT_WORKERS,
    SERVE_FEATURE_CACHE_GIB,
    SERVE_HOST,
    SERVE_KV_CACHE_GIB,
    SERVE_MAX_UPLOAD_MB,
    SERVE_PORT,
    SUBTITLES_OFF,
)


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")]
    = SERVE_HOST,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one, printed).")]
    = SERVE_PORT,
    media_root: Annotated[list[str] | None, typer.Option(
        "--media-root", help="Folder requests may read videos from (repeatable; default: the current folder).",
        show_default=False)] = None,
    allow_urls: Annotated[bool, typer.Option("--allow-urls", help="Let requests name http(s) video urls.")] = False,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' "
                                                "(default: $VQA_API_KEY).", show_default=False)] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=1, help="Largest data: or http(s) video.")]
    = SERVE_MAX_UPLOAD_MB,
    feature_cache: Annotated[str | None, typer.Option("--feature-cache", help="Also keep visual tokens on disk in "
                                                      "this folder (survives restarts).", show_default=False,
                                                      callback=writable_folder("--feature-cache"))] = None,
    feature_cache_gib: Annotated[float, typer.Option("--feature-cache-gib", min=0,
                                                     help="Memory for visual tokens.")] = SERVE_FEATURE_CACHE_GIB,
    kv_cache_gib: Annotated[float, typer.Option("--kv-cache-gib", min=0,
                                                help="Memory for conversations' KV caches.")] = SERVE_KV_CACHE_GIB,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1,
                                            help="Most concurrent requests in one generate call.")] = DEFAULT_BATCH,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Decode threads.")] = DEFAULT_WORKERS,
    max_request_memory: Annotated[str | None, typer.Option(
        "--max-request-memory", show_default=False,
        help="Most memory one request may need beyond the weights (its KV cache and activations, as --plan "
             "estimates them), e.g. 4GiB; larger requests are refused with 400 (default: the memory available at "
             "startup less the weights).")] = None,
    served_model_name: Annotated[str | None, typer.Option(
        "--served-model-name", help="The model's id on the API (default: --model as given); its hub id, alias, "
        "folder name and path are accepted too.", show_default=False)] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        "--cors-origin", help="Let web pages from this origin call the server, e.g. http://localhost:3000 "
        "(repeatable or comma-separated; * for any; default: none).", show_default=False)] = None,
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    max_frames: MaxFramesOpt = None,
    seek: SeekOpt = DEFAULT_SEEK,
    decoder: DecoderOpt = DEFAULT_DECODER,
    start: StartOpt = None,
    end: EndOpt = None,
    model: ModelOpt = None,
    mode: ModeOpt = DEFAULT_MODE,
    quant: QuantOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
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
    max_memory: MaxMemoryOpt = None,
    offload_dir: OffloadDirOpt = None,
    force: ForceOpt = False,
    subtitles: SubtitlesOpt = SUBTITLES_OFF,
    asr: AsrOpt = DEFAULT_ASR,
    asr_model: AsrModelOpt = None,
    language: LanguageOpt = None,
    audio_stream: AudioStreamOpt = None,
) -> int:
    """Serve the model over an OpenAI-compatible API (POST /v1/chat/completions); the options are defaults
    that each request may override."""
    from vqa_cli.serve import ServeOptions, run_server
    from vqa_cli.units import parse_size

    if subtitles not in ("off", "auto", "asr"):
        raise UsageError("vqa serve --subtitles is every request's default: off, auto (a .srt/.vtt beside the video) "
                         f"or asr (its speech, transcribed), not a file ({subtitles!r})")
    settings = run_settings(
        frames=frames, fps=fps, max_frames=max_frames, seek=seek, decoder=decoder, start=start, end=end,
        model=model, mode=mode, quant=quant, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed, stride=stride, slow_frames=slow_frames, fast_grid=fast_grid, pool=pool,
        reduce=reduce, keep=keep, max_visual_tokens=max_visual_tokens,
        rope_scale=rope_scale, rope_type=rope_type, time_prompt=time_prompt,
        guide=guide, guide_model=guide_model, guide_kernel=guide_kernel, max_memory=max_memory,
        offload_dir=offload_dir, force=force, subtitles=subtitles, asr=asr, asr_model=asr_model, language=language,
        audio_stream=audio_stream,
    )
    options = ServeOptions(host=host, port=port, media_roots=media_root, allow_urls=allow_urls,
                           api_key=api_key or os.environ.get("VQA_API_KEY") or None, max_upload_mb=max_upload_mb,
                           feature_cache=feature_cache, feature_cache_gib=feature_cache_gib,
                           kv_cache_gib=kv_cache_gib, max_batch=batch_size, workers=workers,
                           served_name=served_model_name, cors_origins=cors_origin,
                           max_request_memory=parse_size(max_request_memory, "--max-request-memory")
                           if max_request_memory else None)
    return run_server(settings, options)
