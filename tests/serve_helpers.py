"""A real ``vqa serve`` process for tests: ``start``, ``Server`` and ``http`` live in ``vqa_cli.testing`` (the
benchmarks start it too) and are re-exported here beside ``raw`` and ``in_process`` (the app in this process)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from vqa_cli.testing import LISTENING, Server, http, start  # noqa: F401  (re-exported for the tests)


def raw(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None, timeout: float = 300
        ) -> tuple[int, dict, bytes]:
    """Any request as sent: the status, the headers (lower-case names) and the body's bytes."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


@contextlib.contextmanager
def in_process(state: object, timeout: float = 30) -> Iterator[str]:
    """``vqa serve``'s app over ``state`` (a ``serve._app.ServerState`` with its worker) on a free local port in
    this process: its url once ``/health`` answers; the server and the worker stop on the way out."""
    import uvicorn

    from vqa_cli.serve._app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.time() + timeout
    try:
        while True:
            try:
                if http(url + "/health")[0] == 200:
                    break
            except OSError:  # not listening yet
                pass
            assert time.time() < deadline, "the in-process server did not start"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        state.worker.stop()
        sock.close()
