"""``vqa ARGV`` run in the test's own process, for the tests of the command line."""

from __future__ import annotations

import io
import sys

import pytest

from vqa_cli.cli import main


def run(argv: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """``vqa ARGV`` in this process: (exit code, stdout, stderr); ``stdin`` replaces standard input."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err
