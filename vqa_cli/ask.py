"""``vqa ask``: one video, one question, the answer streamed (or one JSON object)."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vqa_cli import console
from vqa_cli.errors import InputNotFoundError
from vqa_cli.video import is_image_path, probe


def check_input(path: str) -> None:
    """Usage errors for a missing path or a folder, then a one-frame probe so a broken file fails
    before any model loads."""
    if not Path(path).exists():
        raise InputNotFoundError(f"no such file: {path!r}")
    if Path(path).is_dir():
        raise InputNotFoundError(f"{path!r} is a directory: `vqa ask` takes one video (see `vqa caption`)")
    probe(path)


def plan_record(checkpoint, settings, budget) -> dict:
    # Planning may target a device this machine lacks (--device cuda on a laptop): no availability check.
    import torch

    from vqa_cli import loading, plan

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    quant = loading.resolve_quant(settings.quant, device)
    if settings.dtype in (None, "auto") and device.startswith("cuda"):
        dtype = torch.bfloat16
    else:
        dtype = loading.resolve_dtype(settings.dtype, device)
    memory = plan.estimate_memory(checkpoint.adapter, quant, dtype.itemsize, budget.total)
    return {
        "model": settings.model,
        "family": checkpoint.adapter.name,
        **budget.to_dict(),
        "device": device,
        "quant": quant,
        "dtype": str(dtype).removeprefix("torch."),
        "memory": memory.to_dict(),
    }


def print_plan(record: dict, as_json: bool) -> None:
    if as_json:
        console.emit_json(record)
        return
    lines = [
        f"model          {record['model']} ({record['family']})",
        f"mode           {record['mode']}, {record['frames']} frames",
    ]
    for p in record["pathways"]:
        grid = "x".join(str(x) for x in p["grid"])
        lines.append(f"  {p['name']:<12} {len(p['frames'])} frames, grid {grid}: {p['tokens']} tokens")
    mem = record["memory"]
    lines += [
        f"visual tokens  {record['visual_tokens']}",
        f"prompt tokens  {record['prompt_tokens']} (+ {record['max_new_tokens']} new)",
        f"context        {record['total_tokens']} of {record['trained_context']} trained"
        f" -> RoPE factor {record['rope_factor']:g}",
        f"memory         {mem['weights_gib']:.2f} GiB weights ({record['quant']}, {record['dtype']})"
        f" + {mem['kv_cache_gib']:.2f} GiB KV cache = {mem['total_gib']:.2f} GiB",
    ]
    print("\n".join(lines))


class StreamPrinter:
    """Writes streamed text to stdout; stops the spinner at the first piece and trims leading space."""

    def __init__(self, spinner_text: str | None = None) -> None:
        self.spinner = console.spinner(spinner_text) if spinner_text else None
        self.started = False

    def __call__(self, text: str) -> None:
        if not self.started:
            self.stop()
            self.started = True
            text = text.lstrip()
        sys.stdout.write(text)
        sys.stdout.flush()

    def stop(self) -> None:
        if self.spinner is not None:
            self.spinner.stop()


def planned_frames(settings) -> int:
    """The frame count a request will use, from ``config.json`` alone (no transformers import).

    A missing, broken or unsupported ``config.json`` fails here with the checkpoint check's own message."""
    from vqa_cli import loading
    from vqa_cli.engine import frames_for

    if settings.frames and not settings.fps:
        return settings.frames
    model_dir = loading.resolve_model_dir(settings.model, weights=False)
    family = loading.checkpoint_family(model_dir, loading.read_config_dict(model_dir)["model_type"])
    return frames_for(settings, family.default_frames)


