"""``vqa chat``: a multi-turn conversation about one video, kept in the KV cache.

Interactive on a terminal (a prompt on stderr, answers streamed to stdout, context use after
each answer); driven through stdin it reads one message per line and prints one answer per
line. Commands: ``/reset`` (forget the turns, keep the video), ``/frames``, ``/save FILE``
(the transcript as JSON), ``/quit`` (or end of input).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from vqa_cli import console
from vqa_cli.errors import ContextOverflowError, VqaError
from vqa_cli.jobs.backend import backend_for
from vqa_cli.jobs.segments import settle_subtitles
from vqa_cli.output import records, subtitles, writer

if TYPE_CHECKING:
    from vqa_cli.settings import RunSettings

TURN_RESERVE = 1024  # context kept free for later turns when choosing the RoPE factor
WARN_AT = 0.9  # warn when this share of the context is used

HELP = "commands: /reset  /frames  /save FILE  /quit"


def _read(interactive: bool) -> str | None:
    try:
        if interactive:
            return console.stderr.input("[bold cyan]you>[/bold cyan] ")
        line = sys.stdin.readline()
        return None if line == "" else line.rstrip("\n")
    except EOFError:
        return None


def run_chat(settings: RunSettings, video: str, *, server: str | None = None, model_given: bool = True) -> int:
    """The conversation loop; ``server``: a ``vqa serve`` URL that answers instead (same output)."""
    interactive = sys.stdin.isatty() and console.stderr_is_tty()
    backend = backend_for(server, model_given)
    settings = backend.settle(settle_subtitles(settings, [video]))
    conversation, about, said = backend.conversation(settings, video, TURN_RESERVE)
    if interactive:
        console.stderr.print(f"[dim]{about}. {HELP}[/dim]")
    turns: list[dict] = []
    while True:
        line = _read(interactive)
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            if command in ("/quit", "/exit"):
                break
            if command == "/reset":
                conversation.reset()
                turns.clear()
                console.info("conversation reset (the video stays encoded)")
            elif command == "/frames":
                clip = conversation.clip
                for idx, ts in zip(clip.indices, clip.timestamps, strict=True):
                    print(f"{idx}\t{ts:.3f}", flush=True)
            elif command == "/save":
                if not arg.strip():
                    console.error("/save needs a file name")
                    continue
                record = records.transcript(video, settings, conversation.clip, turns)
                try:
                    writer.check_output(arg.strip(), [video], flag="/save",
                                        accept=writer.vqa_wrote("choose another file name"))
                    writer.write_json(arg.strip(), record, remember=True)
                except VqaError as exc:
                    console.error(str(exc))
                    continue
                except OSError as exc:
                    console.error(f"cannot save to {arg.strip()!r}: {exc.strerror}")
                    continue
                console.info(f"saved {len(turns)} turns to {arg.strip()}")
            else:
                console.error(f"unknown command {command}; {HELP}")
            continue
        printer = console.StreamPrinter("thinking" if interactive else None)
        try:
            # the subtitles go before the conversation's first question, as before a single question
            turn = conversation.ask(text if turns else subtitles.with_subtitles(text, said), keep=True,
                                    on_text=printer)
        except ContextOverflowError as exc:
            printer.stop()
            console.error(str(exc))
            if not interactive:  # keep one answer line per message for scripts
                print(flush=True)
            continue
        finally:
            printer.stop()
        sys.stdout.write("\n")
        sys.stdout.flush()
        turns.append({"question": text, "answer": turn.answer})
        used, limit = conversation.used_tokens(), conversation.context_limit
        if interactive:
            console.stderr.print(f"[dim]context {used}/{limit} tokens[/dim]")
        if used >= WARN_AT * limit:
            console.info(f"warning: the context is {used / limit:.0%} full ({used}/{limit}); /reset to start over")
    return 0
