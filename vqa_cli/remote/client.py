"""``--server URL``: ``ask``, ``chat`` and ``caption`` send requests to a running ``vqa serve``.

The output is what the command prints when it runs the model itself with the same settings: the
server answers with each answer's ``ask --json`` record (its ``vqa`` field), from which the
records are built here with the same functions (``records``). Only the standard library is used
(``urllib``); server-sent events are read line by line.

The model, its quantization, device, dtype and RoPE are the server's: naming others is a usage
error, and naming none takes the server's (so ``settings_id`` equals a local run's).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

from vqa_cli import console
from vqa_cli.errors import API_CODES, ContextOverflowError, UsageError, VqaError
from vqa_cli.output import records, subtitles
from vqa_cli.settings import RunSettings
from vqa_cli.wire import request_fields


class ServerUnavailableError(VqaError):
    kind = "server_unavailable"


class RemoteError(VqaError):
    """An error the server answered with: its message, kind and the exit code a local run would have had."""

    def __init__(self, message: str, kind: str, exit_code: int) -> None:
        super().__init__(message)
        self.kind, self.exit_code = kind, exit_code


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class Client:
    """A ``vqa serve`` (or any OpenAI-compatible) endpoint."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float | None = None) -> None:
        self.base = url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key
        self.timeout = timeout

    def _open(self, path: str, body: dict | None = None) -> IO[bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310 - the user's own server url
        except urllib.error.HTTPError as exc:
            raise _remote_error(exc) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnavailableError(f"cannot reach a vqa server at {self.base} ({reason}): start one with "
                                         "`vqa serve`, or drop --server / VQA_SERVER") from None

    def model(self) -> dict:
        """The served model's ``/v1/models`` entry."""
        with self._open("/v1/models") as response:
            data = json.load(response)["data"]
        if not data or "vqa" not in data[0]:
            raise ServerUnavailableError(f"{self.base} is not a vqa server (its /v1/models has no vqa fields)")
        return data[0]

    def chat(self, body: dict, on_text: Callable[[str], None] | None = None) -> dict:
        """One chat completion: ``{"text", "finish_reason", "usage", "vqa"}`` (and ``logprobs`` when not streamed);
        streamed to ``on_text`` if given."""
        if on_text is None:
            with self._open("/v1/chat/completions", {**body, "stream": False}) as response:
                reply = json.load(response)
            choice = reply["choices"][0]
            return {"text": choice["message"]["content"], "finish_reason": choice["finish_reason"],
                    "usage": reply["usage"], "vqa": reply.get("vqa"), "logprobs": choice.get("logprobs")}
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        out: dict[str, Any] = {"text": ""}
        with self._open("/v1/chat/completions", body) as response:
            for event in _events(response):
                if "error" in event:
                    raise _error_from(event["error"])
                if event.get("usage"):
                    out["usage"] = event["usage"]
                for choice in event.get("choices", []):
                    piece = choice.get("delta", {}).get("content")
                    if piece:
                        out["text"] += piece
                        on_text(piece)
                    if choice.get("finish_reason"):
                        out["finish_reason"], out["vqa"] = choice["finish_reason"], event.get("vqa")
        out["text"] = out["text"].strip()
        return out


def _events(response: IO[bytes]) -> Iterator[dict]:
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _error_from(error: dict) -> VqaError:
    message = error.get("message") or "the server gave no reason"
    kind = error.get("code") or error.get("type") or "error"
    if kind == API_CODES["context_overflow"]:
        return ContextOverflowError(message)
    return RemoteError(message, kind, int(error.get("vqa_exit_code") or 1))


def _remote_error(exc: urllib.error.HTTPError) -> VqaError:
    try:
        error = json.loads(exc.read())["error"]
    except (ValueError, KeyError, TypeError):
        return RemoteError(f"the server answered HTTP {exc.code} {exc.reason}", "http", 1)
    return _error_from(error)


# ---- settings ----------------------------------------------------------------------------------------
def connect(url: str, settings: RunSettings, *, model_given: bool) -> tuple[Client, RunSettings]:
    """The client and ``settings`` with the server's model and load settings (a conflicting one: UsageError)."""
    client = Client(url, api_key=os.environ.get("VQA_API_KEY") or None)
    entry = client.model()
    served = entry["vqa"]["settings"]
    loaded = entry["vqa"]
    if model_given and settings.model not in (entry["id"], served["model"]):
        raise UsageError(f"the server at {client.base} serves {served['model']!r}, not {settings.model!r}: "
                         "drop --model, or start a server with it")
    from vqa_cli.settings import LOAD_SETTINGS, RunSettings

    defaults = RunSettings(model=served["model"])
    changes = {}
    for name in LOAD_SETTINGS:
        asked, theirs = getattr(settings, name), _tuples(served[name])
        if name != "model" and asked != getattr(defaults, name) and asked not in (theirs, loaded.get(name)):
            raise UsageError(f"--{name.replace('_', '-')} {asked} differs from the server's "
                             f"({loaded.get(name, theirs)}): it is fixed when the server loads the model")
        changes[name] = theirs
    if settings.speech != defaults.speech:  # the server transcribes with its own (``vqa serve --asr-model ...``)
        raise UsageError("--asr-model, --language and --audio-stream are the server's with --server: give them to "
                         "`vqa serve`")
    if isinstance(loaded.get("speech"), dict):  # so a transcript's settings_id names the server's speech settings
        from dataclasses import fields

        from vqa_cli.settings import SpeechSettings

        known = {f.name for f in fields(SpeechSettings)}
        changes["speech"] = SpeechSettings(**{k: v for k, v in loaded["speech"].items() if k in known})
    return client, replace(settings, **changes)


def _tuples(value: Any) -> Any:
    """A JSON value with its lists as tuples again (as ``RunSettings`` holds them)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def media_url(path: str) -> str:
    """A path the server can open: absolute when it exists here (same machine), else as given."""
    return Path(path).resolve().as_uri() if Path(path).exists() else path


def request_body(settings: RunSettings, video: str, turns: list[dict], cues: list | str | None = None) -> dict:
    """An OpenAI chat request for ``turns`` about ``video`` with ``settings`` (vqa's fields at the top level,
    as the ``openai`` client's ``extra_body`` sends them). ``cues``: the video's subtitles (``subtitles.Cue``),
    sent whole (those within ``--start``/``--end``): the server puts the ones on screen at the frames it samples
    before the first question, as a run here does; ``"asr"`` or ``"off"`` (``cues_of``): the server transcribes the
    video's speech, or gives none."""
    from vqa_cli.video import is_image_path

    kind = "image_url" if is_image_path(video) else "video_url"
    messages = []
    for i, turn in enumerate(turns):
        content: list[dict] = [{"type": kind, kind: {"url": media_url(video)}}] if i == 0 else []
        messages.append({"role": turn["role"], "content": content + [{"type": "text", "text": turn["text"]}]})
    body = {"model": settings.model, "messages": messages, "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature, **request_fields(settings)}
    if settings.seed is not None:
        body["seed"] = settings.seed
    if isinstance(cues, str):
        body[subtitles.WIRE_FIELD] = cues
    elif cues:
        window = (settings.start or 0.0, settings.end if settings.end is not None else float("inf"))
        body[subtitles.WIRE_FIELD] = subtitles.to_wire(subtitles.overlapping(cues, [], window))
    return body


def cues_of(settings: RunSettings, video: str) -> list[subtitles.Cue] | str:
    """What ``--subtitles`` gives ``video``'s requests: the cues of a subtitle file (read here, where the sidecar
    is), or ``"asr"`` where the transcript is wanted (the server transcribes the video it reads, with its speech
    model, and keeps the transcript), or ``"off"`` (a request that says nothing gets the server's ``--subtitles``)."""
    from vqa_cli.settings import SUBTITLES_ASR

    if settings.subtitles == "off":
        return "off"
    if settings.subtitles == SUBTITLES_ASR or (settings.subtitles == "auto" and settings.asr == "auto"
                                               and subtitles.find_sidecar(video) is None):
        return SUBTITLES_ASR
    return subtitles.cues_for(video, settings.subtitles, settings.subtitle_encoding)


def with_subtitle_tokens(fields: dict, vqa: dict, settings: RunSettings) -> dict:
    """``fields`` with the ``subtitle_tokens`` the server gave, as a run here records them (with subtitles)."""
    return {**fields, "subtitle_tokens": vqa.get("subtitle_tokens", 0)} if settings.subtitles != "off" else fields


def answer_fields(vqa: dict) -> dict:
    """The ``ask --json`` fields (``records.ANSWER_FIELDS``) of a server's answer."""
    return {k: vqa[k] for k in records.ANSWER_FIELDS}


# ---- chat -----------------------------------------------------------------------------------------------
@dataclass
class RemoteTurn:
    question: str
    answer: str


@dataclass
class RemoteConversation:
    """``conversation.Conversation``'s interface over a server: every turn re-sends the conversation, whose
    KV cache the server keeps."""

    client: Client
    settings: RunSettings
    video: str
    messages: list[dict] = field(default_factory=list)
    cues: list | str | None = None  # the video's subtitles (``cues_of``): sent with every turn
    clip: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(indices=[], timestamps=[]))
    context_limit: int = 0
    used: int = 0

    def ask(self, question: str, *, keep: bool, on_text: Callable[[str], None] | None = None) -> RemoteTurn:
        turns = self.messages + [{"role": "user", "text": question}]
        reply = self.client.chat(request_body(self.settings, self.video, turns, self.cues), on_text)
        vqa = reply["vqa"]
        self.clip = SimpleNamespace(indices=vqa["frame_indices"], timestamps=vqa["timestamps"])
        self.context_limit, self.used = vqa["context"], reply["usage"]["total_tokens"]
        if keep:
            self.messages = turns + [{"role": "assistant", "text": reply["text"]}]
        return RemoteTurn(question, reply["text"])

    def reset(self) -> None:
        self.messages = []

    def used_tokens(self) -> int:
        return self.used


# ---- ask ------------------------------------------------------------------------------------------------
def run_ask(client: Client, settings: RunSettings, video: str, questions: list[str], *, as_json: bool) -> int:
    """``vqa ask --server``: the same output as ``ask.run_ask``."""
    started = time.perf_counter()
    answers, last = [], None
    cues = cues_of(settings, video)
    for i, question in enumerate(questions):
        if not as_json and len(questions) > 1:
            _out(("\n" if i else "") + f"Q: {question}\nA: ")
        printer = console.StreamPrinter(None if as_json else "waiting for the server")
        try:
            reply = client.chat(request_body(settings, video, [{"role": "user", "text": question}], cues),
                                None if as_json else printer)
        finally:
            printer.stop()
        if not as_json:
            _out("\n")
        last = reply["vqa"]
        usage = reply["usage"]
        answers.append(records.question_record(
            question, reply["text"], tokens=last["generated_tokens"], tokens_per_second=last["tokens_per_second"],
            fed=usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"],
            first_token=last["timings"].get("first_token", 0.0), generate=last["timings"].get("generate", 0.0)))
    assert last is not None
    last["timings"] = {**last["timings"], "total": round(time.perf_counter() - started, 4)}
    if as_json:
        if len(questions) == 1:
            console.emit_json(with_subtitle_tokens(records.ask_record(video, questions[0], answer_fields(last)),
                                                   last, settings))
        else:
            console.emit_json(with_subtitle_tokens(records.answers_record(video, answers, last), last, settings))
    elif console.stderr_is_tty():
        cache = last["cache"]
        console.stderr.print(f"[dim]{last['frames']} frames, {last['visual_tokens']} visual tokens | server: "
                             f"features {cache['features']}, {cache['prompt_tokens_cached']} prompt tokens cached, "
                             f"first token {last['timings'].get('first_token', 0):.2f}s[/dim]")
    return 0


# ---- caption --------------------------------------------------------------------------------------------
def caption_record(client: Client, settings: RunSettings, prompt: str, sid: str, video: str) -> dict:
    """One video's caption record from the server (the record a run here writes); an error it answers with is an
    error record, a server that cannot be reached raises ``ServerUnavailableError``."""
    try:
        body = request_body(settings, video, [{"role": "user", "text": prompt}], cues_of(settings, video))
        reply = client.chat(body)
    except ServerUnavailableError:
        raise
    except VqaError as exc:
        return records.error_record(video, settings, sid, exc)
    vqa = reply["vqa"]
    fields = with_subtitle_tokens(answer_fields(vqa), vqa, settings)
    return records.caption_record(video, fields, vqa["batch_size"], sid)
