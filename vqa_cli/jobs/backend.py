"""Where a job's answers come from, chosen once (``backend_for``): a model loaded in this process (``Here``) or a
running ``vqa serve`` (``Server``, ``--server URL``: ``remote.client`` speaks to it), behind one interface
(``Backend``). The jobs give the same output and the same error messages either way; what only a model loaded
here can do is refused with the job's own message (``require_local``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vqa_cli import console
from vqa_cli.errors import UsageError
from vqa_cli.output import records, subtitles

if TYPE_CHECKING:
    from vqa_cli.jobs.eval._evaluate import GroupAnswerer
    from vqa_cli.jobs.eval._formats import Format
    from vqa_cli.jobs.eval._prompts import Protocol as EvalProtocol
    from vqa_cli.jobs.eval._score import Score
    from vqa_cli.jobs.harness import Sink, Summary
    from vqa_cli.model.conversation import Conversation
    from vqa_cli.model.engine import Engine
    from vqa_cli.model.session import Session
    from vqa_cli.remote.client import Client, RemoteConversation
    from vqa_cli.settings import RunSettings
    from vqa_cli.video import Clip


class Captioning(Protocol):
    """A captioning run over one process's share of the videos (``captioner.Captioner``, ``RemoteCaptioner``)."""

    batch_size: int
    summary: Summary

    def run(self, videos: list[str], sink: Sink) -> Summary: ...


class Backend(Protocol):
    """The model's side of every job."""

    load_seconds: float  # how long loading the model took (0 when nothing was loaded here)

    def require_local(self, message: str) -> None:
        """``UsageError(message)`` unless the model runs here (``--plan``, ``--segments``, a prefilled answer)."""

    def settle(self, settings: RunSettings) -> RunSettings:
        """The settings the answers are made with: a server's model and load settings (a conflicting one is a
        usage error); here, the settings as given."""

    def fit(self, settings: RunSettings, prompts: list[str]) -> RunSettings:
        """``--fit``'s frames (here; a server's requests are priced by the server)."""

    def ask(self, settings: RunSettings, video: str, questions: list[str], *, as_json: bool, started: float) -> int:
        """``vqa ask``: the answers printed (or one JSON object); the exit code."""

    def conversation(self, settings: RunSettings, video: str, reserve: int) -> tuple[Conversation | RemoteConversation,
                                                                                     str, str]:
        """``vqa chat``'s conversation about ``video``, a line describing it, and the subtitle text its first user
        turn starts with ("" where none, or where the server puts it)."""

    def captioner(self, settings: RunSettings, prompt: str, sid: str, *, batch_size: int, workers: int,
                  feature_cache: str | None) -> Captioning:
        """``vqa caption``'s run (the model loads here, before anything is written)."""

    def evaluator(self, settings_per_mode: list[RunSettings], fmt: Format, protocol: EvalProtocol, score: Score,
                  sids: list[str], done: set[tuple[str, str]], workers: int, prompts: list[str]) -> GroupAnswerer:
        """``vqa eval``'s answerer (the model loads here, before anything is written)."""


def backend_for(server: str | None, model_given: bool = True) -> Backend:
    """The one choice: ``server`` (a ``vqa serve`` URL) or a model loaded here. ``model_given``: whether --model
    was named (with a server it must then be the served one)."""
    return Server(server, model_given) if server else Here()


