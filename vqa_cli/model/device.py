"""Where and how a request's weights run: its device, quantization, compute dtype and ``--max-memory`` caps.

``target(settings)`` resolves them together (a device this machine may lack is allowed: a plan for another
machine) and refuses combinations that cannot load; ``parse_max_memory`` reads ``--max-memory``
(``cuda:0=6GiB,cpu=24GiB``). Nothing here imports torch at module level: ``vqa --help`` reads this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vqa_cli import console
from vqa_cli.errors import UsageError
from vqa_cli.settings import DTYPES, QUANTS
from vqa_cli.units import parse_size

if TYPE_CHECKING:
    import torch

    from vqa_cli.settings import RunSettings


_DEVICE = re.compile(r"^(cpu|cuda(?::\d+)?)$")
_cpu_notice_shown = False


def resolve_device(device: str | None, *, planning: bool = False) -> str:
    """The device a request runs on: ``cuda`` when available and none was asked for, else ``cpu``.

    ``planning`` (``--plan``) may name a device this machine lacks (a plan for a GPU made on a laptop)."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not planning and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available here")
    return device


def cpu_notice(requested: str | None, device: str) -> None:
    """Say once per process that the model runs on the CPU because no GPU was found (after it loaded,
    so that a failed load stays one line)."""
    global _cpu_notice_shown
    if requested in (None, "", "auto") and device == "cpu" and not _cpu_notice_shown:
        console.info("no CUDA GPU found: running on CPU (slow)")
        _cpu_notice_shown = True


def resolve_quant(quant: str | None, device: str) -> str:
    if quant in (None, "", "auto"):
        return "4bit" if device.startswith("cuda") else "none"
    if quant not in QUANTS:
        raise UsageError(f"--quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    return quant


def resolve_dtype(dtype: str | None, device: str, *, planning: bool = False) -> torch.dtype:
    """The compute dtype: bfloat16 on a GPU that has it (float16 otherwise), float32 on the CPU.

    ``planning`` assumes a GPU has bfloat16 (the device may not be on this machine)."""
    import torch

    if dtype in (None, "", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if planning or torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return getattr(torch, dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as ``--dtype`` spells it and records show it: ``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


def parse_max_memory(text: str | None) -> tuple[tuple[str, int], ...]:
    """``cuda:0=6GiB,cpu=24GiB`` -> (("cuda:0", bytes), ("cpu", bytes)); ``cuda`` means ``cuda:0``."""
    if not text:
        return ()
    out: dict[str, int] = {}
    for part in text.split(","):
        device, sep, size = part.strip().partition("=")
        device = device.strip().lower()
        if not sep or not _DEVICE.match(device):
            raise UsageError(f"--max-memory takes DEVICE=SIZE pairs (e.g. cuda:0=6GiB,cpu=24GiB), not {part.strip()!r}")
        device = "cuda:0" if device == "cuda" else device
        if device in out:
            raise UsageError(f"--max-memory names {device} twice")
        out[device] = parse_size(size.strip())
    return tuple(out.items())


@dataclass(frozen=True)
class Target:
    """Where and how a request's weights load: the resolved device, quantization, compute dtype and budget."""

    device: str
    quant: str
    dtype: torch.dtype
    max_memory: dict[str, int] | None = None
    offload_dir: str | None = None  # --offload-dir: weights past the caps may go to disk

    @property
    def dtype_bytes(self) -> int:
        return int(self.dtype.itemsize)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)


def target(settings: RunSettings) -> Target:
    """The request's device (one this machine may lack: see ``resolve_device``'s ``planning``),
    quantization, dtype and ``--max-memory``, checked against each other."""
    device = resolve_device(settings.device, planning=True)
    quant = resolve_quant(settings.quant, device)
    dtype = resolve_dtype(settings.dtype, device, planning=True)
    budget = dict(settings.max_memory) or None
    offload_dir = settings.offload_dir
    if offload_dir and not budget:
        raise UsageError("--offload-dir lets --max-memory put weights on disk: give --max-memory too")
    if budget:
        gpus = [d for d in budget if d.startswith("cuda")]
        if device.startswith("cuda"):
            wanted = [d for d in gpus if device == "cuda" or d == device]
            if not wanted:
                gpu = device if ":" in device else "cuda:0"
                raise UsageError(f"--max-memory must give the GPU the model runs on ({gpu}=SIZE): it names "
                                 f"{', '.join(budget)}")
        elif gpus:
            raise UsageError(f"--max-memory names {', '.join(gpus)} but the model runs on {device}")
        elif quant != "none":
            raise UsageError("--max-memory on the CPU places layers on the CPU and disk, which bitsandbytes leaves "
                             "unquantized: use --quant none")
    return Target(device, quant, dtype, budget, offload_dir)
