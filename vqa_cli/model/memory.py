"""What a request will cost, from configs alone (no weights are read): ``--plan`` and the memory check.

Parameter counts come from building the model on torch's ``meta`` device (shapes only, no
memory), so they are exact for the checkpoint's architecture. The peak memory of a request is

    weights + guide model + KV cache + clip tensors + max(vision chunk, prefill) + runtime allowance

- **weights** at the chosen quantization (bitsandbytes quantizes the language model's ``nn.Linear``
  layers; embeddings and the skip list stay at the compute dtype). With ``--max-memory`` the layers
  are placed by accelerate's ``infer_auto_device_map`` (``weights.placement``) and each device holds
  its share; layers offloaded to the CPU or disk are not quantized (bitsandbytes keeps them in the
  compute dtype).
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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vqa_cli.units import gib

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from vqa_cli.model.families.base import FamilyAdapter

# Bytes per quantized weight, scales included: NF4 with double quantization stores 4 bits plus
# about 0.127 bits of constants per weight; LLM.int8 stores 8 bits plus one fp32 scale per row.
QUANT_BYTES = {"4bit": 0.5 + 0.127 / 8, "8bit": 1.0}
VISION_CHUNK = 16  # frames per vision-tower call (Engine.encode): bounds activation memory on long clips
RUNTIME_BYTES = 512 * 1024**2  # allocator slack, library workspaces and buffers the terms leave out
_META: dict[str, Any] = {}  # meta-device models by config, so planning, checking and --fit build each once
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
            "device_map": {k: device_name(v) for k, v in self.device_map.items()} if self.device_map else None,
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


def device_name(key: int | str) -> str:
    """accelerate's device keys (``0``, ``cpu``, ``disk``) -> vqa's names (``cuda:0``, ``cpu``, ``disk``)."""
    return f"cuda:{key}" if isinstance(key, int) else str(key)


def request_memory(adapter: FamilyAdapter, *, quant: str, dtype_bytes: int, device: str, frames: int,
                   prefill_tokens: int, total_tokens: int, batch: int = 1, guide_parameters: int = 0) -> MemoryEstimate:
    """The peak memory of a request (see the module docstring): ``device`` is the resolved device
    (``cpu``, ``cuda``, ``cuda:1``). With ``--max-memory`` the caller places the weights (``placement.place``)."""
    est = estimate_memory(adapter, quant, dtype_bytes, total_tokens)
    est.kv_cache_bytes *= batch
    est.batch = batch
    est.activation_bytes = activation_bytes(adapter, frames, prefill_tokens, dtype_bytes, batch)
    est.guide_bytes = guide_parameters * dtype_bytes
    est.runtime_bytes = RUNTIME_BYTES
    est.device = device
    return est


