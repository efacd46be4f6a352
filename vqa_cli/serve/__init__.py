"""``vqa serve``: load once, answer many, behind an OpenAI-compatible API.

- ``_body``: the request body as strict JSON, and ``ApiError`` (a client's mistake as OpenAI's error object);
  ``_requests``: an OpenAI chat request -> turns, media urls, vqa's per-request settings (``apply_fields``), sampling,
  stop strings; ``_media``: one video (path under ``--media-root``, ``data:`` or, with ``--allow-urls``,
  http(s)) or images as frames; ``_pricing``: the request's memory and tokens, checked before any work.
- ``_worker``: decode threads, then one model thread: the feature cache (``features``), the kept KV
  prefixes of conversations (``_kv``), batches of compatible requests, cancellation.
- ``_app``: the routes (Starlette), errors as OpenAI error objects, server-sent events.

The socket is bound before the weights load (``/health`` answers 503 "loading" meanwhile), so a
client can wait for the server; a broken checkpoint is found from its configs before binding.
"""

from __future__ import annotations

import math
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vqa_cli import console
from vqa_cli.errors import UsageError, VqaError, describe
from vqa_cli.settings import (
    DEFAULT_BATCH,
    DEFAULT_WORKERS,
    SERVE_FEATURE_CACHE_GIB,
    SERVE_HOST,
    SERVE_KV_CACHE_GIB,
    SERVE_MAX_UPLOAD_MB,
    SERVE_PORT,
)
from vqa_cli.units import GIB

if TYPE_CHECKING:
    from vqa_cli.model.checkpoint import Budget, Checkpoint
    from vqa_cli.model.fit import MemoryCheck
    from vqa_cli.settings import RunSettings


@dataclass
class ServeOptions:
    host: str = SERVE_HOST
    port: int = SERVE_PORT
    media_roots: list[str] | None = None  # None: the current folder
    allow_urls: bool = False
    api_key: str | None = None
    max_upload_mb: float = SERVE_MAX_UPLOAD_MB
    feature_cache: str | None = None  # a folder: visual tokens kept on disk too
    feature_cache_gib: float = SERVE_FEATURE_CACHE_GIB
    kv_cache_gib: float = SERVE_KV_CACHE_GIB
    max_batch: int = DEFAULT_BATCH
    batch_wait: float = 0.02
    workers: int = DEFAULT_WORKERS
    served_name: str | None = None  # the model's id on the API; None: the --model given
    cors_origins: list[str] | None = None  # browser origins allowed to call the server (CORS); None: none
    max_request_memory: int | None = None  # bytes one request may need besides the weights; None: request_limit


class ServerLoadError(VqaError):
    """The model could not be loaded after the server started."""

    kind = "load"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def model_names(model: str, folder: Path) -> set[str]:
    """What a request's ``model`` may say besides the served name: the ``--model`` given, the checkpoint's hub
    id and its catalog alias (when known: from the name given, or the hub cache folder it was found in), its
    folder's name and its absolute path."""
    from vqa_cli.model.families.registry import CHECKPOINTS, resolve_alias

    folder = Path(folder).expanduser().absolute()
    names = {model, str(folder), str(folder.resolve())}
    hub = resolve_alias(model) if "/" in resolve_alias(model) and not Path(model).expanduser().exists() else None
    cached = next((part for part in folder.parts if part.startswith("models--")), None)
    if hub is None and cached is not None:  # ~/.cache/huggingface/hub/models--ORG--NAME/snapshots/HASH
        hub = cached.removeprefix("models--").replace("--", "/", 1)
    if hub is not None:
        names.add(hub)
        names.update(c.alias for c in CHECKPOINTS if c.repo_id.casefold() == hub.casefold())
    if cached is None:  # a snapshot's folder name is a commit hash: no name for anyone to type
        names.add(folder.name)
    return names


