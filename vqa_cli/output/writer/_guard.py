"""Before anything loads, and while writing: vqa writes only to its own files, one process at a time.

The one output policy, for every file vqa writes (docs/output.md has the table): a file is created new, or it
is one vqa wrote and may be appended to or replaced (recognised by its content: vqa JSON Lines records of this
command's kind, a vqa summary, or a whole file in the list of files vqa wrote, ``_registry``), else it is
refused with one line naming ``--force`` (where the command has it) or another path. An input is never
written, whatever the flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from vqa_cli.errors import OutputBusyError, OutputRefusedError, OutputWriteError
from vqa_cli.output.writer._files import MIN_FREE_BYTES, SUMMARY_KEYS, _is_record, _where, _writing, read_output

# ---- checks before anything loads -----------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable(path: str, flag: str) -> None:
    """Refuse a place this process cannot write: a folder, a read-only file or folder, a full disk."""
    real = Path(os.path.realpath(path))
    if real.is_dir():
        raise OutputRefusedError(f"{flag} {_where(path)} is a folder, not a file")
    if real.exists() and not real.is_file():
        raise OutputRefusedError(f"{flag} {_where(path)} is not a regular file")
    folder = _existing_ancestor(real.parent)
    if not folder.is_dir():
        raise OutputRefusedError(f"{flag} {_where(path)}: {_where(folder)} is a file, not a folder")
    # Try it rather than trust permission bits: root, ACLs and read-only mounts all answer truthfully.
    if real.exists():
        try:
            with open(real, "ab"):
                pass
        except OSError as exc:
            raise OutputRefusedError(f"cannot write {flag} {_where(path)}: {exc.strerror}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".vqa-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputRefusedError(f"cannot write {flag} {_where(path)}: {_where(folder)}: {exc.strerror}") from None
    try:
        fs = os.statvfs(folder)
    except OSError:
        return
    if fs.f_bavail * fs.f_frsize < MIN_FREE_BYTES:
        raise OutputWriteError(f"cannot write {flag} {_where(path)}: no space left on the device of {_where(folder)}")


def jsonl_file(path: str, flag: str, kind: str | None = None) -> None:
    """An existing output ``check_output`` may append to: vqa JSON Lines, of records of ``kind`` when given
    (``read_output`` says why not)."""
    read_output(path, kind=kind)


def records_of(kind: str) -> Callable[[str, str], None]:
    """``accept`` for a JSON Lines output of ``kind`` records (``caption``, ``eval``): one file, one kind."""
    return lambda path, flag: jsonl_file(path, flag, kind)


def vqa_wrote(advice: str) -> Callable[[str, str], None]:
    """``accept`` for a whole file vqa replaces (a sidecar, a chat transcript): one in the list of files vqa
    wrote (``_registry``: same size and SHA-256), else refused naming ``advice`` (``--force``, another path)."""
    def accept(path: str, flag: str) -> None:
        from vqa_cli.output.writer._registry import wrote_file

        if not wrote_file(os.path.realpath(path)):
            raise OutputRefusedError(f"{flag} {_where(path)} exists and was not written by vqa: refusing to replace "
                                     f"it; {advice}")
    return accept


def summary_file(path: str, flag: str) -> None:
    """An existing file ``--summary`` may replace: an earlier vqa summary."""
    try:
        obj = json.loads(Path(path).read_bytes())
    except (ValueError, UnicodeDecodeError, OSError):
        obj = None
    if not _is_record(obj, SUMMARY_KEYS):
        raise OutputRefusedError(f"{flag} {_where(path)} exists and is not a vqa summary: refusing to overwrite it")


def check_output(path: str, inputs: Iterable[str], *, flag: str = "--out",
                 accept: Callable[[str, str], None] | None = jsonl_file, probe: bool = True) -> None:
    """Everything that can be known about an output before the model loads; ``-`` (stdout) is always fine.

    Refuses (``OutputRefusedError``, exit 2) an output that is one of the ``inputs``, an existing
    non-empty file that ``accept(path, flag)`` refuses (``jsonl_file``, ``records_of``, ``summary_file``,
    ``vqa_wrote``; None: any file may be replaced, only as ``--force`` asks), a folder, or a place that cannot be
    written (``probe``: try the folder; once is enough for many files in one folder); a full disk is
    ``OutputWriteError`` (exit 1). Nothing is created or changed.
    """
    if path == "-":
        return
    real = Path(os.path.realpath(path))
    if real.exists():
        me = real.stat()
        for video in inputs:
            try:
                same = os.path.samestat(me, os.stat(video))
            except OSError:
                same = False
            if same:
                raise OutputRefusedError(f"{flag} {_where(path)} is one of the input videos: refusing to overwrite it")
    if accept is not None and real.is_file() and real.stat().st_size:
        accept(path, flag)
    if probe:
        _check_writable(path, flag)
    elif real.exists() and not real.is_file():
        raise OutputRefusedError(f"{flag} {_where(path)} is not a regular file")


def check_sidecars(out_dir: str, videos: Iterable[str], name: str, *, force: bool = False) -> None:
    """``--out-dir``: each video's ``DIR/NAME.EXT`` is new or a file vqa wrote (then it is replaced); a file of the
    user's (``clip.srt`` made by hand beside ``clip.mp4``) is refused unless ``force``. Never an input."""
    from vqa_cli.output.writer._formats import sidecar_path

    videos = list(videos)
    accept = None if force else vqa_wrote("give --force to replace it, or choose another --out-dir")
    for i, video in enumerate(videos):
        check_output(str(sidecar_path(out_dir, video, name)), videos, flag="--out-dir", accept=accept, probe=i == 0)


