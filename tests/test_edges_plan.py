"""Edges of the 8-bit memory estimate (vqa_cli/model/memory.py): LLM.int8 stores the language model's linear weights at
1 byte each, and everything bitsandbytes leaves alone (the vision tower, the projector, the head, embeddings,
norms and every bias) at the compute dtype's 2 bytes; layers offloaded to the CPU stay unquantized. Oracle: the
architecture built in the test by transformers on the meta device, its ``nn.Linear`` layers inside the language
model counted in the test (tiny and the real 7B geometry)."""

from __future__ import annotations

import pytest
import torch
import transformers

from vqa_cli.model import loading, memory
from vqa_cli.model.weights import placement
from vqa_cli.testing import tiny_checkpoint


@pytest.fixture(scope="module")
def real_7b(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("geometry") / "7b", geometry="7b", weights=False)


def _independent_bytes(model_dir, per_quantized: float, per_kept: int) -> tuple[int, int, float]:
    config, _ = loading.read_checkpoint_config(model_dir)
    with torch.device("meta"):
        # both checkpoints are LLaVA-NeXT-Video (a configs-only one names no architecture)
        model = transformers.LlavaNextVideoForConditionalGeneration(config)
    linear_weights = {f"{name}.weight" for name, module in model.named_modules()
                      if isinstance(module, torch.nn.Linear) and name.startswith("model.language_model.")}
    total = quantized = 0
    size = 0.0
    for name, p in model.named_parameters():
        total += p.numel()
        if name in linear_weights:
            quantized += p.numel()
            size += p.numel() * per_quantized
        else:
            size += p.numel() * per_kept
    return total, quantized, size


@pytest.mark.parametrize("which", ["tiny", "7b"])
def test_8bit_weights_are_one_byte_per_linear_weight_and_two_for_the_rest(which, tiny_dir, real_7b):
    model_dir = tiny_dir if which == "tiny" else real_7b
    total, quantized, size = _independent_bytes(model_dir, 1.0, 2)
    _, adapter = loading.read_checkpoint_config(model_dir)
    est = memory.estimate_memory(adapter, "8bit", 2, 0)
    assert (est.parameters, est.quantized_parameters) == (total, quantized)
    assert 0 < quantized < total
    assert est.weight_bytes == int(size)
    assert memory.estimate_memory(adapter, "none", 2, 0).weight_bytes == 2 * total  # nothing quantized


def test_8bit_layers_on_the_gpu_count_one_byte_and_offloaded_ones_two(tiny_dir):
    _, adapter = loading.read_checkpoint_config(tiny_dir)
    total, _, size = _independent_bytes(tiny_dir, 1.0, 2)
    assert placement.placement_bytes(adapter, "8bit", 2, {"": 0}) == {"cuda:0": int(size)}
    assert placement.placement_bytes(adapter, "8bit", 2, {"": "cpu"}) == {"cpu": 2 * total}