class Here:
    """A model loaded in this process."""

    load_seconds = 0.0

    def require_local(self, message: str) -> None:
        return None

    def settle(self, settings: RunSettings) -> RunSettings:
        return settings

    def fit(self, settings: RunSettings, prompts: list[str]) -> RunSettings:
        from vqa_cli.model.session import fit_settings

        return fit_settings(settings, prompts)[0] if settings.fit else settings

    def ask(self, settings: RunSettings, video: str, questions: list[str], *, as_json: bool, started: float) -> int:
        """One question: streamed answer. Several: one video encode and one shared prefill, then each question."""
        from vqa_cli.jobs.segments import ask_in_time, subtitle_reserve, uses_time
        from vqa_cli.model.session import open_session

        transcribe_first(settings, video)
        if settings.segments != "none" or uses_time(settings) and len(questions) == 1:
            return ask_in_time(settings, video, questions, as_json)
        session = open_session(settings, video, questions, reserve=subtitle_reserve(settings))
        if len(questions) > 1:
            return _ask_many(session, video, questions, started, as_json)
        engine, question = session.engine, questions[0]
        printer = console.StreamPrinter(None if as_json else "encoding video and reading the prompt")
        try:
            answer = engine.answer(session.clip, question, on_text=None if as_json else printer,
                                   timings=session.timings)
        finally:
            printer.stop()
        timings = answer.timings
        timings["total"] = time.perf_counter() - started  # wall clock: decode overlaps load
        record = records.ask_record(video, question, records.answer_of(engine, answer))
        if session.fitted is not None:
            record["fit"] = session.fitted.to_dict()
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

    def conversation(self, settings: RunSettings, video: str, reserve: int) -> tuple[Conversation, str, str]:
        from vqa_cli.jobs.segments import subtitle_reserve
        from vqa_cli.model.conversation import Conversation
        from vqa_cli.model.session import open_session

        transcribe_first(settings, video)
        session = open_session(settings, video, ["?"], reserve=reserve + subtitle_reserve(settings))
        engine, clip = session.engine, session.clip
        with console.status("encoding the video"):
            conversation = Conversation.open(engine, clip)
        said, _ = subtitle_text(engine, video, clip)
        return conversation, (f"{video}: {len(clip.indices)} frames, {conversation.features.shape[0]} visual "
                              f"tokens, context {conversation.context_limit}"), said

    def captioner(self, settings: RunSettings, prompt: str, sid: str, *, batch_size: int, workers: int,
                  feature_cache: str | None) -> Captioning:
        from vqa_cli.jobs.captioner import Captioner
        from vqa_cli.jobs.segments import subtitle_reserve
        from vqa_cli.model.features import FeatureCache
        from vqa_cli.model.session import open_model

        session = open_model(settings, [prompt], batch=batch_size, reserve=subtitle_reserve(settings))
        self.load_seconds = session.timings["load"]
        return Captioner(session.engine, settings, prompt, sid, batch_size=_batch_that_fits(session, batch_size),
                         workers=workers, frames=session.budget.plan.frames,
                         feature_cache=FeatureCache(0, feature_cache) if feature_cache else None)

    def evaluator(self, settings_per_mode: list[RunSettings], fmt: Format, protocol: EvalProtocol, score: Score,
                  sids: list[str], done: set[tuple[str, str]], workers: int, prompts: list[str]) -> GroupAnswerer:
        from vqa_cli.jobs.eval._evaluate import Evaluator
        from vqa_cli.jobs.segments import subtitle_reserve
        from vqa_cli.model.session import open_model

        session = open_model(settings_per_mode[0], [max(prompts, key=len)],
                             reserve=subtitle_reserve(settings_per_mode[0]))
        self.load_seconds = session.timings["load"]
        return Evaluator(session.engine, settings_per_mode, fmt, protocol, score, sids, done, workers)


def _batch_that_fits(session: Session, batch_size: int) -> int:
    """The batch size to start from: the largest up to ``--batch-size`` that the memory check found to fit
    (out-of-memory back-off still halves it later)."""
    if session.memory is None or session.memory.estimate.batch >= batch_size:
        return batch_size
    fits = session.memory.estimate.batch
    console.info(f"--batch-size {batch_size} does not fit the memory ({session.memory.target.device}): "
                 f"starting at {fits}")
    return fits


def transcribe_first(settings: RunSettings, video: str) -> None:
    """The transcript ``--subtitles asr`` (or ``--asr auto`` without a sidecar) reads, made before the model loads
    (cached: the run then reads it), under a spinner: a video without sound fails in a second, not after a load."""
    if settings.subtitles == "asr" or settings.subtitles == "auto" and settings.asr == "auto":
        with console.status("transcribing the speech"):
            subtitles.cues_for(video, settings.subtitles, settings.subtitle_encoding, run=settings)


