"""``vqa eval``: the pipeline. Questions are grouped by clip (video and bounds); each clip is decoded once
(per frame count its modes need, ahead on worker threads), encoded once, then every mode aggregates the
same vision features, prefills the shared prompt prefix once (``conversation.Conversation``) and asks
each question with the cache cropped back after it.

Results go through ``writer`` as caption's do: checked before anything loads, locked, one appended line
per question, resumed by (``settings_id``, question id), a cut-off last line repaired.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vqa_cli import console
from vqa_cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, INTERNAL, UsageError, bug_text, describe
from vqa_cli.jobs.eval._files import describe_left_out, read_benchmark
from vqa_cli.jobs.eval._formats import Format, Item
from vqa_cli.jobs.eval._layout import VideoFinder
from vqa_cli.jobs.eval._prompts import DEFAULT_PROTOCOL, Protocol, answer_prefix, build
from vqa_cli.jobs.eval._published import published
from vqa_cli.jobs.eval._score import DEFAULT_SCORE, Score, Scored, by_generation, by_likelihood
from vqa_cli.jobs.eval._stats import summarize
from vqa_cli.jobs.inputs import in_shard, parse_shard
from vqa_cli.output import records, writer
from vqa_cli.settings import DEFAULT_WORKERS

EVAL_MAX_NEW_TOKENS = 16  # lmms-eval's generation length for these benchmarks


@dataclass(frozen=True)
class Group:
    """The questions about one clip: a video file (or a folder of numbered frames at ``frame_rate``) and its
    bounds."""

    path: str
    start: float | None
    end: float | None
    items: tuple[Item, ...]
    frame_rate: float | None = None


def group_items(items: list[Item], videos: str | VideoFinder, start: float | None = None,
                end: float | None = None) -> list[Group]:
    """Questions grouped by (video, bounds), in the order the clips first appear; an item's own bounds win.
    ``videos``: the ``--videos`` folder (searched as ``VideoFinder`` does)."""
    finder = videos if isinstance(videos, VideoFinder) else VideoFinder(videos)
    groups: OrderedDict[tuple, list[Item]] = OrderedDict()
    for it in items:
        key = (finder.find(it), it.start if it.start is not None else start,
               it.end if it.end is not None else end)
        groups.setdefault(key, []).append(it)
    return [Group(p, s, e, tuple(its), its[0].frame_rate) for (p, s, e), its in groups.items()]


def eval_sid(settings: Any, fmt: Format, protocol: Protocol, score: Score) -> str:
    return records.settings_id(settings.identity(), f"eval:{fmt}:{protocol}:{score}")


def question_record(item: Item, group: Group, settings: Any, sid: str, fmt: Format, protocol: Protocol,
                    score: Score, scored: Scored | None, *, frames: int = 0, timings: dict | None = None,
                    error: BaseException | None = None) -> dict:
    """One JSON Lines record per question (an error record has every field, empty where nothing is known)."""
    known = describe(error) if error is not None else None
    return {
        "video": group.path, "qid": item.qid, "question": item.question, "options": list(item.options),
        "answer": item.answer_letter, "prediction": scored.prediction if scored else None,
        "raw_answer": scored.raw if scored else None,
        "correct": bool(scored and scored.prediction == item.answer_letter),
        "unparsed": bool(scored and scored.unparsed), "guessed": bool(scored and scored.guessed),
        "counted": bool(scored and scored.counted), "letter_logprobs": scored.logprobs if scored else None,
        "category": item.category, "task": item.task, "duration": item.duration, "start": group.start,
        "end": group.end, "format": fmt, "protocol": protocol, "score": score, "model": settings.model,
        "mode": settings.mode.name, "frames": frames, "timings": {k: round(v, 4) for k, v in (timings or {}).items()},
        "error": None if error is None else (known[2] if known else bug_text(error)),
        "error_kind": None if error is None else (known[1] if known else INTERNAL), "settings_id": sid,
    }


def _decode(group: Group, settings: Any, frames: int, engine: Any) -> tuple[Any, Any, dict]:
    from vqa_cli.model.engine import sample_clip

    if group.frame_rate is not None:  # a folder of numbered frames (MVBench's episodic_reasoning)
        from vqa_cli.video._frames_dir import sample_frame_folder

        began = time.perf_counter()
        count = {"fps": settings.fps, "max_frames": frames} if settings.fps else {"num_frames": frames}
        clip = sample_frame_folder(group.path, start=group.start, end=group.end, timeout=600.0,
                                   rate=group.frame_rate, **count)
        seconds = time.perf_counter() - began
    else:
        clip, seconds = sample_clip(group.path, replace(settings, start=group.start, end=group.end), frames,
                                    timeout=600.0)
    started = time.perf_counter()
    pixels = engine.pixels(clip)
    return clip, pixels, {"decode": seconds, "preprocess": time.perf_counter() - started}


def prefixed_conversation(view: Any, clip: Any, features: Any, prefix: str) -> Any:
    """A ``conversation.Conversation`` whose every prompt ends with ``prefix``'s tokens after the assistant
    header (the answer prefix some protocols prefill), or a plain one when ``prefix`` is empty."""
    from vqa_cli.model.conversation import Conversation

    if not prefix:
        return Conversation(view, clip, features)
    extra = view.checkpoint.tokenizer.encode(prefix, add_special_tokens=False)

    class Prefixed(Conversation):
        def ids_for(self, messages: list[dict]) -> list[int]:
            return super().ids_for(messages) + extra

    return Prefixed(view, clip, features)


class Evaluator:
    """Answers the questions of clip groups in one or several modes over one loaded model."""

    def __init__(self, engine: Any, mode_settings: list[Any], fmt: Format, protocol: Protocol, score: Score,
                 sids: list[str], done: set[tuple[str, str]] | None = None,
                 workers: int = DEFAULT_WORKERS) -> None:
        self.fmt, self.protocol, self.score, self.sids = fmt, protocol, score, sids
        self.done = done or set()
        self.workers = workers
        tokens = 1 if score == "likelihood" else None
        self.views = [engine.with_settings(replace(s, max_new_tokens=tokens or s.max_new_tokens))
                      for s in mode_settings]
        self.frames = [engine.checkpoint.frames_for(s) for s in mode_settings]
        self.settings = mode_settings

    def subtitles(self, view: Any, group: Group, clip: Any) -> str:
        """The cues on screen at the clip's sampled frames, under Video-MME's header ("" without ``--subtitles``)."""
        choice = view.settings.subtitles
        if choice == "off":
            return ""
        from vqa_cli.jobs.eval._prompts import VIDEOMME_SUBTITLES
        from vqa_cli.jobs.segments import token_counter
        from vqa_cli.output import subtitles

        if Path(choice).is_dir():  # a folder of VIDEO.srt / VIDEO.vtt files, as Video-MME ships them
            named = [Path(choice) / f"{Path(group.path).stem}{ext}" for ext in (".srt", ".vtt")]
            found = [path for path in named if path.is_file()]
            if not found:
                return ""
            choice = str(found[0])
        text, _ = subtitles.context(group.path, choice, clip.timestamps, token_counter(view),
                                    header=VIDEOMME_SUBTITLES, encoding=view.settings.subtitle_encoding)
        return text

    def todo(self, group: Group, m: int) -> list[Item]:
        return [it for it in group.items if (self.sids[m], it.qid) not in self.done]

    def answer_group(self, group: Group, decoded: dict[int, Any]) -> Iterator[dict]:
        """Records of ``group``'s open questions in every mode; ``decoded``: frame count -> (clip, pixels, timings)
        or the exception decoding raised."""
        encoded: dict[int, Any] = {}
        for m, view in enumerate(self.views):
            items = self.todo(group, m)
            if not items:
                continue
            n = self.frames[m]
            try:
                got = decoded[n]
                if isinstance(got, BaseException):
                    raise got
                clip, pixels, timings = got
                timings = dict(timings)
                if n not in encoded:
                    started = time.perf_counter()
                    encoded[n] = view.encode(pixels)
                    timings["encode"] = time.perf_counter() - started
                context = self.subtitles(view, group, clip)
                prompts = [build(it, self.fmt, self.protocol, context) for it in items]
                _, features = view.budgeted_tokens(clip, max(prompts, key=len), timings, frames=encoded[n])
                conversation = prefixed_conversation(view, clip, features, answer_prefix(self.fmt, self.protocol))
                started = time.perf_counter()
                conversation.prefill()
                timings["prefill"] = time.perf_counter() - started
            except Exception as exc:  # a clip that fails: every question about it gets an error record
                for it in items:
                    yield question_record(it, group, self.settings[m], self.sids[m], self.fmt, self.protocol,
                                          self.score, None, error=exc)
                continue
            for it, text in zip(items, prompts, strict=True):
                started = time.perf_counter()
                try:
                    turn = conversation.ask(text, keep=False, first_logits=self.score == "likelihood")
                except Exception as exc:
                    yield question_record(it, group, self.settings[m], self.sids[m], self.fmt, self.protocol,
                                          self.score, None, error=exc)
                    continue
                if self.score == "likelihood":
                    scored = by_likelihood(turn.first_logits, view.checkpoint.tokenizer, it)
                else:
                    read = answer_prefix(self.fmt, self.protocol)[-1:] + turn.answer.strip()  # "(" + "A) ..."
                    scored = by_generation(read, it, self.fmt, self.protocol)
                yield question_record(it, group, self.settings[m], self.sids[m], self.fmt, self.protocol, self.score,
                                      scored, frames=len(clip.indices),
                                      timings={**timings, "answer": time.perf_counter() - started})
                timings = {}  # the shared stages are counted on a clip's first question only

    def run(self, groups: list[Group], sink: Any, progress: Any = None, stop: Any = None) -> int:
        """Decode ahead on worker threads while the model answers; how many records were written."""
        groups = [g for g in groups if any(self.todo(g, m) for m in range(len(self.views)))]
        counts = sorted(set(self.frames))
        window = self.workers + 1
        written = 0
        from vqa_cli.jobs.caption import _lower_priority, _model_threads

        # As in caption: niced decode workers, and a model on the CPU leaves them a core.
        with (ThreadPoolExecutor(max_workers=self.workers, initializer=_lower_priority) as pool,
              _model_threads(self.views[0])):
            queue = iter(groups)
            pending: list[tuple[Group, dict[int, Future]]] = []

            def refill() -> None:
                while len(pending) < window:
                    g = next(queue, None)
                    if g is None:
                        return
                    pending.append((g, {n: pool.submit(_decode, g, self.settings[0], n, self.views[0])
                                        for n in counts}))

            refill()
            while pending and not (stop and stop.stop):
                group, futures = pending.pop(0)
                refill()
                decoded: dict[int, Any] = {}
                for n, fut in futures.items():
                    try:
                        decoded[n] = fut.result()
                    except Exception as exc:
                        decoded[n] = exc
                for rec in self.answer_group(group, decoded):
                    sink.write(rec)
                    written += 1
                    if rec["error"] is not None:
                        console.info(f"{rec['video']} ({rec['qid']}): {rec['error']}")
                if progress is not None:
                    progress()
            for _, futures in pending:
                for fut in futures.values():
                    fut.cancel()
        return written


def latest(recs: list[dict], sid: str) -> list[dict]:
    """The last record of each question under ``sid`` (a retried error is replaced by its later record)."""
    by_q: dict[str, dict] = {}
    for r in recs:
        if r.get("settings_id") == sid and "qid" in r:
            if r["qid"] not in by_q or r.get("error") is None or by_q[r["qid"]].get("error") is not None:
                by_q[r["qid"]] = r
    return list(by_q.values())


def run_eval(settings_per_mode: list[Any], annotations: str, fmt: Format | str, videos: str, *, out: str = "-",
             summary_path: str | None = None, protocol: Protocol = DEFAULT_PROTOCOL,
             score: Score = DEFAULT_SCORE,
             shard: str | None = None, workers: int = DEFAULT_WORKERS, json_out: bool = False,
             server: str | None = None,
             model_given: bool = True, answers: str | None = None, video_map: str | None = None) -> int:
    """The whole command; the exit code (0 all answered, 1 some questions failed, 130 interrupted).

    ``fmt``: a format, or ``"auto"`` to tell it from the file (said on stderr); ``answers``: EgoSchema's
    answers file; ``video_map``: NExT-QA's map (both found beside the annotations when not given).

    ``server``: a ``vqa serve`` URL that answers instead of a model loaded here (``model_given``: whether
    --model was named, which must then be the server's). Under ``accelerate launch`` each process takes a
    share of the videos, writes its own part file, and the main process merges the parts into ``out``."""
    from vqa_cli.jobs.caption import _distributed

    if any(s.mode.guide for s in settings_per_mode):
        raise UsageError("vqa eval does not take --guide: guided pooling depends on each question, so the "
                         "questions of a video could not share its visual tokens")
    if workers < 1:
        raise UsageError("--workers must be at least 1")
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
    remote = None
    if server:
        from vqa_cli.remote.client import connect

        if answer_prefix(fmt, protocol):
            raise UsageError(f"the {protocol} {fmt} protocol starts the answer with {answer_prefix(fmt, protocol)!r}, "
                             "which a server cannot prefill: use --protocol lmms-eval, or a model loaded here")

        connected = [connect(server, s, model_given=model_given) for s in settings_per_mode]
        remote = connected[0][0]
        settings_per_mode = [s for _, s in connected]
    sids = [eval_sid(s, fmt, protocol, score) for s in settings_per_mode]
    base = settings_per_mode[0]
    finder = VideoFinder(videos)
    inputs = [g.path for g in group_items(items, finder)] + bench.files
    state = _distributed()
    target = out
    if state is not None:
        if out == "-":
            raise UsageError("with several processes, --out must be a file (each process writes a part)")
        items = [it for it in items if in_shard(it.video, state.process_index, state.num_processes, salt="process:")]
        target = writer.part_path(out, state.process_index, state.num_processes)
        if all(s.device in (None, "auto", "cuda") for s in settings_per_mode) and state.device.type == "cuda":
            settings_per_mode = [replace(s, device=str(state.device)) for s in settings_per_mode]
    groups = group_items(items, finder, base.start, base.end)
    writer.check_run_outputs(out, target, summary_path, inputs, kind="eval")
    main = state is None or state.is_main_process
    started = time.perf_counter()
    with writer.locked(target), writer.locked(out if main and target != out else "-"):
        this_run, interrupted = _evaluate_locked(settings_per_mode, items, groups, fmt, protocol, score, sids, out,
                                                 target, remote, workers)
        if state is not None:
            state.wait_for_everyone()
            if main:
                merge_parts(out, writer.part_paths(out, state.num_processes))
        all_recs = writer.read_records(out) if out != "-" and main else this_run
    if not main:  # the main process reports the merged run
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


def _evaluate_locked(settings_per_mode: list[Any], items: list[Item], groups: list[Group], fmt: Format,
                     protocol: Protocol, score: Score, sids: list[str], out: str, target: str, remote: Any,
                     workers: int) -> tuple[list[dict], bool]:
    """Resume, load, answer what is left into ``target``: this run's records and whether it was interrupted.
    The model loads before anything is written: a broken checkpoint leaves the output untouched."""
    from vqa_cli.jobs.caption import _StopFlag
    from vqa_cli.model.session import open_model

    this_run: list[dict] = []
    existing = writer.read_output(target) if target != "-" else writer.Output()
    earlier = existing.records + (writer.read_records(out) if target != out else [])
    done = {(r["settings_id"], r.get("qid")) for r in earlier if r.get("error") is None}
    if not any((sid, it.qid) not in done for g in groups for it in g.items for sid in sids):
        return this_run, False
    evaluator: Any
    if remote is not None:
        from vqa_cli.jobs.eval._remote import RemoteEvaluator

        evaluator = RemoteEvaluator(remote, settings_per_mode, fmt, protocol, score, sids, done)
    else:
        prompts = [build(it, fmt, protocol) for it in items] or ["?"]
        from vqa_cli.jobs.segments import subtitle_reserve

        session = open_model(settings_per_mode[0], [max(prompts, key=len)],
                             reserve=subtitle_reserve(settings_per_mode[0]))
        evaluator = Evaluator(session.engine, settings_per_mode, fmt, protocol, score, sids, done, workers)
    if target != "-":
        writer.repair(target, existing)

    class _Sink:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def write(self, rec: dict) -> None:
            if self.inner is not None:
                self.inner.write(rec)
            else:
                console.emit_json(rec)
            this_run.append(rec)

    progress = console.progress("videos")
    with progress, _StopFlag() as flag, (writer.JsonlWriter(target) if target != "-" else _null()) as sink:
        task = progress.add_task("evaluating", total=len(groups)) if progress else None
        evaluator.run(groups, _Sink(sink), (lambda: progress.advance(task, 1)) if progress else None, flag)
    return this_run, flag.stop


def merge_parts(out: str, parts: list[str]) -> None:
    """Fold the processes' part files into ``out``: one record per (settings, question), an answer beating an
    error (caption's merge keeps one record per video; here a video has several questions)."""
    recs = writer.read_records(out)
    for part in parts:
        recs.extend(writer.read_records(part))
    merged: dict[tuple, dict] = {}
    for rec in recs:
        key = (rec.get("settings_id"), rec.get("qid"))
        if key not in merged or merged[key].get("error") is not None:
            merged[key] = rec
    writer.rewrite(out, list(merged.values()))
    for part in parts:
        Path(part).unlink(missing_ok=True)


def records_json(obj: Any) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def build_summary(all_recs: list[dict], settings_per_mode: list[Any], sids: list[str], fmt: Format,
                  protocol: Protocol, score: Score, seconds: float) -> dict:
    """The run's summary: the first mode's figures at the top, every mode's under ``modes``."""
    modes: dict[str, dict] = {}
    for s, sid in zip(settings_per_mode, sids, strict=True):
        part = summarize(latest(all_recs, sid))
        part["settings_id"] = sid
        part["published"] = published(s.model, fmt, subtitles=s.subtitles != "off")
        modes[s.mode.name] = part
    first = modes[settings_per_mode[0].mode.name]
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
    if to_stdout:
        console.table(header, rows, caption=f"{summary['format']} ({summary['protocol']}, {summary['score']})")
    else:
        for row in [header, *rows]:
            console.info("\t".join(row))
