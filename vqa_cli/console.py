"""Output helpers: humans get rich text and progress on stderr (TTY only), machines get data on stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, TextIO

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress, Task
    from rich.status import Status

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
def status(message: str) -> Iterator[Status | None]:
    """A spinner on stderr while work runs; silent when stderr is not a terminal."""
    if stderr_is_tty():
        with stderr.status(message) as s:
            yield s
    else:
        yield None


class Spinner(Protocol):
    """What ``spinner`` returns: rich's ``Status``, or a no-op."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class _NoStatus:
    def start(self) -> None: ...

    def stop(self) -> None: ...


def spinner(message: str) -> Spinner:
    """A started spinner on stderr (TTY only) with ``stop()``; a no-op object otherwise."""
    if not stderr_is_tty():
        return _NoStatus()
    s = stderr.status(message)
    s.start()
    return s


def emit_json(obj: object, *, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(obj, ensure_ascii=False) + "\n")
    stream.flush()


class _NoProgress:
    def __bool__(self) -> bool:
        return False

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def progress(unit: str) -> Progress | _NoProgress:
    """A rich progress bar on stderr with count, rate (``unit``/s) and ETA; a falsy no-op when stderr is
    not a terminal."""
    if not stderr_is_tty():
        return _NoProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"-- {unit}/s" if speed is None else f"{speed:.2f} {unit}/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=stderr)


class StreamPrinter:
    """Writes streamed text to stdout; stops the spinner at the first piece and trims leading space."""

    def __init__(self, spinner_text: str | None = None) -> None:
        self.spinner = spinner(spinner_text) if spinner_text else None
        self.started = False

    def __call__(self, text: str) -> None:
        if not self.started:
            self.stop()
            self.started = True
            text = text.lstrip()
        sys.stdout.write(text)
        sys.stdout.flush()

    def stop(self) -> None:
        if self.spinner is not None:
            self.spinner.stop()


def table(header: list[str], rows: list[list[str]], caption: str | None = None) -> None:
    """A table on stdout: a rich table on a terminal, tab-separated lines (header first) in a pipe."""
    if stdout_is_tty():
        from rich.console import Console
        from rich.table import Table

        t = Table(*header, caption=caption)
        for row in rows:
            t.add_row(*row)
        Console().print(t)
        return
    print("\t".join(header))
    for row in rows:
        print("\t".join(row))


def fields(rows: list[tuple[str, str]], width: int = 15) -> None:
    """Labelled lines on stdout (``label`` padded to ``width``), e.g. ``--plan``; an indented label is a sub-row."""
    lines = []
    for label, value in rows:
        indent = len(label) - len(label.lstrip())
        lines.append(" " * indent + f"{label.strip():<{width - indent}}{value}")
    print("\n".join(lines))
