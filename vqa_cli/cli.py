"""The ``vqa`` command line: thin commands over the jobs in ``ask``, ``caption`` and ``video``.

Nothing heavy is imported here: torch and transformers load inside the commands that need
them, so ``vqa --help`` and ``vqa frames`` stay fast. Known errors become one line on stderr
through ``errors.describe``; exit 2 for usage errors, 1 for failures.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_type_hints

import typer

from vqa_cli import __version__, console
from vqa_cli.errors import EXIT_USAGE, UsageError, describe
from vqa_cli.modes import DEFAULT_MODE, ModeSettings

app = typer.Typer(
    name="vqa",
    help="Ask questions about videos and caption folders of them with local video-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# ---- shared options (one definition each) ---------------------------------------------------
Model = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub id, local directory or alias (default: $VQA_MODEL or llava-next-video-7b).",
                 show_default=False),
]
ModeName = Literal["anyres", "slowfast", "pooled"]
Mode = Annotated[ModeName, typer.Option("--mode", help="How frames become tokens.")]
Frames = Annotated[int | None, typer.Option("--frames", "-n", min=1, help="Frames to sample (default: the mode's).")]
Fps = Annotated[float | None, typer.Option("--fps", min=0.001, help="Sample at this rate instead of --frames.",
                                           show_default=False)]
MaxFrames = Annotated[int | None, typer.Option("--max-frames", min=1, show_default=False,
                                               help="Cap for --fps (default: the mode's frames).")]
Seek = Annotated[Literal["exact", "keyframe", "auto"], typer.Option(
    "--seek", help="exact frames, nearest keyframes (fast on long videos), or auto (keyframes when exact would decode "
    "over 1000 frames).")]
Start = Annotated[float | None, typer.Option("--start", min=0, help="Window start, seconds.")]
End = Annotated[float | None, typer.Option("--end", min=0, help="Window end, seconds.")]
Quant = Annotated[
    Literal["4bit", "8bit", "none"] | None,
    typer.Option("--quant",
                 help="bitsandbytes quantization (default: 4bit with CUDA, none on CPU).", show_default=False),
]
Device = Annotated[str | None, typer.Option("--device", help="cuda, cuda:1, cpu (default: cuda if available).")]
Dtype = Annotated[
    Literal["auto", "float32", "float16", "bfloat16"] | None,
    typer.Option("--dtype",
                 help="Compute dtype (default: bfloat16/float16 on GPU, float32 on CPU).", show_default=False),
]
MaxNew = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Most tokens to generate.")]
Temperature = Annotated[float, typer.Option("--temperature", min=0, help="0 = greedy and deterministic.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Random seed for sampling (temperature > 0).")]
Stride = Annotated[Literal["1", "2", "4"] | None, typer.Option("--stride",
                                            help="anyres: per-frame pooling stride.", show_default=False)]
SlowFrames = Annotated[int | None, typer.Option("--slow-frames", min=1, help="slowfast: slow-pathway frames.")]
FastGrid = Annotated[int | None, typer.Option("--fast-grid", min=1, help="slowfast: fast-pathway grid side.")]
Pool = Annotated[str | None, typer.Option("--pool", help="pooled: output T,H,W (default 16,12,12 at 24x24).")]
Guide = Annotated[bool, typer.Option("--guide", help="pooled: PPLLaVA prompt-guided pooling (needs a CLIP model).")]
GuideModel = Annotated[str | None, typer.Option("--guide-model", help="CLIP model for --guide "
                                                "(default: openai/clip-vit-large-patch14-336).", show_default=False)]
GuideKernel = Annotated[str | None, typer.Option("--guide-kernel", help="pooled --guide: window T,H,W "
                                                 "(default 2,3,3 at 24x24).", show_default=False)]
RopeScale = Annotated[float | None, typer.Option("--rope-scale", min=1, help="Force a RoPE scaling factor.")]
RopeType = Annotated[Literal["linear", "dynamic"], typer.Option("--rope-type",
                                       help="RoPE scaling kind.")]
TimePrompt = Annotated[bool, typer.Option("--time-prompt", help="Tell the model the duration and frame times.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


# ---- option groups: one declaration each, added to the commands that take them ----------------
def _sampling_options(
    frames: Frames = None,
    fps: Fps = None,
    max_frames: MaxFrames = None,
    seek: Seek = "auto",
    start: Start = None,
    end: End = None,
) -> None:
    """Which frames: how many (or at what rate), how to seek, which window."""


def _model_options(
    model: Model = None,
    mode: Mode = DEFAULT_MODE,
    quant: Quant = None,
    device: Device = None,
    dtype: Dtype = None,
    max_new_tokens: MaxNew = 256,
    temperature: Temperature = 0.0,
    seed: Seed = None,
    stride: Stride = None,
    slow_frames: SlowFrames = None,
    fast_grid: FastGrid = None,
    pool: Pool = None,
    rope_scale: RopeScale = None,
    rope_type: RopeType = "linear",
    time_prompt: TimePrompt = False,
) -> None:
    """Which model, mode, precision and decoding."""


def _guide_options(
    guide: Guide = False,
    guide_model: GuideModel = None,
    guide_kernel: GuideKernel = None,
) -> None:
    """Prompt-guided pooling."""


def with_options(*groups: Callable[..., None]) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Give a command the parameters of the option ``groups``; they reach it together as ``options``.

    Typer reads a command's parameters from its signature, so the wrapper shows the command's own
    parameters followed by the groups' (declared once above) and hands the groups' values over as a dict.
    """

    def params(f: Callable[..., Any]) -> list[inspect.Parameter]:
        hints = get_type_hints(f, include_extras=True)  # resolved: a given __signature__ is not evaluated
        return [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=hints[p.name])
                for p in inspect.signature(f).parameters.values() if p.name != "options"]

    def decorate(command: Callable[..., int]) -> Callable[..., int]:
        own = params(command)
        extra = [p for group in groups for p in params(group)]
        names = {p.name for p in extra}
        annotations = {p.name: p.annotation for p in own + extra}

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> int:
            options = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            return command(*args, options=options, **kwargs)

        wrapper.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
        wrapper.__annotations__ = annotations
        del wrapper.__wrapped__  # Typer must see the new signature, not the command's
        return wrapper

    return decorate


