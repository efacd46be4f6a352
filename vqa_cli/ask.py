"""``vqa ask``: one video, one question, the answer streamed (or one JSON object)."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vqa_cli import console
from vqa_cli.errors import InputNotFoundError
from vqa_cli.video import Clip, is_image_path, probe, sample_frames


def check_input(path: str) -> None:
    """Usage errors for a missing path or a folder, then a one-frame probe so a broken file fails
    before any model loads."""
    if not Path(path).exists():
        raise InputNotFoundError(f"no such file: {path!r}")
    if Path(path).is_dir():
        raise InputNotFoundError(f"{path!r} is a directory: `vqa ask` takes one video (see `vqa caption`)")
    probe(path)


def decode(path: str, frames: int, start: float | None, end: float | None) -> tuple[Clip, float]:
    started = time.perf_counter()
    clip = sample_frames(path, frames, start=start, end=end)
    return clip, time.perf_counter() - started


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


def run_ask(settings, video: str, question: str, *, as_json: bool = False, plan_only: bool = False) -> int:
    from vqa_cli.engine import Checkpoint, Engine

    run_started = time.perf_counter()
    check_input(video)
    with console.status("reading model config"):
        checkpoint = Checkpoint(settings.model)
        # A still image is one frame: budget (and pick the RoPE factor) for that, not the mode's default.
        budget = checkpoint.budget(settings, [question], num_frames=1 if is_image_path(video) else None)
    if plan_only:
        print_plan(plan_record(checkpoint, settings, budget), as_json)
        return 0

    frames = budget.plan.frames
    # Frames decode on a worker thread while the weights load: OpenCV releases the GIL.
    with ThreadPoolExecutor(max_workers=1) as pool:
        decoding = pool.submit(decode, video, frames, settings.start, settings.end)
        with console.status(f"loading {settings.model}"):
            started = time.perf_counter()
            engine = Engine(checkpoint, settings, budget.rope_factor)
            load_seconds = time.perf_counter() - started
        with console.status(f"decoding {frames} frames"):
            clip, decode_seconds = decoding.result()

    streaming = not as_json
    pieces: list[str] = []
    thinking = console.spinner("encoding video and reading the prompt")

    def on_text(text: str) -> None:
        if not pieces:
            thinking.stop()
            text = text.lstrip()
        pieces.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    timings = {"load": load_seconds, "decode": decode_seconds}
    try:
        answer = engine.answer(clip, question, on_text=on_text if streaming else None, timings=timings)
    finally:
        thinking.stop()
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
