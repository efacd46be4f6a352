"""``vqa ask``: one video, one or more questions, the answers streamed (or one JSON object)."""

from __future__ import annotations

import sys
import time

from vqa_cli import console, records
from vqa_cli.session import Session, check_input, open_session, plan_model


def plan_record(checkpoint, settings, budget) -> dict:
    """``--plan``: the request's frames, tokens, RoPE factor and memory, for the device it names (which
    this machine may lack: a plan for a GPU can be made on a laptop)."""
    from vqa_cli import loading, plan

    device = loading.resolve_device(settings.device, planning=True)
    quant = loading.resolve_quant(settings.quant, device)
    dtype = loading.resolve_dtype(settings.dtype, device, planning=True)
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
    rows = [("model", f"{record['model']} ({record['family']})"),
            ("mode", f"{record['mode']}, {record['frames']} frames")]
    for p in record["pathways"]:
        grid = "x".join(str(x) for x in p["grid"])
        rows.append((f"  {p['name']}", f"{len(p['frames'])} frames, grid {grid}: {p['tokens']} tokens"))
    mem = record["memory"]
    rows += [
        ("visual tokens", f"{record['visual_tokens']}"),
        ("prompt tokens", f"{record['prompt_tokens']} (+ {record['max_new_tokens']} new)"),
        ("context", f"{record['total_tokens']} of {record['trained_context']} trained"
                    f" -> RoPE factor {record['rope_factor']:g}"),
        ("memory", f"{mem['weights_gib']:.2f} GiB weights ({record['quant']}, {record['dtype']})"
                   f" + {mem['kv_cache_gib']:.2f} GiB KV cache = {mem['total_gib']:.2f} GiB"),
    ]
    console.fields(rows)


def run_ask(settings, video: str, questions: list[str], *, as_json: bool = False, plan_only: bool = False) -> int:
    """One question: streamed answer. Several: one video encode and one shared prefill, then each question."""
    run_started = time.perf_counter()
    if plan_only:
        from vqa_cli.video import is_image_path

        check_input(video)
        checkpoint, budget = plan_model(settings, questions, num_frames=1 if is_image_path(video) else None)
        print_plan(plan_record(checkpoint, settings, budget), as_json)
        return 0
    session = open_session(settings, video, questions)
    if len(questions) > 1:
        return _ask_many(session, video, questions, run_started, as_json)

    engine, question = session.engine, questions[0]
    printer = console.StreamPrinter(None if as_json else "encoding video and reading the prompt")
    try:
        answer = engine.answer(session.clip, question, on_text=None if as_json else printer, timings=session.timings)
    finally:
        printer.stop()
    timings = answer.timings
    timings["total"] = time.perf_counter() - run_started  # wall clock: decode overlaps load
    record = records.ask_record(video, question, answer.record(engine))
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


def _ask_many(session: Session, video: str, questions: list[str], run_started: float, as_json: bool) -> int:
    from vqa_cli.conversation import Conversation

    engine, clip, timings = session.engine, session.clip, session.timings
    conversation = Conversation.open(engine, clip, " ".join(questions), timings)
    answers = []
    for i, question in enumerate(questions):
        if not as_json:
            sys.stdout.write(("\n" if i else "") + f"Q: {question}\nA: ")
        printer = console.StreamPrinter(None if as_json else "thinking")
        try:
            turn = conversation.ask(question, keep=False, on_text=None if as_json else printer)
        finally:
            printer.stop()
        if not as_json:
            sys.stdout.write("\n")
            sys.stdout.flush()
        answers.append(records.question_record(turn))
    timings["total"] = time.perf_counter() - run_started
    budget = engine.checkpoint.budget(engine.settings, questions, num_frames=len(clip.indices),
                                      plan=conversation.plan)
    if as_json:
        console.emit_json(records.answers_record(video, answers, engine, clip, budget, timings))
    return 0
