"""``vqa eval``: the run. The benchmark read, its questions grouped by clip (``_evaluate``), answered by a model
loaded here or a server (``backend``), resumed and written through the harness as caption's records are: checked
before anything loads, locked, one appended line per question, resumed by (``settings_id``, question id), a
cut-off last line repaired; the summary and the table of the modes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from vqa_cli import console
from vqa_cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, UsageError
from vqa_cli.jobs.backend import Backend, backend_for
from vqa_cli.jobs.eval._evaluate import Group, group_items
from vqa_cli.jobs.eval._files import describe_left_out, read_benchmark
from vqa_cli.jobs.eval._formats import Format, Item
from vqa_cli.jobs.eval._layout import VideoFinder
from vqa_cli.jobs.eval._prompts import DEFAULT_PROTOCOL, Protocol, answer_prefix, build
from vqa_cli.jobs.eval._published import published
from vqa_cli.jobs.eval._score import DEFAULT_SCORE, Score
from vqa_cli.jobs.eval._stats import summarize
from vqa_cli.jobs.harness import Processes, StopFlag, earlier, processes
from vqa_cli.jobs.inputs import in_shard, parse_shard
from vqa_cli.model import reduction
from vqa_cli.output import records, writer
from vqa_cli.settings import DEFAULT_WORKERS

if TYPE_CHECKING:
    from vqa_cli.settings import RunSettings

EVAL_MAX_NEW_TOKENS = 16  # lmms-eval's generation length for these benchmarks


def eval_sid(settings: RunSettings, fmt: Format, protocol: Protocol, score: Score) -> str:
    return records.settings_id(settings.identity(), f"eval:{fmt}:{protocol}:{score}")


def latest(recs: list[dict], sid: str) -> list[dict]:
    """The last record of each question under ``sid`` (a retried error is replaced by its later record)."""
    by_q: dict[str, dict] = {}
    for r in recs:
        if r.get("settings_id") == sid and "qid" in r:
            if r["qid"] not in by_q or r.get("error") is None or by_q[r["qid"]].get("error") is not None:
                by_q[r["qid"]] = r
    return list(by_q.values())


def run_eval(settings_per_mode: list[RunSettings], annotations: str, fmt: Format | str, videos: str, *,
             out: str = "-", summary_path: str | None = None, protocol: Protocol = DEFAULT_PROTOCOL,
             score: Score = DEFAULT_SCORE, shard: str | None = None, workers: int = DEFAULT_WORKERS,
             json_out: bool = False, server: str | None = None, model_given: bool = True, answers: str | None = None,
             video_map: str | None = None) -> int:
    """The whole command; the exit code (0 all answered, 1 some questions failed, 130 interrupted).

    ``fmt``: a format, or ``"auto"`` to tell it from the file (said on stderr); ``answers``: EgoSchema's
    answers file; ``video_map``: NExT-QA's map (both found beside the annotations when not given).

    ``server``: a ``vqa serve`` URL that answers instead of a model loaded here (``model_given``: whether
    --model was named, which must then be the server's). Under ``accelerate launch`` each process takes a
    share of the videos, writes its own part file, and the main process merges the parts into ``out``."""
    if any(s.mode.guide for s in settings_per_mode):
        raise UsageError("vqa eval does not take --guide: guided pooling depends on each question, so the "
                         "questions of a video could not share its visual tokens")
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    backend = backend_for(server, model_given)
    bench = read_benchmark(annotations, fmt, answers=answers, video_map=video_map)
    fmt = bench.format
    if bench.detected:
        console.info(f"vqa eval: {bench.detected}")
    if bench.left_out:
        console.info(f"vqa eval: left out {describe_left_out(bench.left_out)} (the summary's left_out)")
    items = bench.items
    share = parse_shard(shard)
    if share:
        items = [it for it in items if in_shard(it.video, *share)]
    if answer_prefix(fmt, protocol):
        backend.require_local(f"the {protocol} {fmt} protocol starts the answer with {answer_prefix(fmt, protocol)!r}"
                              ", which a server cannot prefill: use --protocol lmms-eval, or a model loaded here")
    settings_per_mode = [backend.settle(s) for s in settings_per_mode]
    sids = [eval_sid(s, fmt, protocol, score) for s in settings_per_mode]
    base = settings_per_mode[0]
    finder = VideoFinder(videos)
    inputs = [g.path for g in group_items(items, finder)] + bench.files
    procs = processes(out)
    items = procs.share(items, lambda it: it.video)
    settings_per_mode = procs.on_device(settings_per_mode)
    groups = group_items(items, finder, base.start, base.end)
    writer.check_run_outputs(out, procs.target, summary_path, inputs, kind="eval")
    started = time.perf_counter()
    with procs.locked():
        this_run, interrupted = _evaluate_locked(backend, settings_per_mode, items, groups, fmt, protocol, score,
                                                 sids, procs, workers)
        procs.merge(question_key)
        all_recs = writer.read_records(out) if out != "-" and procs.main else this_run
    if not procs.main:  # the main process reports the merged run
        return EXIT_INTERRUPTED if interrupted else EXIT_FAILURE if any(r["error"] for r in this_run) else EXIT_OK
    summary = build_summary(all_recs, settings_per_mode, sids, fmt, protocol, score, time.perf_counter() - started)
    summary["interrupted"] = interrupted
    summary["left_out"] = bench.left_out
    if summary_path:
        writer.write_json(summary_path, summary)
    if json_out:
        console.emit_json(summary)
    else:
        _table(summary, to_stdout=out != "-")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if summary["errors"] else EXIT_OK


def _evaluate_locked(backend: Backend, settings_per_mode: list[RunSettings], items: list[Item], groups: list[Group],
                     fmt: Format, protocol: Protocol, score: Score, sids: list[str], procs: Processes,
                     workers: int) -> tuple[list[dict], bool]:
    """Resume, load, answer what is left into the target: this run's records and whether it was interrupted.
    The model loads before anything is written: a broken checkpoint leaves the output untouched."""
    this_run: list[dict] = []
    existing, done_before = earlier(procs.target, procs.out)
    done = {(r["settings_id"], r.get("qid")) for r in done_before if r.get("error") is None}
    if not any((sid, it.qid) not in done for g in groups for it in g.items for sid in sids):
        return this_run, False
    prompts = [build(it, fmt, protocol) for it in items] or ["?"]
    evaluator = backend.evaluator(settings_per_mode, fmt, protocol, score, sids, done, workers, prompts)
    if procs.target != "-":
        writer.repair(procs.target, existing)

    class _Sink:
        def __init__(self, inner: writer.JsonlWriter | None) -> None:
            self.inner = inner

        def write(self, rec: dict) -> None:
            if self.inner is not None:
                self.inner.write(rec)
            else:
                console.emit_json(rec)
            this_run.append(rec)

    progress = console.progress("videos")
    with (progress, StopFlag() as flag,
          (writer.JsonlWriter(procs.target) if procs.target != "-" else _null()) as sink):
        task = progress.add_task("evaluating", total=len(groups)) if progress else None
        evaluator.run(groups, _Sink(sink), (lambda: progress.advance(task, 1)) if progress else None, flag)
    return this_run, flag.stop


def question_key(rec: dict) -> tuple:
    """What one eval record answers: a question under one settings id (a video has several questions)."""
    return rec.get("settings_id"), rec.get("qid")


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def build_summary(all_recs: list[dict], settings_per_mode: list[RunSettings], sids: list[str], fmt: Format,
                  protocol: Protocol, score: Score, seconds: float) -> dict:
    """The run's summary: the first setting's figures at the top, every setting's under ``modes`` (by its mode's name,
    with its reduction when it has one: ``reduction.label``)."""
    modes: dict[str, dict] = {}
    for s, sid in zip(settings_per_mode, sids, strict=True):
        recs = latest(all_recs, sid)
        part = summarize(recs)
        part["settings_id"] = sid
        part["reduction"] = reduction.described(s.mode)
        if s.subtitles != "off":  # the videos whose subtitles were the transcript of their speech (no subtitle file)
            part["transcribed_videos"] = len({r["video"] for r in recs if r.get("transcript")})
        part["published"] = published(s.model, fmt, subtitles=s.subtitles != "off")
        modes[reduction.label(s.mode)] = part
    first = modes[reduction.label(settings_per_mode[0].mode)]
    processed = sum(m["questions"] + m["errors"] for m in modes.values())
    return {**first, "format": fmt, "protocol": protocol, "score": score, "model": settings_per_mode[0].model,
            "mode": settings_per_mode[0].mode.name, "modes": modes, "seconds": round(seconds, 3),
            # the keys every vqa --summary has (writer.SUMMARY_KEYS): counted in questions
            "processed": processed, "ok": processed - sum(m["errors"] for m in modes.values()),
            "errors": sum(m["errors"] for m in modes.values())} | {"videos": first["videos"]}


def _table(summary: dict, to_stdout: bool = True) -> None:
    """The side-by-side table of the modes: rich on a terminal, tab-separated in a pipe; on stderr when the
    records themselves go to stdout."""
    header = ["mode", "accuracy %", "95% CI", "category mean %", "n", "unparsed", "published %"]
    rows = []
    for name, m in summary["modes"].items():
        lo, hi = m["ci95"]
        p = m.get("published")
        mean = m.get("category_mean")
        rows.append([name, f"{100 * m['accuracy']:.1f}", f"[{100 * lo:.1f}, {100 * hi:.1f}]",
                     "-" if mean is None else f"{100 * mean:.1f}", str(m["n"]), str(m["unparsed"]),
                     f"{p['accuracy']} ({'category mean, ' if p['metric'] == 'category_mean' else ''}{p['source']})"
                     if p else "-"])
    heard = summary.get("transcribed_videos")
    if heard:
        console.info(f"subtitles: the transcript of the speech for {heard} of {summary['videos']} videos "
                     "(no subtitle file)")
    if to_stdout:
        console.table(header, rows, caption=f"{summary['format']} ({summary['protocol']}, {summary['score']})")
    else:
        for row in [header, *rows]:
            console.info("\t".join(row))