def _triple(flag: str, text: str | None) -> tuple[int, int, int] | None:
    if not text:
        return None
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise UsageError(f"{flag} takes three positive integers T,H,W, not {text!r}")
    return values  # type: ignore[return-value]


def _mode_settings(mode: str, stride: str | int | None, slow_frames: int | None, fast_grid: int | None,
                   pool: str | None, guide: bool = False, guide_kernel: str | None = None) -> ModeSettings:
    if (guide or guide_kernel) and mode != "pooled":
        raise UsageError("--guide works with --mode pooled")
    if guide and pool:
        raise UsageError("--pool and --guide are two different poolings: pick one (--guide-kernel sets the window)")
    return ModeSettings(mode, stride=int(stride) if stride else None, slow_frames=slow_frames,
                        fast_grid=fast_grid, pool=_triple("--pool", pool), guide=guide,
                        guide_kernel=_triple("--guide-kernel", guide_kernel))


_SETTING_OPTIONS = ("model", "mode", "frames", "fps", "max_frames", "seek", "start", "end", "quant", "device",
                    "dtype", "max_new_tokens", "temperature", "seed", "stride", "slow_frames", "fast_grid", "pool",
                    "guide", "guide_model", "guide_kernel", "rope_scale", "rope_type", "time_prompt")


def _check_window(start: float | None, end: float | None) -> None:
    if start is not None and end is not None and end <= start:
        raise UsageError("--end must be after --start")


def _check_rate(frames: int | None, fps: float | None, max_frames: int | None) -> None:
    if fps and frames:
        raise UsageError("--frames and --fps are two ways to choose frames: pick one (--max-frames caps --fps)")
    if max_frames and not fps:
        raise UsageError("--max-frames caps --fps; with --frames give the count itself")


def _settings(options: dict):
    """RunSettings from a command's shared options (its ``locals()``); options it lacks take their defaults."""
    from vqa_cli.engine import RunSettings
    from vqa_cli.loading import default_model

    kw = {"guide": False, "guide_model": None, "guide_kernel": None,
          **{k: v for k, v in options.items() if k in _SETTING_OPTIONS}}
    _check_window(kw["start"], kw["end"])
    _check_rate(kw["frames"], kw["fps"], kw["max_frames"])
    mode = _mode_settings(kw.pop("mode"), kw.pop("stride"), kw.pop("slow_frames"), kw.pop("fast_grid"),
                          kw.pop("pool"), kw.pop("guide"), kw.pop("guide_kernel"))
    guide_model = kw.pop("guide_model")
    if guide_model:
        kw["guide_model"] = guide_model
    return RunSettings(model=kw.pop("model") or default_model(), mode=mode, **kw)


