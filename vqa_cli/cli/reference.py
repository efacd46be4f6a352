"""The command-line reference (docs/cli.md), written from the Typer app itself.

``python -m vqa_cli.cli.reference > docs/cli.md`` regenerates it; tests/test_cli_reference.py fails when
the committed file and the app disagree. One section per command, a table of its arguments and one of its
options (names, type or choices, default, environment variable, help). The text is plain markdown: no
terminal width, no colour, rich markup reduced to its text, so the same app always gives the same bytes.
Not imported by ``vqa`` itself, so ``vqa --help`` does not load it.
"""

from __future__ import annotations

import re
import sys
from typing import Any

__all__ = ["reference", "main"]

REGENERATE = "python -m vqa_cli.cli.reference > docs/cli.md"


def _plain(text: str | None) -> str:
    """Help text as the terminal shows it, without markup: rich tags reduced to their text."""
    if not text:
        return ""
    from rich.errors import MarkupError
    from rich.text import Text

    try:
        return Text.from_markup(text).plain
    except MarkupError:  # not markup after all: shown as written
        return text


def _paragraphs(text: str | None) -> list[str]:
    """A docstring's paragraphs, each on one line."""
    return [" ".join(part.split()) for part in re.split(r"\n\s*\n", _plain(text)) if part.strip()]


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _type(param: Any) -> str:
    """The value a parameter takes: its choices, or its type with its range."""
    if getattr(param, "is_flag", False):
        return "flag"
    described = param.type_descriptor
    if described.is_choice:
        text = " \\| ".join(_code(str(choice)) for choice in described.choices or ())
    else:
        text = re.sub(r"^list\[(.*)\]$", r"\1", param.bare_type())  # the values, one at a time
        if param.min is not None and param.max is not None:
            text += f", {_number(param.min)} to {_number(param.max)}"
        elif param.min is not None:
            text += f", ≥ {_number(param.min)}"
        elif param.max is not None:
            text += f", ≤ {_number(param.max)}"
    if param.multiple or param.nargs == -1:
        text += ", repeatable" if param.multiple else ", one or more"
    return text


def _default(param: Any) -> str:
    value = param.default
    if getattr(param, "is_flag", False) and not getattr(param, "secondary_opts", None):
        return "on" if value else "off"
    if value is None or value == [] or value == ():
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(_code(str(item)) for item in value)
    if isinstance(value, bool):
        return _code(("--" if value else "--no-") + param.name.replace("_", "-"))
    return _code(_number(value))


def _envvar(param: Any) -> str:
    names = param.envvar
    if not names:
        return ""
    return ", ".join(_code(f"${name}") for name in ([names] if isinstance(names, str) else names))


def _names(param: Any) -> str:
    long_first = sorted(param.opts, key=lambda name: not name.startswith("--"))
    return ", ".join(_code(name) for name in [*long_first, *getattr(param, "secondary_opts", [])])


def _usage(argument: Any) -> str:
    """An argument in the usage line: ``VIDEO``, ``[QUESTIONS]...``."""
    text = argument.name.upper() if argument.required else f"[{argument.name.upper()}]"
    return text + ("..." if argument.nargs == -1 else "")


def _command(name: str, command: Any) -> list[str]:
    lines = [f"## vqa {name}", ""]
    usage = " ".join(_usage(param) for param in command.params if param.param_type_name == "argument")
    lines += ["```", f"vqa {name} [OPTIONS] {usage}".rstrip(), "```", ""]
    for paragraph in _paragraphs(command.help):
        lines += [paragraph, ""]
    arguments = [param for param in command.params if param.param_type_name == "argument" and not param.hidden]
    options = [param for param in command.params if param.param_type_name == "option" and not param.hidden]
    if arguments:
        lines += ["| Argument | Type | Required | Help |", "|---|---|:-:|---|"]
        for param in arguments:
            required = "yes" if param.required else ""
            lines.append(f"| `{param.name.upper()}` | {_type(param)} | {required} | {_cell(_plain(param.help))} |")
        lines.append("")
    if options:
        lines += ["| Option | Type | Default | Environment | Help |", "|---|---|---|---|---|"]
        for param in options:
            cells = [_names(param), _type(param), _default(param), _envvar(param), _cell(_plain(param.help))]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["| `--help`, `-h` | flag |  |  | Show the help and exit. |", ""]
    return lines


def reference() -> str:
    """The markdown reference of every visible command of ``vqa``."""
    import typer

    from vqa_cli.cli import app

    group = typer.main.get_command(app)
    lines = [
        "# Command-line reference",
        "",
        f"<!-- Generated from the Typer app by `{REGENERATE}`; do not edit by hand. -->",
        "",
        *_paragraphs(group.help),
        "",
        "Every command takes `-h`/`--help`; `vqa --version` prints the version. Exit status: 0 success,",
        "1 failure, 2 usage error, 130 interrupted.",
        "",
    ]
    commands = [(name, command) for name, command in group.commands.items() if not command.hidden]
    lines += ["Commands: " + ", ".join(f"[`{name}`](#vqa-{name})" for name, _ in commands) + ".", ""]
    for name, command in commands:
        lines += _command(name, command)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(reference())


if __name__ == "__main__":
    main()
