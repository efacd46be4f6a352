"""``vqa ask``: one video, one or more questions, the answers streamed (or one JSON object)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from vqa_cli import console
from vqa_cli.jobs.backend import backend_for
from vqa_cli.jobs.segments import settle_subtitles
from vqa_cli.model.session import check_input, fit_settings, plan_model

if TYPE_CHECKING:
    from vqa_cli.settings import RunSettings


def plan_record(checkpoint, settings, budget, *, fitted=None, probe=None) -> dict:
    """``--plan``: the request's frames, tokens, RoPE factor and memory (the peak estimate, the placement with
    ``--max-memory``, and what this machine has), for the device it names (which this machine may lack: a
    plan for a GPU can be made on a laptop). ``fitted``: what ``--fit`` chose."""
    from vqa_cli.model import fit, machine

    checked = fit.measure(checkpoint, settings, budget, probe or machine.probe_memory)
    record = {
        "model": settings.model,
        "family": checkpoint.adapter.name,
        **budget.to_dict(),
        "device": checked.target.device,
        "quant": checked.target.quant,
        "dtype": checked.target.dtype_name,
        "memory": {**checked.estimate.to_dict(), **checked.to_dict()},
    }
    if fitted is not None:
        record["fit"] = fitted.to_dict()
    return record


def print_plan(record: dict, as_json: bool) -> None:
    if as_json:
        console.emit_json(record)
        return
    rows = [("model", f"{record['model']} ({record['family']})"),
            ("mode", f"{record['mode']}, {record['frames']} frames")]
    for p in record["pathways"]:
        grid = "x".join(str(x) for x in p["grid"])
        before = f"{p['tokens_before']} -> " if "tokens_before" in p else ""
        rows.append((f"  {p['name']}", f"{len(p['frames'])} frames, grid {grid}: {before}{p['tokens']} tokens"))
    mem = record["memory"]
    rows += [
        *([("reduction", f"{record['reduce']}, keep {record['keep']:.4g}: {record['visual_tokens_before']} -> "
                         f"{record['visual_tokens']} visual tokens")] if record.get("reduce") else []),
        ("visual tokens", f"{record['visual_tokens']}"),
        ("prompt tokens", f"{record['prompt_tokens']} (+ {record['max_new_tokens']} new)"),
        *([("subtitles", f"up to {record['subtitle_tokens']} tokens (counted with the new tokens)")]
          if record.get("subtitle_tokens") else []),
        ("context", f"{record['total_tokens']} of {record['trained_context']} trained"
                    f" -> RoPE factor {record['rope_factor']:g}"),
        ("memory", f"{mem['weights_gib']:.2f} GiB weights ({record['quant']}, {record['dtype']})"
                   f" + {mem['kv_cache_gib']:.2f} GiB KV cache = {mem['total_gib']:.2f} GiB"),
    ]
    rows += _memory_rows(record)
    console.fields(rows)


def _memory_rows(record: dict) -> list[tuple[str, str]]:
    """The peak, the placement, what the device has and what --fit chose, for ``--plan``."""
    from vqa_cli.model.weights.placement import describe_placement

    mem = record["memory"]
    extra = f" + {mem['guide_gib']:.2f} GiB guide model" if mem["guide_gib"] else ""
    rows = [("peak", f"{mem['peak_gib']:.2f} GiB (+ {mem['activations_gib']:.2f} GiB activations{extra}"
                     f" + {mem['runtime_gib']:.2f} GiB runtime)")]
    if mem["placement"]:
        rows.append(("placement", describe_placement(mem["placement_bytes"])))
    if mem.get("max_memory"):
        rows.append(("--max-memory", _cap_verdict(mem)))
    if mem.get("disk_gib") and mem.get("offload_dir"):
        rows.append(("offload", f"{mem['disk_gib']:.2f} GiB of weights on disk ({mem['offload_dir']}): read from "
                                "it again for every generated token"))
    have = mem["available_gib"].get(mem["device"])
    if have is not None:
        where = "available" if mem["device"] == "cpu" else f"free on {mem['device']}"
        verdict = "fits" if mem["fits"] else "does not fit"
        if mem.get("max_memory_fits") is False:
            verdict = "does not fit its --max-memory"
        rows.append(("this machine", f"{have:.2f} GiB {where}: {verdict}"))
    else:
        rows.append(("this machine", f"no {mem['device']} here: not checked"))
    if "fit" in record:
        fit = record["fit"]
        rows.append(("--fit", f"{fit['frames']} frames in --mode {fit['mode']}"
                              + ("" if fit["changed"] else " (as asked)")))
    return rows


def _cap_verdict(mem: dict) -> str:
    """``--plan``'s verdict on ``--max-memory`` (the placement the load will use, against the caps)."""
    from vqa_cli.model.weights.placement import describe_placement

    caps = describe_placement(mem["max_memory"])
    if mem["max_memory_fits"]:
        return f"{caps}: fits"
    smallest = mem.get("max_memory_smallest")
    return f"{caps}: does not fit" + (f" (the smallest that fits is --max-memory {smallest})" if smallest else "")


def run_ask(settings: RunSettings, video: str, questions: list[str], *, as_json: bool = False,
            plan_only: bool = False, server: str | None = None, model_given: bool = True) -> int:
    """One question: streamed answer. Several: one video encode and one shared prefill, then each question.

    ``server``: a ``vqa serve`` URL to send the questions to instead (``client``), same output."""
    run_started = time.perf_counter()
    backend = backend_for(server, model_given)
    settings = settle_subtitles(settings, [video])
    if settings.segments != "none":
        backend.require_local("--segments runs on a model loaded here: drop --server (subtitles work with it)")
    if plan_only:
        backend.require_local("--plan reads the model's files here: drop --server")
        return _plan(settings, video, questions, as_json)
    settings = backend.settle(settings)
    return backend.ask(settings, video, questions, as_json=as_json, started=run_started)


def _plan(settings: RunSettings, video: str, questions: list[str], as_json: bool) -> int:
    """``--plan``: what the request needs, read from the model's files here; nothing loads."""
    from vqa_cli.jobs.segments import subtitle_reserve
    from vqa_cli.video import is_image_path

    check_input(video)
    still = is_image_path(video)
    settings, fitted = fit_settings(replace(settings, fit=settings.fit and not still), questions)
    reserve = subtitle_reserve(settings)
    checkpoint, budget = plan_model(settings, questions, num_frames=1 if still else None, reserve=reserve)
    print_plan({**plan_record(checkpoint, settings, budget, fitted=fitted), "subtitle_tokens": reserve}, as_json)
    return 0
