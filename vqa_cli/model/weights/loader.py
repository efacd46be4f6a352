"""Loading a request's weights: quantized (bitsandbytes) and placed, from a pre-quantized copy when there is one.

- bitsandbytes 4-bit NF4 (double quant) or 8-bit, with the vision tower and projector kept in full precision;
  the first quantized load of a checkpoint writes a pre-quantized copy (``copies``), later loads read it.
- Placement: one device, ``device_map="auto"`` on CUDA, or with ``--max-memory`` the ``device_map`` the memory
  check computed (``placement.place``), spilling to the CPU and (with ``--offload-dir``) the disk.
- ``load`` is what ``session.open_model`` calls: the checkpoint's weights with the RoPE factor its budget chose,
  and the CLIP guide model for ``--guide``. ``Engine`` receives them.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqa_cli import console
from vqa_cli.errors import MemoryFitError, UnknownModelError, UsageError
from vqa_cli.model import device as devices
from vqa_cli.model import loading, rope
from vqa_cli.model.families.base import FamilyAdapter
from vqa_cli.model.families.registry import adapter_for
from vqa_cli.model.weights import copies, files, hub, placement

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PretrainedConfig, PreTrainedModel

    from vqa_cli.model.checkpoint import Checkpoint
    from vqa_cli.model.guide import Guide
    from vqa_cli.settings import RunSettings

def quantization_config(quant: str, adapter: FamilyAdapter, compute_dtype: torch.dtype, offload: bool = False
                        ) -> BitsAndBytesConfig | None:
    """bitsandbytes settings; the skip list keeps vision tower, projector and head unquantized. ``offload``
    (``--max-memory``): layers placed on the CPU or disk stay unquantized, in the compute dtype."""
    if quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    skip = adapter.quant_skip_modules()
    if quant == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=skip,
            llm_int8_enable_fp32_cpu_offload=offload,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip, llm_int8_enable_fp32_cpu_offload=offload)


@dataclass
class LoadedModel:
    """A checkpoint's weights, loaded: what ``Engine`` answers with."""

    model: PreTrainedModel
    adapter: FamilyAdapter
    device: str
    dtype: torch.dtype
    quant: str
    seconds: float
    prequantized: bool = False  # read from a pre-quantized copy (``copies``) instead of quantized on load
    rope_factor: float = 1.0  # the RoPE factor the language model's config was loaded with (``load``)
    guide: Guide | None = None  # the CLIP guide model of ``--guide`` (``load``)

    @property
    def input_device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (accelerate may spread the rest; embeddings it
        offloaded compute where its hook brings them)."""
        embeddings = self.model.get_input_embeddings()
        hook = getattr(embeddings, "_hf_hook", None)
        if embeddings.weight.device.type == "meta" and getattr(hook, "execution_device", None) is not None:
            import torch

            return torch.device(hook.execution_device)
        return embeddings.weight.device


def load_model(model_dir: Path, config: PretrainedConfig, *, device: str, dtype: torch.dtype, quant: str,
               max_memory: dict[str, int] | None = None, device_map: dict[str, int | str] | None = None,
               offload_dir: str | None = None, write_copy: bool = True) -> LoadedModel:
    """Weights from safetensors, quantized and placed; ``config`` carries any RoPE scaling.

    ``max_memory`` (``--max-memory``, bytes per ``cuda:N``/``cpu``): accelerate places the layers within it, and
    what does not fit goes to the CPU, then to disk (read from the safetensors). ``device_map``: that placement
    as the memory check computed it (``placement.place``: the caps less the KV cache and activations), so the load
    is what ``--plan`` showed; without it ``placement.device_map`` places the weights in the caps as they are. A
    placement with disk is refused unless ``offload_dir`` (``--offload-dir``) allows it: it is never passed to
    ``from_pretrained`` otherwise. ``write_copy``: the first quantized load writes a pre-quantized copy (unless
    ``$VQA_QUANT_CACHE`` says not to)."""
    import transformers

    if quant == "8bit" and not device.startswith("cuda"):
        # bitsandbytes warns on every 8-bit matmul that fp32 inputs are cast to fp16: expected on the CPU.
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    adapter = adapter_for(config)
    if not any(model_dir.glob("*.safetensors")):
        raise UnknownModelError(f"{str(model_dir)!r} has no .safetensors weights (pickled weights are not loaded)")
    cls = getattr(transformers, adapter.model_class)
    offload: dict[str, Any] = {}
    if max_memory:
        device_map = dict(device_map or placement.device_map(adapter, quant, dtype, max_memory))
        if "disk" in device_map.values():
            if not offload_dir:
                caps = placement.describe_placement(max_memory)
                raise MemoryFitError(f"--max-memory ({caps}) cannot hold the weights of this model without the disk: "
                                     "raise it, or allow the disk with --offload-dir")
            offload["offload_folder"] = str(offload_dir)
    else:
        device_map = "auto" if device == "cuda" else {"": device}
    started = time.perf_counter()
    bnb = quantization_config(quant, adapter, dtype, offload=bool(max_memory))
    # A pre-quantized copy of these weights, read instead of quantizing again (not with --max-memory: the
    # offloaded layers must stay unquantized).
    model = copies.load(cls, model_dir, config, bnb, dtype=dtype, device_map=device_map) \
        if bnb and not max_memory else None
    prequantized = model is not None
    if model is None:
        with placement.quiet_offload() if max_memory else contextlib.nullcontext():
            model = files.load_weights(cls, model_dir, config=config, dtype=dtype,
                                 quantization_config=bnb, device_map=device_map, **offload)
        if max_memory:
            spread = sorted({str(d) if not isinstance(d, int) else f"cuda:{d}" for d in device_map.values()})
            slow = " (offloaded layers are slower)" if len(spread) > 1 else ""
            if "disk" in spread:
                slow = " (the layers on disk are read from it again for every generated token: slow)"
            console.info(f"--max-memory: the layers are on {', '.join(spread)}{slow}")
    model.eval()
    seconds = time.perf_counter() - started
    if bnb is not None and not prequantized and not max_memory and write_copy:
        copies.remember(model, model_dir, bnb, dtype, device_map)  # the first quantized load writes the copy
    return LoadedModel(model, adapter, device, dtype, quant, seconds, prequantized)


def prepare_copy(model_dir: Path, quant: str, *, device: str, dtype: torch.dtype) -> tuple[Path, bool]:
    """A valid copy of ``model_dir`` at ``quant`` for ``device`` and ``dtype`` (``vqa download --quant``):
    (its folder, whether it was written now). Writes it whatever ``$VQA_QUANT_CACHE`` says: it was asked for."""
    config, adapter = loading.read_checkpoint_config(model_dir)
    bnb = quantization_config(quant, adapter, dtype)
    if bnb is None:
        raise UsageError("--quant none: there is nothing to store; pass --quant 4bit or 8bit")
    kind = device.split(":")[0]
    found = copies.find(model_dir, bnb, dtype, kind)
    if found is not None:
        return found, False
    loaded = load_model(model_dir, config, device=device, dtype=dtype, quant=quant, write_copy=False)
    folder = copies.save(loaded.model, model_dir, bnb, dtype, kind, strict=True)
    assert folder is not None  # strict: a failure raised
    return folder, True


def load(checkpoint: Checkpoint, settings: RunSettings, rope_factor: float,
         device_map: dict[str, int | str] | None = None) -> LoadedModel:
    """The weights a request's ``Engine`` answers with: ``checkpoint``'s (downloaded if need be), quantized and
    placed for ``settings`` (``device_map``: the memory check's placement under ``--max-memory``), its language
    model's RoPE scaled by ``rope_factor`` (the budget's), and the CLIP guide model with ``--guide``."""
    device = devices.resolve_device(settings.device)
    dtype = devices.resolve_dtype(settings.dtype, device)
    quant = devices.resolve_quant(settings.quant, device)
    rope.apply_to_config(checkpoint.adapter.text_config(), checkpoint.base_rope, rope_factor, settings.rope_type)
    weights_dir = hub.resolve_model_dir(checkpoint.name, weights=True)
    loaded = load_model(weights_dir, checkpoint.config, device=device, dtype=dtype, quant=quant,
                        max_memory=dict(settings.max_memory) or None, device_map=device_map,
                        offload_dir=settings.offload_dir)
    loaded.rope_factor = rope_factor
    if settings.mode.guide:
        from vqa_cli.model.guide import load_guide

        loaded.guide = load_guide(settings.guide_model, vision_hidden=checkpoint.geometry.vision_hidden,
                                  device=str(loaded.input_device), dtype=dtype)
    devices.cpu_notice(settings.device, device)
    return loaded
