"""What the machine has now: free CUDA memory per GPU, or the RAM a new allocation can get.

``probe_memory(device)`` is the probe the memory check (``fit``), ``--fit`` (``autofit``) and the server's
limits ask; each takes the probe as a parameter (a ``Probe``), so tests give their own. Nothing here imports
torch at module level.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

Probe = Callable[[str], "int | None"]  # device ("cpu", "cuda", "cuda:1") -> free bytes, None if unknown here


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """Memory left under this process's cgroup limit (v2, else v1), or None without a limit."""
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is None:
        limit, used = (_read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
                       _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes"))
    if limit is None or used is None or limit >= 2**60:
        return None
    return max(0, limit - used)


def available_ram() -> int | None:
    """RAM a new allocation can get without swapping: ``MemAvailable`` (Linux), capped by a cgroup limit."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if found is None:
        try:
            import psutil

            found = int(psutil.virtual_memory().available)
        except ImportError:
            try:
                found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                return None
    room = _cgroup_room()
    return found if room is None else min(found, room)


def probe_memory(device: str) -> int | None:
    """Free bytes on ``device`` now; None when this machine lacks it (a plan for another machine)."""
    if device == "cpu":
        return available_ram()
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    if device == "cuda":
        return sum(int(torch.cuda.mem_get_info(i)[0]) for i in range(count))
    index = int(device.split(":", 1)[1])
    return int(torch.cuda.mem_get_info(index)[0]) if index < count else None
