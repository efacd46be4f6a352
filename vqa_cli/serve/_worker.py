"""The model's side of the server: decode ahead, one model thread, batches, caches, cancellation.

A request goes through two stages:

1. ``prepare`` (a decode thread): the settings are checked and the budget planned, then the clip's
   visual tokens are looked up in the feature cache; on a miss the video is decoded and preprocessed
   here, off the model's thread (as ``caption``'s workers do).
2. the model thread: encodes what was not cached, then answers (a conversation without a video: the
   language model alone, its KV caches kept under ``TEXT_KEY``). A single request runs as a
   ``Conversation`` turn over the best KV prefix the ``PrefixCache`` holds for its clip (streamed,
   stoppable); compatible single-question requests waiting together share one batched ``generate``.

Every job reports through ``emit(kind, value)``: ``("text", piece)`` while streaming, then
``("done", Result)`` or ``("error", exception)``. A cancelled job (its client went away) is skipped
when still queued and stopped after the current token when running.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from vqa_cli import console
from vqa_cli.output import subtitles
from vqa_cli.serve._kv import Prefix, PrefixCache
from vqa_cli.serve._media import Media
from vqa_cli.serve._requests import ChatRequest
from vqa_cli.settings import DEFAULT_BATCH

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from vqa_cli.model.checkpoint import Budget
    from vqa_cli.model.engine import Engine
    from vqa_cli.model.features import FeatureCache
    from vqa_cli.video import Clip

TEXT_KEY = "text-only"  # the kept KV caches of conversations without a video (their ids depend on no clip)


class Cancelled(Exception):
    """The client went away."""


@dataclass
class Result:
    text: str
    finish_reason: str  # "stop" | "length"
    completion_tokens: int
    prompt_tokens: int  # the whole prompt, visual tokens included
    cached_tokens: int  # of those, the ones a kept KV cache already held
    record: dict  # the answer's ``records.answer_record`` fields
    logprobs: list[dict] | None = None
    batch_size: int = 1
    feature_cache: str | None = "miss"  # "memory", "disk" or "miss"; None: no video
    context: int = 0  # positions the model holds at its RoPE factor


@dataclass
class Job:
    request: ChatRequest
    media: Media | None  # None: a text-only conversation
    emit: Callable[[str, Any], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    timings: dict[str, float] = field(default_factory=dict)
    queued_at: float = field(default_factory=time.perf_counter)
    key: str = ""
    clip: Clip | None = None
    pixels: torch.Tensor | None = None
    features: torch.Tensor | None = None  # [N, D] visual tokens
    feature_hit: str | None = "miss"  # None: no video (a text-only conversation)


def finish_reason(tokens: int, max_new_tokens: int, *, eos: bool, stopped: bool) -> str:
    """OpenAI's ``finish_reason``: ``length`` when the token limit cut the answer, else ``stop``."""
    return "length" if tokens >= max_new_tokens and not eos and not stopped else "stop"


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string (which is not included), and whether one was found."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


class StopFilter:
    """Streams text without ever showing a stop string: holds back a tail that could be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        cut, found = cut_at_stop(self.text, self.stops)
        if found:
            self.stopped = True
            return self._send(len(cut))
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if self.text.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        return self._send(len(self.text) - hold)

    def finish(self) -> str:
        return "" if self.stopped else self._send(len(self.text))

    def _send(self, upto: int) -> str:
        out = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return out


def logprob_entries(tokenizer: PreTrainedTokenizerBase, new_ids: list[int], logits: torch.Tensor,
                    top: int) -> list[dict]:
    """OpenAI's ``logprobs.content``: each new token's log-probability (and the ``top`` likeliest)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    out, shown = [], ""
    for step, token in enumerate(new_ids[: logp.shape[0]]):
        text, shown = _token_text(tokenizer, new_ids[: step + 1], shown)
        entry = {"token": text, "logprob": float(logp[step, token]), "bytes": list(text.encode()), "top_logprobs": []}
        if top:
            values, ids = logp[step].topk(top)
            entry["top_logprobs"] = [{"token": tokenizer.decode([int(i)]), "logprob": float(v),
                                      "bytes": list(tokenizer.decode([int(i)]).encode())}
                                     for v, i in zip(values.tolist(), ids.tolist(), strict=True)]
        out.append(entry)
    return out


def _token_text(tokenizer: PreTrainedTokenizerBase, ids: list[int], shown: str) -> tuple[str, str]:
    """The text the last of ``ids`` adds to the answer as the content decodes it (leading spaces kept, special
    tokens dropped, a character split over tokens given with its last token), and the text shown so far."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if text.endswith("\ufffd") or not text.startswith(shown):  # a character still incomplete
        return "", shown
    return text[len(shown):], text


def pick_frames(clip: Clip, n: int) -> Clip:
    """``n`` of ``clip``'s frames spread uniformly (all of them when it has no more)."""
    from vqa_cli.video import uniform_indices

    keep = uniform_indices(len(clip.indices), n)
    return replace(clip, frames=clip.frames[keep], indices=[clip.indices[i] for i in keep],
                   timestamps=[clip.timestamps[i] for i in keep])


