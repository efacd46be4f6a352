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
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from vqa_cli.jobs.eval._evaluate import Group, GroupAnswerer, question_record
from vqa_cli.jobs.eval._formats import LETTERS, Format, Item
from vqa_cli.jobs.eval._prompts import Protocol, build
from vqa_cli.jobs.eval._score import Score, Scored, by_generation

if TYPE_CHECKING:
    from vqa_cli.remote.client import Client
    from vqa_cli.settings import RunSettings

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


class RemoteEvaluator(GroupAnswerer):
    """``Evaluator``'s answers from a server: each question one request (in order, one at a time)."""

    def __init__(self, client: Client, mode_settings: list[RunSettings], fmt: Format, protocol: Protocol,
                 score: Score, sids: list[str], done: set[tuple[str, str]] | None = None) -> None:
        self.client, self.settings, self.fmt, self.protocol, self.score = client, mode_settings, fmt, protocol, score
        self.sids, self.done = sids, done or set()

    def _ask(self, settings: RunSettings, group: Group, item: Item) -> tuple[Scored, dict]:
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

    def answer_group(self, group: Group, prepared: object) -> Iterator[dict]:
        from vqa_cli.remote.client import ServerUnavailableError

        for m, settings in enumerate(self.settings):
            for item in self.todo(group, m):
                started = time.perf_counter()
                try:
                    scored, vqa = self._ask(settings, group, item)
                except ServerUnavailableError:
                    raise
                except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                    yield question_record(item, group, settings, self.sids[m], self.fmt, self.protocol, self.score,
                                          None, error=exc)
                    continue
                yield question_record(item, group, settings, self.sids[m], self.fmt, self.protocol, self.score,
                                      scored, frames=vqa.get("frames") or 0,
                                      timings={"answer": time.perf_counter() - started})
