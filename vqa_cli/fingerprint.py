"""Content hashes: the one SHA-256 helper behind every key, id and checksum vqa writes.

``settings_id`` (records), feature-cache keys (features), pre-quantized copy keys (quantized), the subtitle
digest (subtitles) and the registry of files vqa wrote (writer/_registry) all hash through here. Each caller
keeps its own inputs; what is hashed and how it is spelled must never change, because the hex strings are
stored on users' disks (cache names, copy folders, settings ids in caption files). A leaf: imports nothing
of vqa's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256(data: bytes | str) -> str:
    """The hex SHA-256 of ``data`` (a ``str`` is hashed as UTF-8)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def json_sha256(value: object, *, sort_keys: bool = True, length: int | None = None) -> str:
    """The hex SHA-256 of ``json.dumps(value, sort_keys=sort_keys)`` (default separators), cut to ``length``."""
    return sha256(json.dumps(value, sort_keys=sort_keys))[:length]


def file_stamp(path: Path) -> list:
    """A file as a key lists it cheaply: ``[name, size, mtime_ns]``."""
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]
