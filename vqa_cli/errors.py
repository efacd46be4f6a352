"""Known errors and the one table that turns them into one-line messages and exit codes.

Users never see a traceback for their own mistake: every exception a user can cause is a
``VqaError`` (or a library exception listed in ``_FOREIGN``) and is printed as one line.
Exit codes: 2 for usage errors (bad flags, missing inputs, unknown models), 1 for failures.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class VqaError(Exception):
    """An error whose message is meant for users, printed as one line."""

    exit_code = EXIT_FAILURE
    kind = "error"


class UsageError(VqaError):
    exit_code = EXIT_USAGE
    kind = "usage"


class InputNotFoundError(UsageError):
    kind = "not_found"


class UnknownModelError(UsageError):
    kind = "unknown_model"


class ModelNotCachedError(VqaError):
    kind = "not_cached"


class UnsupportedModelError(VqaError):
    kind = "unsupported_architecture"


# Checkpoints: naming something that is not a checkpoint at all (no such directory or hub id, a
# directory without config.json or without .safetensors weights) is a usage error (2). A checkpoint
# whose files are there but broken (corrupt or empty JSON, truncated or corrupt safetensors, weights
# that do not match config.json, a missing tokenizer, shard or chat template) is a failure (1), like
# an undecodable video: the command was right, the files are not. So is an architecture vqa cannot
# run (UnsupportedModelError). Either way the message names the file and the cause.
class CheckpointError(VqaError):
    """A checkpoint's files are broken or incomplete: the message names the file and what is wrong."""

    kind = "checkpoint"


class ContextOverflowError(UsageError):
    kind = "context_overflow"


class InvalidValueError(UsageError):
    """A setting's value vqa cannot take (not finite, out of range, a NUL in a path), checked before anything
    loads; ``param`` names the setting as the server's requests spell it (``seed``, ``temperature``)."""

    kind = "invalid_value"

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param

    def for_flag(self) -> UsageError:
        """The same problem as the command line says it: ``--max-new-tokens`` for ``max_new_tokens``."""
        text, flag = str(self), "--" + self.param.replace("_", "-")
        return UsageError(flag + text[len(self.param):] if text.startswith(self.param) else text)


class NoAudioError(UsageError):
    """A video without an audio stream (or without the one ``--audio-stream`` names): nothing to transcribe."""

    kind = "no_audio"


class MemoryFitError(UsageError):
    """The request cannot fit the memory its device has (checked before any weight is downloaded or loaded)."""

    kind = "memory"


class OutputRefusedError(UsageError):
    """An output path vqa will not write: not one of its own files, an input, a folder, unwritable."""

    kind = "output"


class OutputBusyError(UsageError):
    """Another vqa process holds the output's lock."""

    kind = "output_busy"


class OutputWriteError(VqaError):
    """Writing an output failed part-way (a full disk, a vanished folder): what was written stays."""

    kind = "output_write"


OOM_HINT = "out of GPU memory: try --quant 4bit or fewer --frames"

# Exceptions raised by libraries, matched by class name so this module imports nothing heavy.
_FOREIGN: dict[str, tuple[int, str, str | None]] = {
    # name: (exit code, kind, fixed message or None to use str(exc))
    "OutOfMemoryError": (EXIT_FAILURE, "out_of_memory", OOM_HINT),  # torch.cuda.OutOfMemoryError
}

INTERNAL = "internal"  # the kind of an exception the table does not know: a bug
# Kinds the OpenAI API spells its own way: the server sends these codes and the --server client reads them back.
API_CODES = {"context_overflow": "context_length_exceeded"}


def one_line(text: str) -> str:
    """First non-empty line of ``text``, stripped: messages never span lines."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip()


def bug_text(exc: BaseException) -> str:
    """An exception the table does not know, in one line: its class and the first line of its message."""
    return f"{type(exc).__name__}: {one_line(str(exc))}"


def describe(exc: BaseException) -> tuple[int, str, str] | None:
    """(exit code, kind, one-line message) for a known error, None for a bug."""
    if isinstance(exc, VqaError):
        return exc.exit_code, exc.kind, one_line(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted", "interrupted"
    for cls in type(exc).__mro__:
        if cls.__name__ in _FOREIGN:
            code, kind, message = _FOREIGN[cls.__name__]
            return code, kind, message or one_line(str(exc))
    if isinstance(exc, MemoryError):
        return EXIT_FAILURE, "out_of_memory", "out of memory: try fewer --frames or --quant 4bit"
    if isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower():
        return EXIT_FAILURE, "out_of_memory", OOM_HINT
    return None
