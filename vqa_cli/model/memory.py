"""What a request will cost, from configs alone (no weights are read): ``--plan`` and the memory check.

Parameter counts come from building the model on torch's ``meta`` device (shapes only, no
memory), so they are exact for the checkpoint's architecture. The peak memory of a request is

    weights + guide model + KV cache + clip tensors + max(vision chunk, prefill) + runtime allowance

- **weights** at the chosen quantization (bitsandbytes quantizes the language model's ``nn.Linear``
  layers; embeddings and the skip list stay at the compute dtype). With ``--max-memory`` the layers
  are placed by accelerate's ``infer_auto_device_map`` (``device_map``) and each device holds its
  share; layers offloaded to the CPU or disk are not quantized (bitsandbytes keeps them in the
  compute dtype). A ``--max-memory`` cap is for everything on its device: accelerate places the
  weights in the computing device's cap less the KV cache, activations, guide model and runtime
  allowance (``place``), and the same ``device_map`` is what ``from_pretrained`` gets.
- **KV cache**: 2 (keys, values) x layers x KV heads x head size x budgeted tokens (visual + prompt +
  new) x batch.
- **clip tensors**, kept through the request: every frame's vision features and their projection
  (frames x grid x (vision width + text width)).
- **vision chunk**: the vision tower's activations for one call of ``VISION_CHUNK`` frames (``Engine.encode``):
  per frame, (grid + 1) tokens x (6 x vision width + 2 x its MLP width), plus the chunk's pixels.
- **prefill**: the language model's activations over the prompt (visual + prompt tokens) x batch:
  per token 6 x text width + 3 x its MLP width. Attention scores are not counted (SDPA's kernels do
  not materialise them) nor are logits (``generate`` computes the last position's only).
- **runtime allowance**: ``RUNTIME_BYTES`` for what the terms above leave out (allocator slack,
  cuBLAS workspaces, small buffers).

Activations are counted at the compute dtype's size. The estimate errs on the high side: the KV
cache and the vision chunk never coexist, and it counts both.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vqa_cli.units import GIB, MIB, gib, parse_size, size_text

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

    from vqa_cli.model.families.base import FamilyAdapter

# Bytes per quantized weight, scales included: NF4 with double quantization stores 4 bits plus
# about 0.127 bits of constants per weight; LLM.int8 stores 8 bits plus one fp32 scale per row.
QUANT_BYTES = {"4bit": 0.5 + 0.127 / 8, "8bit": 1.0}
VISION_CHUNK = 16  # frames per vision-tower call (Engine.encode): bounds activation memory on long clips
RUNTIME_BYTES = 512 * 1024**2  # allocator slack, library workspaces and buffers the terms leave out
OFFLOAD_DEVICES = ("cpu", "disk")
_META: dict[str, Any] = {}  # meta-device models by config, so planning, checking and --fit build each once
_PLACED: dict[tuple, dict] = {}  # device maps by (config, quantization, dtype, budget)
_COUNTED: dict[str, tuple[int, int]] = {}  # count_parameters by config and skip list


@dataclass
class MemoryEstimate:
    """What a request needs, in bytes. ``placement``: weight bytes per device (``cuda:0``, ``cpu``, ``disk``)
    when ``--max-memory`` spreads the layers; empty when every weight is on ``device``."""

    parameters: int
    quantized_parameters: int
    weight_bytes: int
    kv_cache_bytes: int
    activation_bytes: int = 0  # clip tensors + max(vision chunk, prefill)
    guide_bytes: int = 0
    runtime_bytes: int = 0
    device: str = ""  # where the request computes (the input embeddings' device)
    placement: dict[str, int] = field(default_factory=dict)
    batch: int = 1
    caps: dict[str, int] = field(default_factory=dict)  # --max-memory: bytes per device, for everything on it
    offload_dir: str | None = None  # --offload-dir: weights may go to disk (else a placement with disk does not fit)
    device_map: dict[str, int | str] = field(default_factory=dict)  # accelerate's, as from_pretrained gets it

    @property
    def overhead_bytes(self) -> int:
        """What the computing device holds besides its weights: KV cache, activations, guide model, runtime."""
        return self.kv_cache_bytes + self.activation_bytes + self.guide_bytes + self.runtime_bytes

    @property
    def disk_bytes(self) -> int:
        """Weight bytes offloaded to disk (read again from the checkpoint's files on every forward pass)."""
        return self.placement.get("disk", 0)

    def cap_problems(self) -> list[str]:
        """Why the placement does not fit ``--max-memory`` (empty when it fits, or without caps): a device whose
        share (its weights, and on the computing device everything else) exceeds its cap, weights on disk
        without ``--offload-dir``, or a GPU request whose GPU cap holds none of the weights."""
        if not self.caps:
            return []
        out = [d for d, cap in self.caps.items() if self.peak_on(d) > cap]
        if self.disk_bytes and not self.offload_dir:
            out.append("disk")
        if any(d.startswith("cuda") for d in self.caps) and not self.device.startswith("cuda"):
            out.append(min(d for d in self.caps if d.startswith("cuda")))
        return out

    @property
    def cap_fits(self) -> bool | None:
        """Whether the placement fits ``--max-memory`` (None without it)."""
        return None if not self.caps else not self.cap_problems()

    @property
    def total_bytes(self) -> int:
        """Weights + KV cache (what ``--plan`` printed before the peak was estimated)."""
        return self.weight_bytes + self.kv_cache_bytes

    @property
    def peak_bytes(self) -> int:
        """Everything the request holds at its peak, on all devices together (disk-offloaded weights excluded)."""
        return self.peak_on(self.device) + sum(b for d, b in self.placement.items()
                                               if d != self.device and d != "disk")

    def weights_on(self, device: str) -> int:
        return self.placement.get(device, 0) if self.placement else (self.weight_bytes if device == self.device
                                                                    else 0)

    def peak_on(self, device: str) -> int:
        """Bytes needed on ``device``: its weights, plus everything else on the device the request computes on."""
        own = self.weights_on(device)
        if device != self.device:
            return own
        return own + self.kv_cache_bytes + self.activation_bytes + self.guide_bytes + self.runtime_bytes

    def devices(self) -> list[str]:
        """The devices that hold something in memory (not ``disk``), the computing device first."""
        others = [d for d, b in self.placement.items() if b and d != self.device and d != "disk"]
        return [self.device, *others]

    def to_dict(self) -> dict:
        return {
            "parameters": self.parameters,
            "quantized_parameters": self.quantized_parameters,
            "weights_gib": gib(self.weight_bytes),
            "kv_cache_gib": gib(self.kv_cache_bytes),
            "total_gib": gib(self.total_bytes),
            "activations_gib": gib(self.activation_bytes),
            "guide_gib": gib(self.guide_bytes),
            "runtime_gib": gib(self.runtime_bytes),
            "peak_gib": gib(self.peak_bytes),
            "device": self.device,
            "batch": self.batch,
            "placement": {d: gib(b) for d, b in self.placement.items()} if self.placement else None,
            "placement_bytes": dict(self.placement) if self.placement else None,
            "device_map": {k: _vqa_device(v) for k, v in self.device_map.items()} if self.device_map else None,
            "max_memory": dict(self.caps) if self.caps else None,
            "max_memory_fits": self.cap_fits,
            "disk_gib": gib(self.disk_bytes),
            "offload_dir": self.offload_dir,
        }


def meta_model(adapter: FamilyAdapter) -> PreTrainedModel:
    """The adapter's architecture on torch's ``meta`` device (shapes only), built once per config."""
    import torch
    import transformers

    key = adapter.model_class + adapter.config.to_json_string(use_diff=False)
    if key not in _META:
        cls = getattr(transformers, adapter.model_class)
        with torch.device("meta"):
            _META[key] = cls(adapter.config)
    return _META[key]


def quantizable_weights(adapter: FamilyAdapter) -> set[str]:
    """Names of the weights bitsandbytes would quantize: ``nn.Linear`` weights outside the skip list."""
    import torch

    skip = tuple(adapter.quant_skip_modules())
    return {f"{name}.weight" for name, module in meta_model(adapter).named_modules()
            if isinstance(module, torch.nn.Linear) and not name.startswith(skip)}


def count_parameters(adapter: FamilyAdapter) -> tuple[int, int]:
    """(all parameters, parameters bitsandbytes would quantize) of the adapter's architecture (once per config)."""
    key = adapter.model_class + adapter.config.to_json_string(use_diff=False) + repr(adapter.quant_skip_modules())
    if key not in _COUNTED:
        model = meta_model(adapter)
        quantizable = quantizable_weights(adapter)
        params = dict(model.named_parameters())
        _COUNTED[key] = (sum(p.numel() for p in params.values()),
                         sum(params[n].numel() for n in quantizable if n in params))
    return _COUNTED[key]


def _weight_bytes(total: int, quantized: int, quant: str, dtype_bytes: int) -> int:
    return int((total - quantized) * dtype_bytes + quantized * QUANT_BYTES.get(quant, 0))


def estimate_memory(adapter: FamilyAdapter, quant: str, dtype_bytes: int, total_tokens: int) -> MemoryEstimate:
    """Weights and the KV cache of ``total_tokens`` (the catalog's columns; ``request_memory`` is the peak)."""
    total, quantizable = count_parameters(adapter)
    quantized = quantizable if quant in QUANT_BYTES else 0
    g = adapter.geometry()
    kv = 2 * g.text_layers * g.kv_heads * g.head_dim * total_tokens * dtype_bytes
    return MemoryEstimate(total, quantized, _weight_bytes(total, quantized, quant, dtype_bytes), int(kv))


def _width(config: PretrainedConfig, name: str, default: int) -> int:
    return int(getattr(config, name, None) or default)


def activation_bytes(adapter: FamilyAdapter, frames: int, prefill_tokens: int, dtype_bytes: int, batch: int = 1) -> int:
    """Clip tensors + max(one vision chunk, the prefill) of a request (see the module docstring)."""
    g = adapter.geometry()
    vision, text = adapter.config.vision_config, adapter.text_config()
    grid = g.grid[0] * g.grid[1]
    v_mlp, t_mlp = _width(vision, "intermediate_size", 4 * g.vision_hidden), _width(text, "intermediate_size",
                                                                                     4 * g.text_hidden)
    clip = batch * frames * grid * (g.vision_hidden + g.text_hidden)
    chunk = min(batch * frames, VISION_CHUNK) * ((grid + 1) * (6 * g.vision_hidden + 2 * v_mlp) + 3 * g.image_size**2)
    prefill = batch * prefill_tokens * (6 * g.text_hidden + 3 * t_mlp)
    return (clip + max(chunk, prefill)) * dtype_bytes


def guide_parameters(name: str) -> int:
    """Parameters of the CLIP guide model ``name`` (its config only: resolved like ``--model``, no weights)."""
    import torch
    import transformers

    from vqa_cli.model import loading
    from vqa_cli.model.weights import hub

    model_dir = hub.resolve_model_dir(name, weights=False)
    config = loading.read_config(model_dir)
    key = "guide" + config.to_json_string(use_diff=False)
    if key not in _META:
        with torch.device("meta"):
            _META[key] = transformers.AutoModel.from_config(config)
    return sum(p.numel() for p in _META[key].parameters())


# ---- placement: --max-memory -----------------------------------------------------------------


def _accelerate_key(device: str) -> int | str:
    """vqa's device names (``cuda:0``, ``cpu``) -> accelerate's ``max_memory`` keys (``0``, ``cpu``)."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else device


def _vqa_device(key: int | str) -> str:
    return f"cuda:{key}" if isinstance(key, int) else str(key)


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
        device = _vqa_device(placed[key]) if key is not None else "cpu"
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


def request_memory(adapter: FamilyAdapter, *, quant: str, dtype_bytes: int, dtype: torch.dtype, device: str,
                   frames: int, prefill_tokens: int, total_tokens: int, batch: int = 1, guide_parameters: int = 0,
                   max_memory: dict[str, int] | None = None, offload_dir: str | None = None) -> MemoryEstimate:
    """The peak memory of a request (see the module docstring): ``device`` is the resolved device
    (``cpu``, ``cuda``, ``cuda:1``); with ``max_memory`` the weights are placed by ``place``."""
    est = estimate_memory(adapter, quant, dtype_bytes, total_tokens)
    est.kv_cache_bytes *= batch
    est.batch = batch
    est.activation_bytes = activation_bytes(adapter, frames, prefill_tokens, dtype_bytes, batch)
    est.guide_bytes = guide_parameters * dtype_bytes
    est.runtime_bytes = RUNTIME_BYTES
    est.device = device
    if max_memory:
        place(est, adapter, quant, dtype, dtype_bytes, max_memory, offload_dir)
    return est


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
