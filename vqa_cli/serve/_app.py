"""The HTTP side: OpenAI's routes over the model worker (Starlette, served by uvicorn).

``POST /v1/chat/completions`` (streamed as server-sent events or one response), ``GET /v1/models``,
``GET /v1/models/{model}``, ``GET /health``. Every error, an unknown path (404) or method (405) and a refused
CORS preflight included, is an OpenAI error object with the right status and one line; a bug is logged on
the server's stderr and answered 500 without a trace. ``cors_origins``: Starlette's CORS middleware for them.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from vqa_cli import console
from vqa_cli.errors import API_CODES, EXIT_USAGE, INTERNAL, bug_text, describe
from vqa_cli.model.device import dtype_name
from vqa_cli.serve._body import ApiError, read_json
from vqa_cli.serve._media import MediaPolicy, resolve
from vqa_cli.serve._pricing import price
from vqa_cli.serve._requests import ChatRequest, parse_chat
from vqa_cli.serve._worker import Cancelled, Job, ModelWorker, Result, StopFilter
from vqa_cli.settings import LOAD_SETTINGS
from vqa_cli.wire import request_fields

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.datastructures import Headers
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from vqa_cli.settings import RunSettings

POLL = 0.2  # seconds between checks that a waiting client is still there
_STATUS = {"unknown_model": 404, "out_of_memory": 503}
IGNORED_HEADER = "x-vqa-ignored"  # the request keys that had no effect, comma-separated
ROUTES = "POST /v1/chat/completions, GET /v1/models, GET /v1/models/{model}, GET /health"


@dataclass
class ServerState:
    """What the routes share. ``worker`` is None until the model has loaded."""

    settings: RunSettings  # the server's: each request's defaults
    policy: MediaPolicy
    api_key: str | None = None
    names: set[str] = field(default_factory=set)  # what a request's ``model`` may say (besides the served name)
    worker: ModelWorker | None = None
    load_error: str | None = None
    decode_pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(2, "vqa-decode"))
    started: float = field(default_factory=time.time)
    served_name: str | None = None  # --served-model-name; None: the --model given
    cors_origins: list[str] = field(default_factory=list)
    logged_ignored: set[tuple[str, ...]] = field(default_factory=set)
    request_memory: int | None = None  # --max-request-memory: bytes one request may need besides the weights

    @property
    def model_name(self) -> str:
        """The model's id on the API (``/v1/models``)."""
        return self.served_name or self.settings.model

    def knows(self, name: str) -> bool:
        """Whether a request's ``model`` names the served model: its id or an alias (case does not matter)."""
        return name.casefold() in {n.casefold() for n in (self.model_name, *self.names)}


def api_error(exc: BaseException) -> ApiError:
    """Any exception as the error a client gets (bugs: 500, logged with their trace on stderr)."""
    if isinstance(exc, ApiError):
        return exc
    known = describe(exc)
    if known is None:
        console.error(f"internal error: {bug_text(exc)}")
        traceback.print_exception(exc)
        return ApiError(500, f"internal error: {bug_text(exc)}", type="server_error", code=INTERNAL, exit_code=1)
    code, kind, message = known
    status = _STATUS.get(kind, 400 if code == EXIT_USAGE or kind == "video" else 500)
    error_type = "invalid_request_error" if status < 500 else "server_error"
    kind = API_CODES.get(kind, kind)
    return ApiError(status, message, type=error_type, code=kind, exit_code=code)


def _json(body: dict, status: int = 200) -> JSONResponse:
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status)


def _error(exc: BaseException) -> JSONResponse:
    error = api_error(exc)
    return _json(error.body(), error.status)


def _check_auth(state: ServerState, request: Request) -> None:
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
                    "dtype": dtype_name(loaded.dtype), "rope_factor": engine.rope_factor,
                    "context": engine.checkpoint.context(engine.rope_factor),
                    "settings": {name: getattr(engine.settings, name) for name in LOAD_SETTINGS},
                    "speech": asdict(state.settings.speech),  # how it transcribes (``"subtitles": "asr"``)
                    "defaults": {**request_fields(engine.settings),
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


def _chunk(request: ChatRequest, delta: dict, finish: str | None = None, **extra: object) -> str:
    body = {"id": request.id, "object": "chat.completion.chunk", "created": request.created, "model": request.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body)}\n\n"


def _ignored(state: ServerState, request: ChatRequest) -> dict:
    """The ``x-vqa-ignored`` header of a response (and the first time a set of ignored keys is seen, a log line)."""
    if not request.ignored:
        return {}
    names = tuple(request.ignored)
    if names not in state.logged_ignored:
        state.logged_ignored.add(names)
        console.info(f"ignored request keys (vqa has no equivalent; logged once): {', '.join(names)}")
    return {IGNORED_HEADER: ",".join(names)}


def _unknown_model(state: ServerState, name: str) -> ApiError:
    return ApiError(404, f"this server serves {state.model_name!r}, not {name!r}", param="model",
                    code="model_not_found")


async def _read_body(request: Request, limit: int) -> object:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request is {int(declared) / 2**20:.1f} MiB; this server takes up to "
                            f"{limit / 2**20:.0f} MiB", code="request_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise ApiError(413, f"the request is over {limit / 2**20:.0f} MiB", code="request_too_large")
    return read_json(bytes(data))


JSON_TYPES = ("application/json",)  # and any application/...+json


