"""``--plan``: what a request will cost, from configs alone (no weights are read).

Parameter counts come from building the model on torch's ``meta`` device (shapes only, no
memory), so they are exact for the checkpoint's architecture. Memory = weights at the chosen
quantization (bitsandbytes quantizes the language model's ``nn.Linear`` layers; embeddings and
the skip list stay at the compute dtype) + the KV cache for the whole budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Bytes per quantized weight, scales included: NF4 with double quantization stores 4 bits plus
# about 0.127 bits of constants per weight; LLM.int8 stores 8 bits plus one fp32 scale per row.
QUANT_BYTES = {"4bit": 0.5 + 0.127 / 8, "8bit": 1.0}


@dataclass
class MemoryEstimate:
    parameters: int
    quantized_parameters: int
    weight_bytes: int
    kv_cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes

    def to_dict(self) -> dict:
        gib = 1024**3
        return {
            "parameters": self.parameters,
            "quantized_parameters": self.quantized_parameters,
            "weights_gib": round(self.weight_bytes / gib, 3),
            "kv_cache_gib": round(self.kv_cache_bytes / gib, 3),
            "total_gib": round(self.total_bytes / gib, 3),
        }


def count_parameters(adapter: Any) -> tuple[int, int]:
    """(all parameters, parameters bitsandbytes would quantize) of the adapter's architecture."""
    import torch
    import transformers

    cls = getattr(transformers, adapter.model_class)
    with torch.device("meta"):
        model = cls(adapter.config)
    skip = tuple(adapter.quant_skip_modules())
    total = sum(p.numel() for p in model.parameters())
    quantizable = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.startswith(skip):
            quantizable += module.weight.numel()
    return total, quantizable


def estimate_memory(adapter: Any, quant: str, dtype_bytes: int, total_tokens: int) -> MemoryEstimate:
    total, quantizable = count_parameters(adapter)
    quantized = quantizable if quant in QUANT_BYTES else 0
    weight_bytes = (total - quantized) * dtype_bytes + int(quantized * QUANT_BYTES.get(quant, 0))
    g = adapter.geometry()
    kv = 2 * g.text_layers * g.kv_heads * g.head_dim * total_tokens * dtype_bytes
    return MemoryEstimate(total, quantized, int(weight_bytes), int(kv))