def subtitle_text(engine: Engine, video: str, clip: Clip) -> tuple[str, int]:
    """The subtitle text (and its tokens) of the cues on screen at ``clip``'s sampled frames, under the engine's
    ``--subtitles`` (``subtitles.context``: a sidecar, a file or the transcript); ``("", 0)`` without."""
    from vqa_cli.jobs.segments import token_counter

    settings = engine.settings
    if settings.subtitles == "off":
        return "", 0
    return subtitles.context(video, settings.subtitles, clip.timestamps, token_counter(engine),
                             encoding=settings.subtitle_encoding, run=settings)


def _ask_many(session: Session, video: str, questions: list[str], run_started: float, as_json: bool) -> int:
    from vqa_cli.model.conversation import Conversation

    engine, clip, timings = session.engine, session.clip, session.timings
    conversation = Conversation.open(engine, clip, " ".join(questions), timings)
    said, said_tokens = subtitle_text(engine, video, clip)  # before each question, as for one question
    answers = []
    for i, question in enumerate(questions):
        if not as_json:
            sys.stdout.write(("\n" if i else "") + f"Q: {question}\nA: ")
        printer = console.StreamPrinter(None if as_json else "thinking")
        try:
            turn = conversation.ask(subtitles.with_subtitles(question, said), keep=False,
                                    on_text=None if as_json else printer)
        finally:
            printer.stop()
        if not as_json:
            sys.stdout.write("\n")
            sys.stdout.flush()
        answers.append({**records.turn_record(turn), "question": question})
    timings["total"] = time.perf_counter() - run_started
    budget = engine.checkpoint.budget(engine.settings, questions, num_frames=len(clip.indices),
                                      plan=conversation.plan)
    if as_json:
        record = records.answers_record(video, answers, records.run_fields(engine, clip, budget, timings))
        if engine.settings.subtitles != "off":
            record["subtitle_tokens"] = said_tokens
        if session.fitted is not None:
            record["fit"] = session.fitted.to_dict()
        console.emit_json(record)
    return 0


class Server:
    """A running ``vqa serve``: its model and load settings are the run's (``remote.client.connect``)."""

    load_seconds = 0.0

    def __init__(self, url: str, model_given: bool) -> None:
        self.url, self.model_given = url, model_given
        self.client: Client | None = None

    def require_local(self, message: str) -> None:
        raise UsageError(message)

    def settle(self, settings: RunSettings) -> RunSettings:
        from vqa_cli.remote.client import connect

        self.client, settings = connect(self.url, settings, model_given=self.model_given)
        return settings

    def fit(self, settings: RunSettings, prompts: list[str]) -> RunSettings:
        return settings

    def _client(self) -> Client:
        if self.client is None:
            raise RuntimeError("Server.settle comes first")  # the jobs settle their settings before anything else
        return self.client

    def _check(self, video: str) -> None:
        from vqa_cli.model.session import check_input

        if Path(video).exists():  # else a path on the server's machine
            check_input(video)

    def ask(self, settings: RunSettings, video: str, questions: list[str], *, as_json: bool, started: float) -> int:
        from vqa_cli.remote.client import run_ask

        self._check(video)
        return run_ask(self._client(), settings, video, questions, as_json=as_json)

    def conversation(self, settings: RunSettings, video: str, reserve: int) -> tuple[RemoteConversation, str, str]:
        from vqa_cli.remote.client import RemoteConversation

        self._check(video)
        from vqa_cli.remote.client import cues_of

        return (RemoteConversation(self._client(), settings, video, cues=cues_of(settings, video)),
                f"{video} on {self._client().base}", "")

    def captioner(self, settings: RunSettings, prompt: str, sid: str, *, batch_size: int, workers: int,
                  feature_cache: str | None) -> Captioning:
        from vqa_cli.jobs.captioner import RemoteCaptioner

        return RemoteCaptioner(self._client(), settings, prompt, sid, batch_size=batch_size)

    def evaluator(self, settings_per_mode: list[RunSettings], fmt: Format, protocol: EvalProtocol, score: Score,
                  sids: list[str], done: set[tuple[str, str]], workers: int, prompts: list[str]) -> GroupAnswerer:
        from vqa_cli.jobs.eval._remote import RemoteEvaluator

        return RemoteEvaluator(self._client(), settings_per_mode, fmt, protocol, score, sids, done)