class ModelWorker:
    """Owns the engine: ``prepare`` runs on decode threads, everything else on one model thread."""

    def __init__(self, engine: Engine, feature_cache: FeatureCache | None, prefix_cache: PrefixCache, *,
                 max_batch: int = DEFAULT_BATCH, batch_wait: float = 0.02) -> None:
        self.engine = engine
        self.features = feature_cache
        self.prefixes = prefix_cache
        self.max_batch = max_batch
        self.batch_wait = batch_wait
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.counters = collections.Counter()
        self.running = 0
        self._thread = threading.Thread(target=self._loop, name="vqa-model", daemon=True)
        self._thread.start()

    # ---- stage 1: decode threads ---------------------------------------------------------------
    def prepare(self, job: Job) -> None:
        """Settings and budget checked, then the visual tokens from the cache, or the clip decoded."""
        from vqa_cli.model.features import key_for
        from vqa_cli.video import is_image_path

        request, engine = job.request, self.engine
        view = engine.with_settings(request.settings)
        if job.media is None:  # no video: nothing to decode; the context is checked with the whole prompt
            job.key, job.feature_hit = TEXT_KEY, None
            return
        image = job.media.clip is None and is_image_path(job.media.path)
        frames = 1 if image else view.checkpoint.frames_for(request.settings)
        if not image:  # a request that cannot fit fails before anything is decoded
            view.checked_budget(replace(request.settings, frames=frames), request.first_question)
        if not request.cues_given and job.media.clip is None:  # the --subtitles of the request (or the server's)
            request.cues = subtitles.cues_for(job.media.path, request.settings.subtitles,
                                              request.settings.subtitle_encoding, run=request.settings)
        job.key = key_for(engine, job.media.source, request.settings, frames, request.first_question,
                          subtitles.digest(request.cues))
        if request.use_cache:
            found = self.features.get(job.key)
            if found is not None:
                job.clip, job.features, job.feature_hit = found.clip, found.features, found.where
                self._subtitles(job, view)
                return
        # Frames sent as images: the request's count of them, spread evenly; else the file decoded.
        source = pick_frames(job.media.clip, frames) if job.media.clip is not None else job.media.path
        prepared = view.prepare_clip(source, frames)
        job.clip, job.pixels = prepared.clip, prepared.pixels
        job.timings.update(prepared.timings)
        self._subtitles(job, view)

    def _subtitles(self, job: Job, view: Engine) -> None:
        """The request's subtitles on screen at the clip's frames, before its first question, as ``vqa caption``
        gives them (``subtitles.into_turns``)."""
        if job.request.cues:
            from vqa_cli.jobs.segments import token_counter

            job.request.subtitle_tokens = subtitles.into_turns(job.request.turns, job.request.cues,
                                                               job.clip.timestamps, token_counter(view))

    # ---- stage 2: the model thread ---------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cond:
            self._queue.append(job)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self.features.flush()

    def stats(self) -> dict:
        with self._cond:
            queued = len(self._queue)
        return {"queued": queued, "running": self.running, **{k: self.counters[k] for k in
                                                               ("completed", "failed", "cancelled", "batched")}}

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._queue.popleft()
            batch = [first]
            if not first.request.batchable() or self.max_batch < 2:
                return batch
            deadline = time.perf_counter() + self.batch_wait
            while len(batch) < self.max_batch:
                for job in list(self._queue):
                    if len(batch) < self.max_batch and job.request.batchable() \
                            and job.request.settings == first.request.settings:
                        self._queue.remove(job)
                        batch.append(job)
                left = deadline - time.perf_counter()
                if len(batch) >= self.max_batch or left <= 0:
                    break
                self._cond.wait(timeout=left)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = []
            for job in batch:
                if job.cancelled.is_set():
                    self.counters["cancelled"] += 1
                    job.emit("error", Cancelled())
                else:
                    job.timings["queue"] = time.perf_counter() - job.queued_at
                    live.append(job)
            if not live:
                continue
            self.running = len(live)
            try:
                if len(live) == 1:
                    self._finish(live[0], self._answer)
                else:
                    self._run_batch(live)
            finally:
                self.running = 0

    def _finish(self, job: Job, run: Callable[[Job], Result]) -> None:
        try:
            result = run(job)
        except BaseException as exc:  # noqa: BLE001 - reported to the request, the server goes on
            self.counters["failed"] += 1
            job.emit("error", exc)
            return
        self._deliver(job, result)

    def _deliver(self, job: Job, result: Result) -> None:
        """The job's answer to its client, unless the client went away meanwhile."""
        if job.cancelled.is_set():
            self.counters["cancelled"] += 1
            job.emit("error", Cancelled())
            return
        self.counters["completed"] += 1
        if job.request.cues:
            result.record["subtitle_tokens"] = job.request.subtitle_tokens
        job.emit("done", result)

    def _visual(self, view: Engine, job: Job) -> tuple[Budget, torch.Tensor]:
        """(budget, visual tokens) of the job's clip: encoded now unless cached, and then cached."""
        frames = None
        if job.features is None and job.pixels is not None:
            started = time.perf_counter()
            frames = view.encode(job.pixels)
            job.timings["encode"] = time.perf_counter() - started
        budget, tokens = view.budgeted_tokens(job.clip, job.request.first_question, job.timings, frames, job.features)
        if job.features is None:
            self.features.put(job.key, job.clip, tokens)
        return budget, tokens

    def _answer(self, job: Job) -> Result:
        """One request as a conversation turn over the best kept KV prefix of its clip."""
        from transformers import DynamicCache

        from vqa_cli.model.conversation import Conversation
        from vqa_cli.output.records import answer_record, text_answer_record

        request = job.request
        view = self.engine.with_settings(request.settings)
        budget, tokens = self._visual(view, job) if job.media is not None else (None, None)
        conversation = Conversation(view, job.clip, tokens, messages=request.history,
                                    plan=budget.plan if budget else None)
        ids = conversation.ids_for(request.turns)
        prefix = self.prefixes.take(job.key, ids) if request.use_cache else None
        conversation.cache = prefix.cache if prefix else DynamicCache(config=view.model.config)
        conversation.cached_ids = prefix.ids if prefix else []
        stops = request.stops

        def should_stop(text: str) -> bool:
            return job.cancelled.is_set() or any(s in text for s in stops)

        stream = (lambda piece: job.emit("text", piece)) if request.stream else None  # only a stream reads pieces
        turn = conversation.ask(request.question, keep=False, on_text=stream, logits=request.logprobs,
                                should_stop=should_stop)
        if request.use_cache:
            self.prefixes.put(job.key, Prefix(conversation.cached_ids, conversation.cache))
        gen = turn.generation
        text, stopped = cut_at_stop(gen.text, stops)
        job.timings["first_token"], job.timings["generate"] = gen.first_token, gen.total
        if budget is None:
            record = text_answer_record(view, answer=text, prompt_tokens=len(ids), tokens=gen.tokens,
                                        tokens_per_second=gen.tokens_per_second, timings=job.timings)
        else:
            record = answer_record(view, job.clip, budget, answer=text, tokens=gen.tokens,
                                   tokens_per_second=gen.tokens_per_second, timings=job.timings)
        logprobs = None
        if request.logprobs and gen.logits is not None:
            new_ids = (gen.sequence or [])[len(ids):]
            logprobs = logprob_entries(view.checkpoint.tokenizer, new_ids, gen.logits, request.top_logprobs)
        reason = finish_reason(gen.tokens, view.settings.max_new_tokens, eos=gen.eos, stopped=stopped)
        return Result(text, reason, gen.tokens, len(ids), len(ids) - turn.fed_tokens, record, logprobs, 1,
                      job.feature_hit, view.checkpoint.context(view.rope_factor))

    def _run_batch(self, jobs: list[Job]) -> None:
        """Compatible single questions in one batched generate; if the batch fails, one at a time (so only
        the culprit fails)."""
        from vqa_cli.output.records import answer_record

        view = self.engine.with_settings(jobs[0].request.settings)
        try:
            encoded = []
            for job in jobs:
                if job.features is None and job.pixels is None:  # a still image on the image path
                    _, job.features = self._visual(view, job)
                encoded.append(job.features)
            answers = view.answer_batch([j.clip for j in jobs], [j.request.question for j in jobs],
                                        timings=[j.timings for j in jobs], pixels=[j.pixels for j in jobs],
                                        features=encoded,
                                        should_stop=lambda: all(j.cancelled.is_set() for j in jobs))
        except Exception as exc:  # noqa: BLE001
            console.info(f"batch of {len(jobs)} failed ({type(exc).__name__}); answering one at a time")
            for job in jobs:
                self._finish(job, self._answer)
            return
        self.counters["batched"] += len(jobs)
        for job, answer in zip(jobs, answers, strict=True):
            if job.features is None:
                self.features.put(job.key, job.clip, answer.features)
            text, stopped = cut_at_stop(answer.text, job.request.stops)
            record = answer_record(view, answer.clip, answer.budget, answer=text, tokens=answer.tokens,
                                   tokens_per_second=answer.tokens_per_second, timings=answer.timings)
            prompt = answer.budget.plan.total + answer.budget.prompt_tokens
            reason = finish_reason(answer.tokens, view.settings.max_new_tokens, eos=answer.eos, stopped=stopped)
            result = Result(text, reason, answer.tokens, prompt, 0, record, None, len(jobs), job.feature_hit,
                            view.checkpoint.context(view.rope_factor))
            self._deliver(job, result)