def _check_content_type(state: ServerState, request: Request) -> None:
    """Without ``--api-key``, a body must say it is JSON: any web page can make a browser POST text/plain,
    form-encoded or multipart bodies (or none with no type) to this server without asking it first (no CORS
    preflight), but not application/json. With a key such pages cannot authenticate, so any type is read."""
    if state.api_key is not None:
        return
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind in JSON_TYPES or (kind.startswith("application/") and kind.endswith("+json")):
        return
    raise ApiError(415, f"send the request as Content-Type: application/json, not {kind or 'no type'!r} (a server "
                        "without --api-key reads only JSON, which a web page cannot send it unasked)",
                   param="content-type", code="unsupported_media_type")


def create_app(state: ServerState) -> Starlette:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    async def health(request: Request) -> Response:
        if state.worker is None:
            status = "failed" if state.load_error else "loading"
            return _json({"status": status, "model": state.model_name, "error": state.load_error}, 503)
        worker = state.worker
        return _json({"status": "ok", "model": state.model_name, **worker.stats(),
                      "feature_cache": worker.features.stats(), "kv_cache": worker.prefixes.stats()})

    async def models(request: Request) -> Response:
        try:
            _check_auth(state, request)
            _check_ready(state)
        except ApiError as exc:
            return _error(exc)
        return _json({"object": "list", "data": [model_entry(state)]})

    async def model(request: Request) -> Response:
        try:
            _check_auth(state, request)
            _check_ready(state)
            name = request.path_params["model"]
            if not state.knows(name):
                raise _unknown_model(state, name)
        except ApiError as exc:
            return _error(exc)
        return _json(model_entry(state))

    async def chat(request: Request) -> Response:
        try:
            _check_auth(state, request)
            _check_ready(state)
            _check_content_type(state, request)
            body = await _read_body(request, state.policy.max_bytes * 4 // 3 + 2**20)
            parsed = parse_chat(body, state.settings)
            if parsed.model is None:  # OpenAI requires it; vLLM answers with its model: so does vqa
                parsed.model = state.model_name
            elif not state.knows(parsed.model):
                raise _unknown_model(state, parsed.model)
            await run_in_threadpool(price, parsed, state.worker.engine, state.request_memory)  # before the media
            frames = state.worker.engine.checkpoint.frames_for(parsed.settings)  # the most images decoded
            media = None if parsed.text_only else await run_in_threadpool(
                resolve, parsed.urls, state.policy, frames, state.request_memory)  # decoded frames priced too
        except Exception as exc:  # noqa: BLE001 - every failure is an error object
            return _error(exc)
        headers = _ignored(state, parsed)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(kind: str, value: object) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        job = Job(parsed, media, emit)
        try:
            await loop.run_in_executor(state.decode_pool, state.worker.prepare, job)
        except Exception as exc:  # noqa: BLE001
            return _error(exc)
        finally:
            if media is not None:
                media.release()  # decoded (or cached): the model thread never reads the file
        state.worker.submit(job)
        if parsed.stream:
            return await _stream(request, parsed, job, events, headers)
        while True:
            try:
                kind, value = await asyncio.wait_for(events.get(), timeout=POLL)
            except TimeoutError:
                if await request.is_disconnected():
                    job.cancelled.set()
                    return Response(status_code=499)
                continue
            if kind == "done":
                response = _json(completion(parsed, value))
                response.headers.update(headers)
                return response
            if kind == "error":
                return _error(value)

    async def _stream(request: Request, parsed: ChatRequest, job: Job, events: asyncio.Queue,
                      headers: dict) -> Response:
        kind, value = await events.get()
        if kind == "error":
            return _error(value)

        async def body() -> AsyncIterator[str]:
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

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **headers})

    routes = [Route("/health", health, methods=["GET"]), Route("/v1/models", models, methods=["GET"]),
              Route("/v1/models/{model:path}", model, methods=["GET"]),
              Route("/v1/chat/completions", chat, methods=["POST"])]

    async def unexpected(request: Request, exc: Exception) -> Response:
        return _error(exc)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        """Starlette's own errors (no such route, a method a route does not take) as OpenAI error objects."""
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            error = ApiError(404, f"no route {where} (this server has {ROUTES})", code="unknown_url")
        elif exc.status_code == 405:
            error = ApiError(405, f"{where} is not allowed: {request.url.path} takes "
                                  f"{(exc.headers or {}).get('Allow', 'other methods')}", code="method_not_allowed")
        else:
            error = ApiError(exc.status_code, f"{where}: {exc.detail}", code="http_error",
                             type="invalid_request_error" if exc.status_code < 500 else "server_error")
        return _with(error, exc.headers or {})

    middleware = [Middleware(cors_middleware(), allow_origins=state.cors_origins, allow_methods=["GET", "POST"],
                             allow_headers=["*"], expose_headers=[IGNORED_HEADER])] if state.cors_origins else []
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={Exception: unexpected, HTTPException: http_error})


def _with(error: ApiError, headers: dict) -> JSONResponse:
    response = _json(error.body(), error.status)
    response.headers.update(headers)
    return response


def cors_middleware() -> type:
    """Starlette's CORS middleware, its refused preflights answered as OpenAI error objects."""
    from starlette.middleware.cors import CORSMiddleware

    class JsonCors(CORSMiddleware):
        def preflight_response(self, request_headers: Headers) -> Response:
            response = super().preflight_response(request_headers)
            if response.status_code < 400:
                return response
            reason = bytes(response.body).decode()
            error = ApiError(response.status_code, f"{reason} (this server allows CORS from "
                             f"{', '.join(self.allow_origins)}: vqa serve --cors-origin)", code="cors_refused")
            headers = {k: v for k, v in response.headers.items() if k.lower().startswith(("access-control", "vary"))}
            return _with(error, headers)

    return JsonCors
