"""``vqa chat``: a multi-turn conversation about one video, kept in the KV cache.

Interactive on a terminal (a prompt on stderr, answers streamed to stdout, context use after
each answer); driven through stdin it reads one message per line and prints one answer per
line. Commands: ``/reset`` (forget the turns, keep the video), ``/frames``, ``/save FILE``
(the transcript as JSON), ``/quit`` (or end of input).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vqa_cli import console
from vqa_cli.errors import ContextOverflowError, VqaError
from vqa_cli.model.session import open_session
from vqa_cli.output import records, writer

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


def _open(settings: Any, video: str, interactive: bool, server: str | None, model_given: bool) -> tuple[Any, Any]:
    """(settings, conversation): the video encoded here, or a ``client.RemoteConversation`` with ``server``."""
    if server:
        from vqa_cli.model.session import check_input
        from vqa_cli.remote import client

        remote, settings = client.connect(server, settings, model_given=model_given)
        if Path(video).exists():
            check_input(video)
        if interactive:
            console.stderr.print(f"[dim]{video} on {remote.base}. {HELP}[/dim]")
        return settings, client.RemoteConversation(remote, settings, video)
    from vqa_cli.model.conversation import Conversation

    session = open_session(settings, video, ["?"], reserve=TURN_RESERVE)
    engine, clip = session.engine, session.clip
    with console.status("encoding the video"):
        conversation = Conversation.open(engine, clip)
    if interactive:
        console.stderr.print(f"[dim]{video}: {len(clip.indices)} frames, {conversation.features.shape[0]} visual "
                             f"tokens, context {conversation.context_limit}. {HELP}[/dim]")
    return settings, conversation


def run_chat(settings: Any, video: str, *, server: str | None = None, model_given: bool = True) -> int:
    """The conversation loop; ``server``: a ``vqa serve`` URL that answers instead (same output)."""
    interactive = sys.stdin.isatty() and console.stderr_is_tty()
    settings, conversation = _open(settings, video, interactive, server, model_given)
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
            turn = conversation.ask(text, keep=True, on_text=printer)
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