@app.command()
@with_options(_sampling_options, _model_options, _guide_options)
def ask(
    video: Annotated[str, typer.Argument(help="Video file (or an image).", show_default=False)],
    questions: Annotated[list[str] | None, typer.Argument(help="One or more questions (the video is encoded once).",
                                                          show_default=False)] = None,
    questions_file: Annotated[str | None, typer.Option("--questions", help="More questions, one per line (- = stdin).",
                                                       show_default=False)] = None,
    as_json: Json = False,
    plan: Annotated[bool, typer.Option("--plan", help="Show frames, tokens, RoPE and memory without running.")] = False,
    *,
    options: dict,
) -> int:
    """Answer questions about a video, streaming the answers to stdout."""
    from vqa_cli.ask import run_ask

    asked = list(questions or []) + _read_questions(questions_file)
    if not asked:
        raise UsageError("give a question (or --questions FILE)")

    settings = _settings(options)
    return run_ask(settings, video, asked, as_json=as_json, plan_only=plan)


def _read_questions(path: str | None) -> list[str]:
    if not path:
        return []
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read --questions {path!r}: {exc.strerror}") from None
    return [line.strip() for line in lines if line.strip()]


@app.command()
@with_options(_sampling_options, _model_options)
def chat(
    video: Annotated[str, typer.Argument(help="Video file (or an image).", show_default=False)],
    *,
    options: dict,
) -> int:
    """Talk about a video: the conversation stays in the KV cache (/reset, /frames, /save FILE, /quit)."""
    from vqa_cli.chat import run_chat

    settings = _settings(options)
    return run_chat(settings, video)


@app.command()
@with_options(_sampling_options, _model_options, _guide_options)
def caption(
    paths: Annotated[list[str], typer.Argument(help="Videos, folders (recursive) or - for paths on stdin.",
                                               show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="JSON Lines output (- for stdout); re-runs resume it.")] = "-",
    prompt: Annotated[str | None, typer.Option("--prompt", help="The captioning instruction.",
                                               show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Videos per generate call.")] = 4,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Decode-ahead threads.")] = 2,
    shard: Annotated[str | None, typer.Option("--shard", help="Take share I of N (I/N, 0-based): array jobs.",
                                              show_default=False)] = None,
    summary: Annotated[str | None, typer.Option("--summary", help="Also write the run summary as JSON here.",
                                                show_default=False)] = None,
    *,
    options: dict,
) -> int:
    """Caption videos into JSON Lines, one record per video. Exit 0: all captioned; 1: some failed; 2: usage."""
    from vqa_cli.caption import run_caption
    from vqa_cli.prompt import DEFAULT_CAPTION_PROMPT

    settings = _settings(options)
    return run_caption(settings, paths, out, prompt if prompt is not None else DEFAULT_CAPTION_PROMPT,
                       batch_size=batch_size, workers=workers, shard=shard, summary_path=summary)


