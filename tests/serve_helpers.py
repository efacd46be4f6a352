"""A real ``vqa serve`` process for tests: ``start``, ``Server`` and ``http`` live in ``vqa_cli.testing`` (the
benchmarks start it too) and are re-exported here beside ``raw``."""

from __future__ import annotations

import urllib.error
import urllib.request

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
