"""The ``vqa`` command line: thin commands over the jobs in ``ask``, ``chat``, ``caption`` and ``video``.

One module per command; the options they share are declared once in ``options``, which also turns
them into ``RunSettings``. Nothing heavy is imported here: torch and transformers load inside the
commands that need them, so ``vqa --help`` and ``vqa frames`` stay fast. Known errors become one
line on stderr through ``errors.describe``; exit 2 for usage errors, 1 for failures.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vqa_cli import __version__, console
from vqa_cli.cli import ask, caption, chat, frames, models, serve, transcribe
from vqa_cli.cli import eval as eval_command
from vqa_cli.errors import EXIT_USAGE, describe

__all__ = ["app", "main"]



def _flags_without_a_type() -> None:
    """Show an on/off flag (``--version``, ``--json``, ``--help``) as a plain flag: typer 0.29's rich help prints a
    ``<bool>`` type after every option, which reads as if the flag took a value. Options that take one keep theirs."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_vqa_plain_flags", False):
        return  # a typer without the type column, or already done

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        return None if getattr(self, "is_bool_flag", False) else shown(self, ctx)

    display_type_rich._vqa_plain_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_a_type()

app = typer.Typer(
    name="vqa",
    help="Ask questions about videos and caption folders of them with local video-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(ask.ask)
app.command()(chat.chat)
app.command()(caption.caption)
app.command()(frames.frames)
app.command()(models.models)
app.command()(models.download)
app.command()(serve.serve)
app.command(name="eval")(eval_command.eval)
app.command()(transcribe.transcribe)


def _version(value: bool) -> None:
    if value:
        print(f"vqa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Ask questions about videos and caption folders of them with local video-language models."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning known errors into one line and an exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="vqa", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        console.error("interrupted")
        code = 130
    except typer.TyperException as exc:  # bad flags and arguments: typer prints usage and the problem
        exc.show()
        code = exc.exit_code if exc.exit_code else EXIT_USAGE
    except BaseException as exc:  # noqa: BLE001 - the one place errors become messages
        known = describe(exc)
        if known is None:
            raise
        code, _, message = known
        console.error(message)
    sys.exit(code if isinstance(code, int) else 0)
