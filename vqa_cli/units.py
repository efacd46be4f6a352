"""Sizes: bytes as people read and write them. The one ``GIB``, the one size formatter (``size_text``), the
rounded figures JSON carries (``gib``) and ``--max-memory``-style sizes read back (``parse_size``).

A leaf: imports nothing of vqa's but ``errors``.
"""

from __future__ import annotations

import re

from vqa_cli.errors import UsageError

GB = 10**9
MIB = 2**20
GIB = 2**30
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")


def size_text(n: float, digits: int = 2, *, smaller: bool = True, decimal: bool = False) -> str:
    """Bytes for people: ``3.10 GiB`` (``digits`` decimals), or ``12.5 MiB`` under a tenth of a GiB (``smaller``;
    without it, always GiB). ``decimal``: GB and MB (disk sizes, as the hub states them) instead of GiB and MiB."""
    big, small, scale, small_scale = ("GB", "MB", GB, 10**6) if decimal else ("GiB", "MiB", GIB, MIB)
    if smaller and n < scale / 10:
        return f"{n / small_scale:.1f} {small}"
    return f"{n / scale:.{digits}f} {big}"


def gib(n: float, digits: int = 3) -> float:
    """Bytes as a number of GiB, rounded (what ``--json`` and the catalog carry)."""
    return round(n / GIB, digits)


def parse_size(text: str, flag: str = "--max-memory") -> int:
    """``6GiB``, ``512MiB``, ``8GB`` -> bytes (GiB, MiB, KiB, TiB binary; GB, MB, KB, TB decimal)."""
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise UsageError(f"{flag}: {text!r} is not a size (e.g. 6GiB, 512MiB, 8GB)")
    return int(float(m.group(1)) * _UNITS[unit])
