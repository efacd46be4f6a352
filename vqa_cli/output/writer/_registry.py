"""The files vqa wrote: each whole file vqa writes and may later replace (``--out-dir`` sidecars, chat ``/save``
transcripts, SRT/WebVTT printed to a regular-file stdout) is remembered by its size and SHA-256 in
``written-files.jsonl`` in vqa's cache folder (``$VQA_CACHE``, else ``$XDG_CACHE_HOME/vqa`` or ``~/.cache/vqa``).

The content decides, not the path: a copy or a move is still recognised, and a file edited since (a user's
corrected captions) is the user's own again. Subtitle formats have no comment syntax every player skips, so
nothing is marked in the files themselves. Two readers: the output policy (``_guard``: replace only a file vqa
wrote) and ``subtitles.find_sidecar`` (``--subtitles auto`` never reads vqa's own output back).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from vqa_cli.atomic import replace_atomically
from vqa_cli.fingerprint import sha256

WRITTEN_FILE = "written-files.jsonl"  # in vqa's cache folder: {"sha256", "size", "path", "time"} a line
KEEP = 5000  # entries kept when the list is trimmed (past KEEP * 400 bytes)

_read: dict[tuple, list[dict]] = {}  # the list as last read, by (path, size, mtime): one read per change


def written_list() -> Path:
    from vqa_cli.model.weights.copies import cache_dir  # the one place vqa's cache folder is spelled

    return cache_dir().parent / WRITTEN_FILE


def _entries() -> list[dict]:
    target = written_list()
    try:
        st = target.stat()
        stamp = (str(target), st.st_size, st.st_mtime_ns)
        if stamp in _read:
            return _read[stamp]
        lines = target.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut off by a killed process
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    _read.clear()
    _read[stamp] = entries
    return entries


def wrote(data: bytes) -> bool:
    """Whether vqa wrote a file with exactly these bytes."""
    candidates = [e for e in _entries() if e.get("size") == len(data)]
    if not candidates:
        return False
    digest = sha256(data)
    return any(e.get("sha256") == digest for e in candidates)


def wrote_file(path: str | Path) -> bool:
    """Whether the file at ``path`` is one vqa wrote (read only when its size is one vqa wrote)."""
    try:
        size = Path(path).stat().st_size
        if not any(e.get("size") == size for e in _entries()):
            return False
        data = Path(path).read_bytes()
    except OSError:
        return False
    return wrote(data)


def remember(data: bytes, path: str | None = None, keep: int = KEEP) -> None:
    """Remember a file vqa wrote (its bytes ``data``). A failure to remember is a notice: the file is then taken
    for the user's own (``--subtitles auto`` may read it, and replacing it needs ``--force``)."""
    from vqa_cli import console

    entry = {"sha256": sha256(data), "size": len(data), "path": path,
             "time": round(time.time(), 3)}
    target = written_list()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as f:  # one short line, appended: concurrent runs interleave whole
            f.write(json.dumps(entry) + "\n")
        if target.stat().st_size > keep * 400:
            _trim(target, keep)
    except OSError as exc:
        console.info(f"warning: cannot note {path or 'the output'} as written by vqa in {target} "
                     f"({exc.strerror or exc}): it will be taken for a file of yours (--subtitles auto may read it, "
                     "and replacing it needs --force)")


def _trim(target: Path, keep: int) -> None:
    """Keep the last ``keep`` entries (atomically replaced)."""
    entries = _entries()[-keep:]
    replace_atomically(target, [json.dumps(e) + "\n" for e in entries])
