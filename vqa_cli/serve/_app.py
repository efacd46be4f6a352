"""The HTTP side: OpenAI's routes over the model worker (Starlette, served by uvicorn).

``POST /v1/chat/completions`` (streamed as server-sent events or one response), ``GET /v1/models``,
``GET /health``. Errors are OpenAI error objects with the right status and one line; a bug is logged
on the server's stderr and answered 500 without a trace.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from vqa_cli import console, wire
from vqa_cli.engine import LOAD_SETTINGS
from vqa_cli.errors import EXIT_USAGE, describe, one_line
from vqa_cli.serve._requests import ApiError, ChatRequest, MediaPolicy, bad, parse_chat, resolve
from vqa_cli.serve._worker import Cancelled, Job, Result, StopFilter

POLL = 0.2  # seconds between checks that a waiting client is still there
_STATUS = {"unknown_model": 404, "out_of_memory": 503}


@dataclass
class ServerState:
    """What the routes share. ``worker`` is None until the model has loaded."""

    settings: Any  # the server's RunSettings: each request's defaults
    policy: MediaPolicy
    api_key: str | None = None
    names: set[str] = field(default_factory=set)  # what a request's ``model`` may say
    worker: Any = None
    load_error: str | None = None
    decode_pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(2, "vqa-decode"))
    started: float = field(default_factory=time.time)

    @property
    def model_name(self) -> str:
        return self.settings.model


def api_error(exc: BaseException) -> ApiError:
    """Any exception as the error a client gets (bugs: 500, logged with their trace on stderr)."""
    if isinstance(exc, ApiError):
        return exc
    known = describe(exc)
    if known is None:
        console.error(f"internal error: {type(exc).__name__}: {one_line(str(exc))}")
        traceback.print_exception(exc)
        return ApiError(500, f"internal error: {type(exc).__name__}: {one_line(str(exc))}", type="server_error",
                        code="internal", exit_code=1)
    code, kind, message = known
    status = _STATUS.get(kind, 400 if code == EXIT_USAGE or kind == "video" else 500)
    error_type = "invalid_request_error" if status < 500 else "server_error"
    kind = "context_length_exceeded" if kind == "context_overflow" else kind
    return ApiError(status, message, type=error_type, code=kind, exit_code=code)


def _json(body: dict, status: int = 200) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status)


def _error(exc: BaseException) -> Any:
    error = api_error(exc)
    return _json(error.body(), error.status)


def _check_auth(state: ServerState, request: Any) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    if header != f"Bearer {state.api_key}":
        raise ApiError(401, "missing or wrong API key: send Authorization: Bearer KEY", code="invalid_api_key")


def _check_ready(state: ServerState) -> None:
    if state.worker is None:
        raise ApiError(503, "the model is still loading" if state.load_error is None else state.load_error,
                       type="server_error", code="loading", exit_code=1)


def model_entry(state: ServerState) -> dict:
    engine = state.worker.engine
    loaded = engine.loaded
    return {"id": state.model_name, "object": "model", "created": int(state.started), "owned_by": "vqa",
            "vqa": {"family": engine.checkpoint.adapter.name, "quant": loaded.quant, "device": loaded.device,
                    "dtype": str(loaded.dtype).removeprefix("torch."), "rope_factor": engine.rope_factor,
                    "context": engine.checkpoint.context(engine.rope_factor),
                    "settings": {name: getattr(engine.settings, name) for name in LOAD_SETTINGS},
                    "defaults": {**wire.request_fields(engine.settings),
                                 "max_tokens": engine.settings.max_new_tokens}}}


def _usage(result: Result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": result.cached_tokens}}


def _vqa(result: Result) -> dict:
    """vqa's own fields of a response: the ``ask --json`` record of the answer and what the caches did."""
    return {**result.record, "batch_size": result.batch_size, "context": result.context,
            "cache": {"features": result.feature_cache, "prompt_tokens_cached": result.cached_tokens}}


def completion(request: ChatRequest, result: Result) -> dict:
    logprobs = {"content": result.logprobs} if result.logprobs is not None else None
    return {"id": request.id, "object": "chat.completion", "created": request.created, "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "logprobs": logprobs, "finish_reason": result.finish_reason}],
            "usage": _usage(result), "vqa": _vqa(result)}


