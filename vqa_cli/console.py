"""Output helpers: humans get rich text and progress on stderr (TTY only), machines get data on stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

stderr = Console(stderr=True, highlight=False)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def info(message: str) -> None:
    """A one-line notice on stderr (always shown: it explains behaviour, e.g. CPU fallback)."""
    if stderr_is_tty():
        stderr.print(f"[dim]{message}[/dim]")
    else:
        print(message, file=sys.stderr, flush=True)


def error(message: str) -> None:
    if stderr_is_tty():
        stderr.print(f"[bold red]error:[/bold red] {message}")
    else:
        print(f"error: {message}", file=sys.stderr, flush=True)


@contextmanager
def status(message: str) -> Iterator[Any]:
    """A spinner on stderr while work runs; silent when stderr is not a terminal."""
    if stderr_is_tty():
        with stderr.status(message) as s:
            yield s
    else:
        yield None


class _NoStatus:
    def start(self) -> None: ...

    def stop(self) -> None: ...


def spinner(message: str) -> Any:
    """A started spinner on stderr (TTY only) with ``stop()``; a no-op object otherwise."""
    if not stderr_is_tty():
        return _NoStatus()
    s = stderr.status(message)
    s.start()
    return s


def emit_json(obj: Any, *, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(obj, ensure_ascii=False) + "\n")
    stream.flush()
