"""Where a request's weights go with ``--max-memory``: accelerate's ``device_map`` over the meta model, within caps.

A ``--max-memory`` cap is for everything on its device: accelerate places the weights in the computing device's
cap less the KV cache, activations, guide model and runtime allowance (``place``), and the same ``device_map`` is
what ``from_pretrained`` gets (``loader.load_model``). Layers offloaded to the CPU or disk are not quantized
(bitsandbytes keeps them in the compute dtype); weights on disk are read again on every forward pass.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from vqa_cli.model.memory import (
    QUANT_BYTES,
    MemoryEstimate,
    count_parameters,
    device_name,
    meta_model,
    quantizable_weights,
)
from vqa_cli.units import GIB, MIB, parse_size, size_text

if TYPE_CHECKING:
    import torch

    from vqa_cli.model.families.base import FamilyAdapter

OFFLOAD_DEVICES = ("cpu", "disk")
_PLACED: dict[tuple, dict] = {}  # device maps by (config, quantization, dtype, budget)


def _accelerate_key(device: str) -> int | str:
    """vqa's device names (``cuda:0``, ``cpu``) -> accelerate's ``max_memory`` keys (``0``, ``cpu``)."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else device


def device_map(adapter: FamilyAdapter, quant: str, dtype: torch.dtype, max_memory: dict[str, int]
               ) -> dict[str, int | str]:
    """The ``device_map`` ``from_pretrained`` gets with ``--max-memory``: accelerate's ``infer_auto_device_map``
    over the meta model with ``max_memory`` (keys ``cuda:N``/``cpu``; what does not fit goes to disk), sizes
    at the quantization and dtype the load will use. Values are accelerate's (GPU index, ``cpu``, ``disk``)."""
    import torch
    from accelerate import infer_auto_device_map
    from accelerate.utils import CustomDtype

    key = (adapter.model_class + adapter.config.to_json_string(use_diff=False), quant, str(dtype),
           tuple(sorted(max_memory.items())))
    if key in _PLACED:
        return dict(_PLACED[key])
    model = meta_model(adapter)
    sizes: dict[str, Any] = {}
    if quant in QUANT_BYTES:
        quantized = quantizable_weights(adapter)
        sizes["dtype"] = CustomDtype.INT4 if quant == "4bit" else torch.int8
        sizes["special_dtypes"] = {n: dtype for n, _ in [*model.named_parameters(), *model.named_buffers()]
                                   if n not in quantized}
    else:
        sizes["dtype"] = dtype
    budget = {_accelerate_key(d): int(b) for d, b in max_memory.items()}
    with quiet_offload():  # "Device 0 is not available": a plan for another machine
        placed = infer_auto_device_map(model, max_memory=budget,
                                       no_split_module_classes=sorted(model._no_split_modules), **sizes)
    _PLACED[key] = dict(placed)
    return dict(placed)


@contextmanager
def quiet_offload() -> Iterator[None]:
    """accelerate's own notices while placing and loading an offloaded model (vqa says where the layers went)."""
    loggers = [logging.getLogger(name) for name in ("accelerate.big_modeling", "accelerate.utils.modeling")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The following device_map keys do not match")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def placement_bytes(adapter: FamilyAdapter, quant: str, dtype_bytes: int, placed: dict[str, int | str]
                    ) -> dict[str, int]:
    """Weight bytes per device (vqa's names) of a ``device_map``. Quantized weights count as such on a GPU
    only: bitsandbytes leaves the modules offloaded to the CPU or disk unquantized."""
    model = meta_model(adapter)
    quantized = quantizable_weights(adapter) if quant in QUANT_BYTES else set()
    keys = sorted(placed, key=len, reverse=True)
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = next((k for k in keys if k == "" or name == k or name.startswith(k + ".")), None)
        device = device_name(placed[key]) if key is not None else "cpu"
        per = QUANT_BYTES[quant] if name in quantized and device not in OFFLOAD_DEVICES else dtype_bytes
        out[device] = out.get(device, 0) + int(p.numel() * per)
    return out


def main_device(placed: dict[str, int | str]) -> str:
    """Where a spread model computes: its first GPU, else the CPU."""
    gpus = sorted(v for v in placed.values() if isinstance(v, int))
    return f"cuda:{gpus[0]}" if gpus else "cpu"


def compute_device(device: str, caps: dict[str, int] | None) -> str:
    """Where a request computes: with ``--max-memory`` naming GPUs, the first of them; else ``device``."""
    gpus = sorted((d for d in caps or () if d.startswith("cuda")), key=lambda d: int(d.split(":", 1)[1]))
    return gpus[0] if gpus else ("cpu" if caps else device)


def place(est: MemoryEstimate, adapter: FamilyAdapter, quant: str, dtype: torch.dtype, dtype_bytes: int,
          caps: dict[str, int], offload_dir: str | None = None) -> MemoryEstimate:
    """Place ``est``'s weights within ``caps`` (``--max-memory``): accelerate gets every cap as it is, except the
    computing device's, which loses what the request holds there besides the weights (``overhead_bytes``).
    Sets ``placement``, ``device_map``, ``device``, ``weight_bytes``, ``caps`` and ``offload_dir``."""
    computing = compute_device(est.device, caps)
    budget = {d: max(0, b - est.overhead_bytes) if d == computing else b for d, b in caps.items()}
    placed = device_map(adapter, quant, dtype, budget)
    est.device_map = placed
    est.placement = placement_bytes(adapter, quant, dtype_bytes, placed)
    est.device = main_device(placed)
    est.weight_bytes = sum(est.placement.values())
    est.caps, est.offload_dir = dict(caps), offload_dir
    return est


def smallest_cap(est: MemoryEstimate, adapter: FamilyAdapter, quant: str, dtype: torch.dtype, dtype_bytes: int,
                 device: str) -> int | None:
    """The smallest cap in bytes for ``device`` (the other caps as they are) at which ``est``'s placement fits
    (``cap_fits``), found with the placement itself (the same ``place``, bisected); None when no cap of that
    device makes it fit."""
    from dataclasses import replace as copy

    def fits(cap: int) -> bool:
        return bool(place(copy(est), adapter, quant, dtype, dtype_bytes, {**est.caps, device: cap},
                          est.offload_dir).cap_fits)

    total = count_parameters(adapter)[0] * max(dtype_bytes, 1)
    lo, hi = est.caps.get(device, 0), 2 * (total + est.overhead_bytes) + GIB
    if not fits(hi):
        return None
    if fits(lo):
        return lo
    while hi - lo > 1:  # fits(hi), not fits(lo): more room never moves a weight off this device
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def cap_text(n: int) -> str:
    """A ``--max-memory`` size of at least ``n`` bytes, rounded up: ``2.3GiB`` (to a tenth), ``600MiB``, ``12KiB``."""
    for unit, scale, step in (("GiB", GIB, 0.1), ("MiB", MIB, 1), ("KiB", 2**10, 1), ("B", 1, 1)):
        if n >= scale or unit == "B":
            value = math.ceil(n / scale / step - 1e-9) * step
            while True:
                text = f"{value:.1f}{unit}" if step < 1 else f"{int(value)}{unit}"
                if parse_size(text) >= n:
                    return text
                value += step
    raise AssertionError("unreachable")


def describe_placement(placement: dict[str, int]) -> str:
    """``cuda:0 3.10 GiB, cpu 1.20 GiB, disk 512.0 MiB``."""
    return ", ".join(f"{d} {size_text(b)}" for d, b in placement.items())