# ---- one writer per file ---------------------------------------------------------------------


def lock_path(path: str | Path) -> Path:
    """The lock file of an output: hidden, beside the real file (a symlink's target)."""
    real = Path(os.path.realpath(path))
    return real.with_name(f".{real.name}.lock")


class OutputLock:
    """An exclusive ``flock`` on the output's lock file for as long as this process writes the output, and on the
    output file itself when it exists (its inode: a hard-linked second name is the same file).

    A second process gets ``OutputBusyError`` (exit 2) naming the output and the holder's pid. The
    kernel releases the lock when the holder exits in any way. The lock file holds the pid and is
    removed on release. Both locks are needed: an atomic rewrite gives the name a new inode (the lock
    by name still holds), and a hard link gives the inode another name (the lock on the file holds).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = lock_path(path)
        self._fd: int | None = None
        self._file_fd: int | None = None  # the output itself, flocked (by inode)

    def __enter__(self) -> OutputLock:
        import fcntl

        while True:
            with _writing(self.lock, "create the lock file"):
                self.lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"another vqa process (pid {holder})" if holder else "another vqa process"
                raise OutputBusyError(f"{_where(self.path)} is being written by {who}: wait for it to finish "
                                      "or choose another --out") from None
            # The holder before us may have removed the file after we opened it: lock the file on disk.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        self._lock_file_itself()
        return self

    def _lock_file_itself(self) -> None:
        """The lock file is by name; an existing output is locked by its inode too, so that another name of the same
        file (a hard link) is refused as well."""
        import fcntl

        try:
            fd = os.open(os.path.realpath(self.path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # not there yet (created by this writer) or not openable: the lock by name holds
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self.__exit__()
            raise OutputBusyError(f"{_where(self.path)} is being written by another vqa process (through another "
                                  "name of the same file): wait for it to finish or choose another --out") from None
        self._file_fd = fd

    def __exit__(self, *exc: object) -> None:
        if self._file_fd is not None:
            os.close(self._file_fd)
            self._file_fd = None
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.lock)  # while still locked: a waiting process re-checks the name
        os.close(self._fd)
        self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def locked(path: str) -> OutputLock | contextlib.nullcontext:
    """The output's lock, or nothing to lock when writing to stdout (``-``)."""
    return contextlib.nullcontext() if path == "-" else OutputLock(path)


def check_run_outputs(out: str, target: str, summary_path: str | None, inputs: list[str], *, kind: str) -> None:
    """Everything about a run's outputs, checked before anything loads or is written: ``--out``, this process's
    part file (``target``, when it is not ``--out``) and ``--summary`` (which may not be either of them). ``kind``:
    the records this command writes (``caption``, ``eval``); a JSON Lines file of another kind is refused."""
    from vqa_cli.errors import UsageError
    from vqa_cli.output.writer._store import same_file

    check_output(out, inputs, accept=records_of(kind))
    if target != out:
        check_output(target, inputs, accept=records_of(kind))
    if summary_path:
        if same_file(summary_path, out) or same_file(summary_path, target):
            raise UsageError("--summary and --out name the same file")
        check_output(summary_path, inputs, flag="--summary", accept=summary_file)