def _chunk(request: ChatRequest, delta: dict, finish: str | None = None, **extra: Any) -> str:
    body = {"id": request.id, "object": "chat.completion.chunk", "created": request.created, "model": request.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body)}\n\n"


async def _read_body(request: Any, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request is {int(declared) / 2**20:.1f} MiB; this server takes up to "
                            f"{limit / 2**20:.0f} MiB", code="request_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise ApiError(413, f"the request is over {limit / 2**20:.0f} MiB", code="request_too_large")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad(f"the request body is not JSON ({exc})") from None


def create_app(state: ServerState) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    async def health(request: Any) -> Any:
        if state.worker is None:
            status = "failed" if state.load_error else "loading"
            return _json({"status": status, "model": state.model_name, "error": state.load_error}, 503)
        worker = state.worker
        return _json({"status": "ok", "model": state.model_name, **worker.stats(),
                      "feature_cache": worker.features.stats(), "kv_cache": worker.prefixes.stats()})

    async def models(request: Any) -> Any:
        try:
            _check_auth(state, request)
            _check_ready(state)
        except ApiError as exc:
            return _error(exc)
        return _json({"object": "list", "data": [model_entry(state)]})

    async def chat(request: Any) -> Any:
        try:
            _check_auth(state, request)
            _check_ready(state)
            body = await _read_body(request, state.policy.max_bytes * 4 // 3 + 2**20)
            parsed = parse_chat(body, state.settings)
            if parsed.model not in state.names:
                raise ApiError(404, f"this server serves {state.model_name!r}, not {parsed.model!r}",
                               code="model_not_found")
            media = await run_in_threadpool(resolve, parsed.urls, state.policy)
        except Exception as exc:  # noqa: BLE001 - every failure is an error object
            return _error(exc)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        job = Job(parsed, media, emit)
        try:
            await loop.run_in_executor(state.decode_pool, state.worker.prepare, job)
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        finally:
            media.release()  # decoded (or cached): the model thread never reads the file
        state.worker.submit(job)
        if parsed.stream:
            return await _stream(request, parsed, job, events)
        while True:
            try:
                kind, value = await asyncio.wait_for(events.get(), timeout=POLL)
            except TimeoutError:
                if await request.is_disconnected():
                    job.cancelled.set()
                    return Response(status_code=499)
                continue
            if kind == "done":
                return _json(completion(parsed, value))
            if kind == "error":
                return _error(value)

    async def _stream(request: Any, parsed: ChatRequest, job: Job, events: asyncio.Queue) -> Any:
        kind, value = await events.get()
        if kind == "error":
            return _error(value)

        async def body() -> Any:
            stops = StopFilter(parsed.stops)
            nonlocal kind, value
            try:
                yield _chunk(parsed, {"role": "assistant", "content": ""})
                while True:
                    if kind == "text":
                        piece = stops.feed(value)
                        if piece:
                            yield _chunk(parsed, {"content": piece})
                    elif kind == "done":
                        rest = stops.finish()
                        if rest:
                            yield _chunk(parsed, {"content": rest})
                        yield _chunk(parsed, {}, value.finish_reason, vqa=_vqa(value))
                        if parsed.include_usage:
                            usage = {"id": parsed.id, "object": "chat.completion.chunk", "created": parsed.created,
                                     "model": parsed.model, "choices": [], "usage": _usage(value)}
                            yield f"data: {json.dumps(usage)}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    else:
                        if not isinstance(value, Cancelled):
                            yield f"data: {json.dumps(api_error(value).body())}\n\n"
                        return
                    kind, value = await events.get()
            finally:
                job.cancelled.set()  # a client gone mid-stream stops the generation after this token

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    routes = [Route("/health", health, methods=["GET"]), Route("/v1/models", models, methods=["GET"]),
              Route("/v1/chat/completions", chat, methods=["POST"])]
    async def unexpected(request: Any, exc: Exception) -> Any:
        return _error(exc)

    return Starlette(routes=routes, exception_handlers={Exception: unexpected})