def open_video(settings, video: str, questions: list[str], *, reserve: int = 0):
    """Check the input, budget, then load the weights while the frames decode on a worker thread.

    Returns (checkpoint, budget, engine, clip, timings). ``reserve`` adds room for later chat turns.
    """
    from dataclasses import replace

    from vqa_cli.engine import Checkpoint, Engine, sample_clip

    check_input(video)
    # Decoding starts first (OpenCV releases the GIL), overlapping the imports, the configs and the weights.
    frames = 1 if is_image_path(video) else planned_frames(settings)
    with ThreadPoolExecutor(max_workers=1) as pool:
        decoding = pool.submit(sample_clip, video, settings, frames)
        with console.status("reading model config"):
            checkpoint = Checkpoint(settings.model)
            # A still image is one frame: budget (and pick the RoPE factor) for that, not the mode's default.
            planning = replace(settings, max_new_tokens=settings.max_new_tokens + reserve)
            budget = checkpoint.budget(planning, questions, num_frames=frames)
        with console.status(f"loading {settings.model}"):
            started = time.perf_counter()
            engine = Engine(checkpoint, settings, budget.rope_factor)
            load_seconds = time.perf_counter() - started
        with console.status(f"decoding {frames} frames"):
            clip, decode_seconds = decoding.result()
    return checkpoint, budget, engine, clip, {"load": load_seconds, "decode": decode_seconds}


def run_ask(settings, video: str, questions: list[str], *, as_json: bool = False, plan_only: bool = False) -> int:
    """One question: streamed answer. Several: one video encode and one shared prefill, then each question."""
    from vqa_cli.engine import Checkpoint

    run_started = time.perf_counter()
    if plan_only:
        check_input(video)
        checkpoint = Checkpoint(settings.model)
        budget = checkpoint.budget(settings, questions, num_frames=1 if is_image_path(video) else None)
        print_plan(plan_record(checkpoint, settings, budget), as_json)
        return 0
    _, budget, engine, clip, timings = open_video(settings, video, questions)
    if len(questions) > 1:
        return _ask_many(engine, clip, questions, timings, run_started, as_json, video)

    question = questions[0]
    printer = StreamPrinter(None if as_json else "encoding video and reading the prompt")
    try:
        answer = engine.answer(clip, question, on_text=None if as_json else printer, timings=timings)
    finally:
        printer.stop()
    timings = answer.timings
    timings["total"] = time.perf_counter() - run_started  # wall clock: decode overlaps load
    record = {"video": video, "question": question, **answer.record(settings, engine)}
    if as_json:
        console.emit_json(record)
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
        if console.stderr_is_tty():
            console.stderr.print(
                f"[dim]{record['frames']} frames, {record['visual_tokens']} visual tokens, "
                f"RoPE x{record['rope_factor']:g} | load {timings['load']:.1f}s, decode {timings['decode']:.2f}s, "
                f"first token {timings['first_token']:.2f}s, {record['tokens_per_second']:.1f} tok/s[/dim]"
            )
    return 0


_PER_ANSWER = ("answer", "generated_tokens", "tokens_per_second", "prompt_tokens")


def _ask_many(engine, clip, questions: list[str], timings: dict, run_started: float, as_json: bool,
              video: str) -> int:
    from vqa_cli.conversation import Conversation
    from vqa_cli.engine import Answer

    conversation = Conversation.open(engine, clip, " ".join(questions), timings)
    answers = []
    for i, question in enumerate(questions):
        if not as_json:
            sys.stdout.write(("\n" if i else "") + f"Q: {question}\nA: ")
        printer = StreamPrinter(None if as_json else "thinking")
        try:
            turn = conversation.ask(question, keep=False, on_text=None if as_json else printer)
        finally:
            printer.stop()
        if not as_json:
            sys.stdout.write("\n")
            sys.stdout.flush()
        gen = turn.generation
        answers.append({"question": question, "answer": turn.answer, "generated_tokens": gen.tokens,
                        "tokens_per_second": round(gen.tokens_per_second, 3), "prompt_tokens_fed": turn.fed_tokens,
                        "timings": {"first_token": round(gen.first_token, 4), "generate": round(gen.total, 4)}})
    timings["total"] = time.perf_counter() - run_started
    budget = engine.checkpoint.budget(engine.settings, questions, num_frames=len(clip.indices),
                                      plan=conversation.plan)
    shared = Answer("", clip, budget, timings, 0, 0.0).record(engine.settings, engine)
    if as_json:
        console.emit_json({"video": video, "answers": answers,
                           **{k: v for k, v in shared.items() if k not in _PER_ANSWER}})
    return 0
