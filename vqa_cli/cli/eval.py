"""``vqa eval``: accuracy on a video benchmark, one JSON Lines record per question, a summary per mode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, get_args

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
    ForceOpt,
    FpsOpt,
    FramesOpt,
    JsonOpt,
    KeepOpt,
    LanguageOpt,
    MaxFramesOpt,
    MaxMemoryOpt,
    MaxVisualTokensOpt,
    ModelOpt,
    OffloadDirOpt,
    PoolOpt,
    QuantOpt,
    RopeScaleOpt,
    RopeTypeOpt,
    SeekOpt,
    ServerOpt,
    SlowFramesOpt,
    StartOpt,
    StrideOpt,
    SubtitleEncodingOpt,
    TimePromptOpt,
    run_settings,
)
from vqa_cli.errors import UsageError
from vqa_cli.jobs.eval import EVAL_MAX_NEW_TOKENS
from vqa_cli.jobs.eval._formats import FormatChoice
from vqa_cli.jobs.eval._prompts import DEFAULT_PROTOCOL, Protocol
from vqa_cli.jobs.eval._score import DEFAULT_SCORE, Score
from vqa_cli.settings import (
    DEFAULT_ASR,
    DEFAULT_DECODER,
    DEFAULT_MODE,
    DEFAULT_ROPE_TYPE,
    DEFAULT_SEEK,
    DEFAULT_WORKERS,
    REDUCE_METHODS,
    SUBTITLES_OFF,
    ModeName,
)


def _subtitles(choice: str) -> str:
    """``--subtitles``: off, auto, asr or a folder (one subtitle file per video, named after it)."""
    if choice in ("off", "auto", "asr"):
        return choice
    if not Path(choice).is_dir():
        raise UsageError(f"--subtitles takes off, auto, asr or a folder of VIDEO.srt files, not {choice!r}")
    return str(Path(choice).resolve())


def parse_modes(text: str) -> list[ModeName]:
    """``anyres,slowfast`` -> the modes, in order, each once; an unknown name is a usage error."""
    known = get_args(ModeName)
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in known]
    if bad or not names:
        raise UsageError(f"--mode takes a comma list of {', '.join(known)}, not {text!r}")
    return list(dict.fromkeys(names))  # type: ignore[arg-type]


def parse_reductions(text: str | None) -> list[str | None]:
    """``none,evs`` -> the reductions, in order, each once (None: the option not given); an unknown one is a usage
    error."""
    if text is None:
        return [None]
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names or any(m not in REDUCE_METHODS for m in names):
        raise UsageError(f"--reduce takes a comma list of {', '.join(REDUCE_METHODS)}, not {text!r}")
    return list(dict.fromkeys(names))


def eval(  # noqa: A001 - the command's name
    annotations: Annotated[str, typer.Argument(help="The benchmark's annotation file as published, or a folder of "
                                               "per-task files (MVBench json/, MLVU json/, TempCompass questions/).",
                                               show_default=False)],
    videos: Annotated[str, typer.Option("--videos", help="Folder holding the benchmark's videos (searched "
                                        "recursively).", show_default=False)],
    fmt: Annotated[FormatChoice, typer.Option("--format", "-f", help="Annotation format (see docs/eval.md); auto: "
                                              "told from the file, said on stderr.")] = "auto",
    answers: Annotated[str | None, typer.Option(
        "--answers", help="EgoSchema's answers file (default: subset_answers.json beside the questions).",
        show_default=False)] = None,
    video_map: Annotated[str | None, typer.Option("--video-map", help="NExT-QA's map_vid_vidorID.json (default: the "
                                                  "one beside the csv).", show_default=False)] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="JSON Lines, one record per question (- for stdout); "
                                     "re-runs resume it.")] = "-",
    summary: Annotated[str | None, typer.Option("--summary", help="Also write the summary as JSON here.",
                                                show_default=False)] = None,
    protocol: Annotated[Protocol, typer.Option("--protocol", help="Prompt and answer-parsing rules: the "
                                               "benchmark's own or lmms-eval's.")] = DEFAULT_PROTOCOL,
    score: Annotated[Score, typer.Option("--score", help="generate: parse the answer's letter; likelihood: the "
                                         "option letter with the highest log-probability.")] = DEFAULT_SCORE,
    mode: Annotated[str, typer.Option("--mode", help="Mode, or a comma list (anyres,slowfast,pooled): each video "
                                      "is decoded once and every mode is evaluated.")] = DEFAULT_MODE,
    reduce: Annotated[str | None, typer.Option(
        "--reduce", show_default=False, help="Reduce the video's tokens (docs/reduction.md): none, evs, vidcom2, or a "
        "comma list (none,evs,vidcom2): every setting answers the same questions, side by side (with each --mode).")
    ] = None,
    keep: KeepOpt = None,
    max_visual_tokens: MaxVisualTokensOpt = None,
    shard: Annotated[str | None, typer.Option("--shard", help="Take share I of N (I/N) of the videos.",
                                              show_default=False)] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Decode-ahead threads.")] = DEFAULT_WORKERS,
    subtitles: Annotated[str, typer.Option(
        "--subtitles", help="Subtitles as context (Video-MME's with-subtitles setting): off, auto (a .srt/.vtt "
        "beside each video), asr (the speech, transcribed) or a folder of VIDEO.srt files; only the cues at the "
        "sampled frames. With --asr auto a video without a subtitle file gets its transcript.")] = SUBTITLES_OFF,
    subtitle_encoding: SubtitleEncodingOpt = None,
    asr: AsrOpt = DEFAULT_ASR,
    asr_model: AsrModelOpt = None,
    language: LanguageOpt = None,
    audio_stream: AudioStreamOpt = None,
    json_out: JsonOpt = False,
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    max_frames: MaxFramesOpt = None,
    seek: SeekOpt = DEFAULT_SEEK,
    decoder: DecoderOpt = DEFAULT_DECODER,
    start: StartOpt = None,
    end: EndOpt = None,
    model: ModelOpt = None,
    server: ServerOpt = None,
    quant: QuantOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    max_memory: MaxMemoryOpt = None,
    offload_dir: OffloadDirOpt = None,
    force: ForceOpt = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Most tokens per answer "
                                                "(--score generate).")] = EVAL_MAX_NEW_TOKENS,
    stride: StrideOpt = None,
    slow_frames: SlowFramesOpt = None,
    fast_grid: FastGridOpt = None,
    pool: PoolOpt = None,
    rope_scale: RopeScaleOpt = None,
    rope_type: RopeTypeOpt = DEFAULT_ROPE_TYPE,
    time_prompt: TimePromptOpt = False,
) -> int:
    """Measure accuracy on a video benchmark. Exit 0: every question answered; 1: some failed; 2: usage."""
    from vqa_cli.jobs.eval._run import run_eval

    if server and subtitles != "off":
        raise UsageError("--subtitles puts the cues in the prompt here: it does not go through --server")
    names = parse_modes(mode)
    methods = parse_reductions(reduce)
    chosen_model = model or (SERVED_MODEL if server else None)
    settings = []
    for name, method in [(n, m) for n in names for m in methods]:  # each mode takes only its own parameters
        ratio = {"keep": keep, "max_visual_tokens": max_visual_tokens} if method != "none" or len(methods) == 1 else {}
        s = run_settings(
            reduce=method, **ratio,
            frames=frames, fps=fps, max_frames=max_frames, seek=seek, decoder=decoder, start=start, end=end,
            model=chosen_model,
            mode=name, quant=quant, device=device, dtype=dtype, max_new_tokens=max_new_tokens, temperature=0.0,
            stride=stride if name == "anyres" else None,
            slow_frames=slow_frames if name == "slowfast" else None,
            fast_grid=fast_grid if name == "slowfast" else None, pool=pool if name == "pooled" else None,
            rope_scale=rope_scale, rope_type=rope_type, time_prompt=time_prompt, max_memory=max_memory,
            offload_dir=offload_dir, force=force, subtitle_encoding=subtitle_encoding, asr=asr, asr_model=asr_model,
            language=language, audio_stream=audio_stream,  # (a folder of subtitle files is checked as auto is)
            subtitles=subtitles if subtitles in ("off", "asr") else "auto")
        chosen_model = s.model  # the default model is chosen (and announced) once
        settings.append(replace(s, subtitles=_subtitles(subtitles)))
    return run_eval(settings, annotations, fmt, videos, out=out, summary_path=summary, protocol=protocol, score=score,
                    shard=shard, workers=workers, json_out=json_out, server=server, model_given=model is not None,
                    answers=answers, video_map=video_map)