@app.command()
@with_options(_sampling_options)
def frames(
    video: Annotated[str, typer.Argument(help="Video file (or an image).", show_default=False)],
    mode: Mode = DEFAULT_MODE,
    slow_frames: SlowFrames = None,
    as_json: Json = False,
    sheet: Annotated[str | None, typer.Option("--sheet", help="Write a contact sheet (.jpg/.png) of the frames.",
                                              show_default=False)] = None,
    *,
    options: dict,
) -> int:
    """Show which frames the model will see: indices and timestamps (no model is loaded)."""
    from vqa_cli.ask import check_input
    from vqa_cli.engine import sample_clip

    o = options
    _check_window(o["start"], o["end"])
    _check_rate(o["frames"], o["fps"], o["max_frames"])
    if sheet:
        from vqa_cli.sheet import SHEET_FORMATS

        if not sheet.lower().endswith(tuple(SHEET_FORMATS)):
            raise UsageError(f"--sheet must end in one of {', '.join(sorted(SHEET_FORMATS))}")
    check_input(video)
    if sheet:
        from vqa_cli.writer import check_output

        check_output(sheet, [video], flag="--sheet", keys=None)
    from vqa_cli.engine import RunSettings, frames_for

    request = RunSettings(model="", mode=ModeSettings(mode), **options)
    clip, _ = sample_clip(video, request, frames_for(request, 32))
    pathways = _frame_pathways(mode, len(clip.indices), slow_frames)
    if sheet:
        from vqa_cli.sheet import contact_sheet

        contact_sheet(clip, sheet)
    if as_json:
        console.emit_json({
            "video": video,
            "frames": len(clip.indices),
            "frame_indices": clip.indices,
            "timestamps": clip.timestamps,
            "duration": clip.duration,
            "fps": clip.fps,
            "total_frames": clip.total_frames,
            "header_frames": clip.header_frames,
            "header_fps": clip.header_fps,
            "seek": clip.seek,
            "decoded": clip.decoded,
            "damaged": clip.damaged,
            "warnings": clip.warnings,
            "mode": mode,
            "pathways": pathways,
        })
    else:
        names = {i: [p["name"] for p in pathways if i in p["frames"]] for i in range(len(clip.indices))}
        if console.stdout_is_tty():
            console.stderr.print(f"[dim]{video}: {clip.total_frames} frames, {clip.duration:.2f}s, "
                                 f"{clip.fps:.2f} fps measured; {len(clip.indices)} sampled[/dim]")
        for pos, (idx, ts) in enumerate(zip(clip.indices, clip.timestamps, strict=True)):
            extra = f"\t{','.join(names[pos])}" if mode == "slowfast" else ""
            print(f"{idx}\t{ts:.3f}{extra}")
    if sheet:
        console.info(f"contact sheet written to {sheet}")
    return 0


def _frame_pathways(mode: str, num_frames: int, slow_frames: int | None) -> list[dict]:
    """Which sampled frames each pathway of ``mode`` uses (positions into the sampled list).

    Frame selection does not depend on the model's grid, so the reference grid stands in.
    """
    from vqa_cli import modes

    grid = (modes.REFERENCE_GRID, modes.REFERENCE_GRID)
    plan = modes.plan_tokens(ModeSettings(mode, slow_frames=slow_frames), num_frames, grid, 2)
    return [{"name": p.name, "frames": list(p.frame_positions)} for p in plan.pathways]


@app.command()
def models(as_json: Json = False) -> int:
    """List known checkpoints: alias, family, size, memory per quantization, whether cached."""
    from vqa_cli.catalog import list_models

    rows = list_models()
    if as_json:
        console.emit_json(rows)
        return 0
    header = ["alias", "family", "params", "disk GB", "4bit GiB", "8bit GiB", "bf16 GiB", "cached"]
    table = [[r["alias"] + (" *" if r["default"] else ""), r["family"], r["params"],
              f"{r['disk_gb']:.1f}" + ("~" if r["disk_estimated"] else ""),
              *(f"{r['memory_gib'][q]:.1f}" + ("~" if r["memory_estimated"] else "") for q in ("4bit", "8bit", "none")),
              "yes" if r["cached"] else ("config" if r["config_cached"] else "no")] for r in rows]
    if console.stdout_is_tty():
        from rich.table import Table

        t = Table(*header, caption="* default; ~ estimated from the nominal size (weights only, fp16)")
        for row in table:
            t.add_row(*row)
        from rich.console import Console

        Console().print(t)
    else:
        print("\t".join(header))
        for row in table:
            print("\t".join(row))
    return 0


@app.command()
def download(
    model: Annotated[str, typer.Argument(help="Alias or hub id.", show_default=False)],
) -> int:
    """Fetch a checkpoint (safetensors, configs, tokenizer) into the Hugging Face cache for offline use."""
    from vqa_cli.catalog import download as fetch

    path = fetch(model, progress=console.stderr_is_tty())
    print(path)
    return 0


def _version(value: bool) -> None:
    if value:
        print(f"vqa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Ask questions about videos and caption folders of them with local video-language models."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning known errors into one line and an exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="vqa", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        console.error("interrupted")
        code = 130
    except typer.TyperException as exc:  # bad flags and arguments: typer prints usage and the problem
        exc.show()
        code = exc.exit_code if exc.exit_code else EXIT_USAGE
    except BaseException as exc:  # noqa: BLE001 - the one place errors become messages
        known = describe(exc)
        if known is None:
            raise
        code, _, message = known
        console.error(message)
    sys.exit(code if isinstance(code, int) else 0)
