"""``vqa eval --server URL``: the same records from a running ``vqa serve`` instead of a model loaded here.

``generate`` sends each question as one chat request (the server decodes and encodes the clip; its
feature cache shares that between the questions of a video). ``likelihood`` asks for one token with the
``top_logprobs`` of the first one (at most ``MAX_TOP``): a letter's log-probability is the best of the
returned tokens that spell it; a letter outside the returned tokens cannot be the prediction, and a
question none of whose letters was returned is recorded as unparsed (counted wrong). A local run reads
every letter's log-probability, so its likelihood never fails to parse.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from vqa_cli import console
from vqa_cli.jobs.eval._formats import LETTERS, Format, Item
from vqa_cli.jobs.eval._prompts import Protocol, build
from vqa_cli.jobs.eval._score import Score, Scored, by_generation

MAX_TOP = 20  # the most top_logprobs a vqa server (and OpenAI's API) returns


def likelihood_from_top(top: list[dict], item: Item) -> Scored:
    """The letter with the highest log-probability among the first token's ``top_logprobs`` entries."""
    best: dict[str, float] = {}
    letters = set(LETTERS[: len(item.options)])
    for entry in top:
        token = str(entry.get("token", "")).replace("\u2581", " ").replace("\u0120", " ").strip()
        if token in letters:
            best[token] = max(best.get(token, float("-inf")), float(entry["logprob"]))
    if not best:
        return Scored(None, "", True, True, logprobs={})
    letter = max(best, key=lambda k: best[k])
    return Scored(letter, "", False, True, logprobs={k: round(v, 6) for k, v in sorted(best.items())})


class RemoteEvaluator:
    """``Evaluator``'s interface (``run(groups, sink, progress, stop)``) over a ``client.Client``."""

    def __init__(self, client: Any, mode_settings: list[Any], fmt: Format, protocol: Protocol, score: Score,
                 sids: list[str], done: set[tuple[str, str]] | None = None) -> None:
        self.client, self.settings, self.fmt, self.protocol, self.score = client, mode_settings, fmt, protocol, score
        self.sids, self.done = sids, done or set()

    def _ask(self, settings: Any, group: Any, item: Item) -> tuple[Scored, dict]:
        from vqa_cli.remote.client import request_body

        windowed = replace(settings, start=group.start, end=group.end,
                           max_new_tokens=1 if self.score == "likelihood" else settings.max_new_tokens)
        body = request_body(windowed, group.path, [{"role": "user", "text": build(item, self.fmt, self.protocol)}])
        if self.score == "likelihood":
            body.update(logprobs=True, top_logprobs=MAX_TOP)
        answer = self.client.chat(body)
        if self.score == "likelihood":
            content = (answer.get("logprobs") or {}).get("content") or [{}]
            return likelihood_from_top(content[0].get("top_logprobs") or [], item), answer.get("vqa") or {}
        return by_generation(answer["text"].strip(), item, self.fmt, self.protocol), answer.get("vqa") or {}

    def run(self, groups: list[Any], sink: Any, progress: Any = None, stop: Any = None) -> int:
        from vqa_cli.jobs.eval._run import question_record

        written = 0
        for group in groups:
            if stop is not None and stop.stop:
                break
            for m, settings in enumerate(self.settings):
                for item in group.items:
                    if (self.sids[m], item.qid) in self.done:
                        continue
                    started = time.perf_counter()
                    try:
                        scored, vqa = self._ask(settings, group, item)
                        rec = question_record(item, group, settings, self.sids[m], self.fmt, self.protocol,
                                              self.score, scored, frames=vqa.get("frames") or 0,
                                              timings={"answer": time.perf_counter() - started})
                    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                        from vqa_cli.remote.client import ServerUnavailableError

                        if isinstance(exc, ServerUnavailableError):
                            raise
                        rec = question_record(item, group, settings, self.sids[m], self.fmt, self.protocol,
                                              self.score, None, error=exc)
                        console.info(f"{rec['video']} ({rec['qid']}): {rec['error']}")
                    sink.write(rec)
                    written += 1
            if progress is not None:
                progress()
        return written