def run_server(settings: RunSettings, options: ServeOptions) -> int:
    import uvicorn

    from vqa_cli.jobs.chat import TURN_RESERVE
    from vqa_cli.model.features import FeatureCache
    from vqa_cli.model.session import check_memory, open_model, plan_model
    from vqa_cli.serve._app import ServerState, create_app
    from vqa_cli.serve._kv import PrefixCache
    from vqa_cli.serve._media import MediaPolicy
    from vqa_cli.serve._worker import ModelWorker

    roots = [Path(r).expanduser() for r in (options.media_roots or ["."])]
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"--media-root {str(root)!r} is not a folder")
    if options.max_batch < 1 or options.workers < 1:
        raise UsageError("--batch-size and --workers must be at least 1")
    for flag, value in (("--max-upload-mb", options.max_upload_mb), ("--feature-cache-gib", options.feature_cache_gib),
                        ("--kv-cache-gib", options.kv_cache_gib)):
        if not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, not {value}")
    if options.host not in ("127.0.0.1", "localhost", "::1") and not options.api_key:
        console.info(f"warning: serving on {options.host} without --api-key: anyone who reaches it can use it")
    # A broken checkpoint, or a model that cannot fit this machine, fails here, before binding.
    checkpoint, budget = plan_model(settings, ["?"], reserve=TURN_RESERVE)
    checked = check_memory(checkpoint, settings, ["?"], budget, batch=options.max_batch, reserve=TURN_RESERVE)
    limit = options.max_request_memory
    if limit is None:
        limit = request_limit(checkpoint, settings, budget, checked)
    policy = MediaPolicy([Path(r).resolve() for r in roots], int(options.max_upload_mb * 2**20), options.allow_urls)
    origins = [o.strip().rstrip("/") for value in options.cors_origins or [] for o in value.split(",") if o.strip()]
    state = ServerState(settings, policy, options.api_key, model_names(settings.model, checkpoint.dir),
                        decode_pool=ThreadPoolExecutor(options.workers, "vqa-decode"),
                        served_name=options.served_name or None, cors_origins=origins, request_memory=limit)
    sock = _listen(options.host, options.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(create_app(state), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def load() -> None:
        try:
            session = open_model(settings, ["?"], reserve=TURN_RESERVE)
            cache = FeatureCache(int(options.feature_cache_gib * GIB), options.feature_cache)
            state.worker = ModelWorker(session.engine, cache, PrefixCache(int(options.kv_cache_gib * GIB)),
                                       max_batch=options.max_batch, batch_wait=options.batch_wait)
            console.info(f"ready: {state.model_name} at http://{_url_host(host)}:{port}/v1 "
                         f"(loaded in {session.timings['load']:.1f}s)")
        except BaseException as exc:  # noqa: BLE001 - reported as the command's error after shutdown
            failure.append(exc)
            known = describe(exc)
            state.load_error = f"the model failed to load: {known[2] if known else exc}"
            server.should_exit = True

    if limit is not None:
        from vqa_cli.units import size_text

        console.info(f"a request may need up to {size_text(limit)} besides the weights (--max-request-memory)")
    console.info(f"listening on http://{_url_host(host)}:{port} (loading {settings.model})")
    threading.Thread(target=load, name="vqa-load", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        if state.worker is not None:
            state.worker.stop()
        state.decode_pool.shutdown(wait=False, cancel_futures=True)
        sock.close()
    if failure:
        exc = failure[0]
        if describe(exc) is None:
            raise ServerLoadError(f"the model failed to load: {type(exc).__name__}: {exc}") from exc
        raise exc
    return 0


def request_limit(checkpoint: Checkpoint, settings: RunSettings, budget: Budget,
                  checked: MemoryCheck | None = None) -> int | None:
    """``--max-request-memory``'s default: the memory the computing device has at startup (``machine.probe_memory``;
    within its ``--max-memory`` cap) less what the server itself holds there: the weights, the guide model and the
    runtime allowance, as ``--plan`` estimates them. None when the device's memory is not known."""
    from vqa_cli.model import fit, machine

    mem = checked or fit.measure(checkpoint, settings, budget, machine.probe_memory)
    est = mem.estimate
    have = mem.available.get(est.device)
    cap = est.caps.get(est.device)
    if cap is not None:
        have = cap if have is None else min(have, cap)
    if have is None:
        return None
    return max(0, have - est.weights_on(est.device) - est.guide_bytes - est.runtime_bytes)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
