"""docs/cli.md is the Typer app written out, and README's options table names only options that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from vqa_cli.cli import app
from vqa_cli.cli.reference import REGENERATE, reference

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"
COMMANDS = ("ask", "chat", "caption", "frames", "models", "download", "serve", "eval", "transcribe")


def _sections(markdown: str) -> dict[str, str]:
    """``## vqa NAME`` sections of a markdown file, by command name."""
    parts = re.split(r"^## vqa (\S+)\n", markdown, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _documented_options(section: str) -> set[str]:
    """Every option name in the first cell of a section's option table rows."""
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `-"):
            names |= set(re.findall(r"`(-[^`]+)`", line.split(" | ")[0]))
    return names


def _help_options(command: str) -> set[str]:
    """The option names ``vqa COMMAND --help`` prints in its option panels (a wide terminal, so none wrap)."""
    env = {**os.environ, "COLUMNS": "250", "TERM": "dumb"}
    done = subprocess.run([sys.executable, "-m", "vqa_cli", command, "--help"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    names: set[str] = set()
    for line in done.stdout.splitlines():
        row = re.match(r"^│ (?:\* {1,3}| {0,3})(--[\w-]+)(?:/(--[\w-]+))?\s+(-\w\b)?", line)
        if row:
            names |= {name for name in row.groups() if name}
    return names


def test_docs_cli_md_is_the_app_written_out():
    committed = CLI_MD.read_text(encoding="utf-8")
    assert committed == reference(), f"docs/cli.md is out of date with the command line: run `{REGENERATE}`"


def test_the_reference_documents_every_option_that_help_prints():
    """An independent reading of the same app: the options in ``vqa COMMAND --help``, as typer's formatter prints
    them, are exactly those in that command's section of the reference."""
    sections = _sections(reference())
    assert tuple(sections) == COMMANDS
    for command in COMMANDS:
        assert _documented_options(sections[command]) == _help_options(command), command


def test_the_reference_does_not_depend_on_the_terminal_and_loads_no_torch():
    script = ("import sys\nfrom vqa_cli.cli.reference import main\nmain()\n"
              "print(sorted(m for m in ('torch', 'transformers', 'cv2') if m in sys.modules), file=sys.stderr)\n")
    outputs = []
    for columns in ("40", "300"):
        env = {**os.environ, "COLUMNS": columns, "FORCE_COLOR": "1"}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip() == "[]"
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] == CLI_MD.read_text(encoding="utf-8")
    assert "\x1b[" not in outputs[0]


def test_vqa_help_does_not_import_the_reference():
    script = "import sys\nfrom vqa_cli.cli import app\nprint('vqa_cli.cli.reference' in sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def _readme_options_table() -> tuple[list[str], list[list[str]]]:
    """README's ``## Options`` table: its header cells and its rows' cells."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    header, *body = rows
    cells = [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in body]
    return [cell.strip() for cell in header.split("|")[1:-1]], cells


def test_readme_options_table_names_only_options_the_commands_have():
    header, rows = _readme_options_table()
    commands = [name for name in header if name in COMMANDS]
    assert commands == ["ask", "chat", "caption", "frames"]
    group = typer.main.get_command(app)
    assert rows
    for cells in rows:
        names = re.findall(r"`(-[^`]+)`", cells[0])
        assert names, cells[0]
        marked = [command for command in commands if cells[header.index(command)] == "✓"]
        assert marked, cells[0]
        for command in marked:
            options = {name for param in group.commands[command].params for name in param.opts + param.secondary_opts}
            missing = set(names) - options
            assert not missing, f"README's options table gives {sorted(missing)} to `vqa {command}`, which has none"


@pytest.mark.parametrize("doc", ["README.md", "docs/usage.md"])
def test_docs_link_the_reference(doc):
    assert "cli.md" in (ROOT / doc).read_text(encoding="utf-8")
