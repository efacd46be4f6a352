"""Model loading, in one place: name -> local directory -> config -> quantized model on a device.

- A name is a short alias, a hub id or a local directory. Hub checkpoints are resolved to the
  local HF cache with ``snapshot_download`` (configs, tokenizer, chat template and safetensors
  only: pickled ``.bin`` weights are never fetched nor loaded).
- Never ``trust_remote_code``: the family must be one transformers ships and vqa registers.
- bitsandbytes 4-bit NF4 (double quant) or 8-bit, with the vision tower and projector kept in
  full precision; ``device_map`` through accelerate.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqa_cli import console
from vqa_cli.errors import ModelNotCachedError, UnknownModelError, UsageError
from vqa_cli.models.base import FamilyAdapter
from vqa_cli.models.registry import CHECKPOINTS, DEFAULT_MODEL, adapter_for, resolve_alias

QUANTS = ("4bit", "8bit", "none")
DTYPES = ("auto", "float32", "float16", "bfloat16")
CONFIG_PATTERNS = ["*.json", "*.jinja", "tokenizer.model", "*.txt", "*.tiktoken"]
WEIGHT_PATTERNS = ["*.safetensors"]
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_cpu_notice_shown = False


def default_model() -> str:
    return os.environ.get("VQA_MODEL") or DEFAULT_MODEL


def resolve_model_dir(name: str, *, weights: bool = True) -> Path:
    """A local checkpoint directory for an alias, hub id or path (downloading when allowed).

    With ``weights=False`` only configs, tokenizer and template are fetched (for planning).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.startswith((".", "/", "~")) or path.exists():
        raise UnknownModelError(f"no model directory at {name!r}")
    repo_id = resolve_alias(name)
    if not _HUB_ID.match(repo_id):
        aliases = ", ".join(c.alias for c in CHECKPOINTS)
        raise UnknownModelError(f"unknown model {name!r}: not a local directory, hub id or alias ({aliases})")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        patterns = CONFIG_PATTERNS + (WEIGHT_PATTERNS if weights else [])
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except GatedRepoError as exc:
        raise UnknownModelError(f"{repo_id} is gated on the hub: accept its licence and `hf auth login`") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise UnknownModelError(f"unknown model {name!r}: no such repository on the hub") from exc
    except LocalEntryNotFoundError as exc:
        raise ModelNotCachedError(
            f"{repo_id} is not in the local cache and the hub cannot be reached: "
            f"run `vqa download {name}` while online, or pass a local directory"
        ) from exc


def read_config(model_dir: Path) -> Any:
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise UnknownModelError(f"{str(model_dir)!r} is not a model checkpoint (no config.json)")
    return AutoConfig.from_pretrained(model_dir, trust_remote_code=False)


def resolve_device(device: str | None) -> str:
    import torch

    global _cpu_notice_shown
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if not _cpu_notice_shown:
            console.info("no CUDA GPU found: running on CPU (slow)")
            _cpu_notice_shown = True
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available here")
    return device


def resolve_quant(quant: str | None, device: str) -> str:
    if quant in (None, "", "auto"):
        return "4bit" if device.startswith("cuda") else "none"
    if quant not in QUANTS:
        raise UsageError(f"--quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    return quant


def resolve_dtype(dtype: str | None, device: str) -> Any:
    import torch

    if dtype in (None, "", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return getattr(torch, dtype)


def quantization_config(quant: str, adapter: FamilyAdapter, compute_dtype: Any) -> Any:
    """bitsandbytes settings; the skip list keeps vision tower, projector and head unquantized."""
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
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


@dataclass
class LoadedModel:
    model: Any
    adapter: FamilyAdapter
    device: str
    dtype: Any
    quant: str
    seconds: float


def load_model(model_dir: Path, config: Any, *, device: str, dtype: Any, quant: str) -> LoadedModel:
    """Weights from safetensors, quantized and placed; ``config`` carries any RoPE scaling."""
    import transformers
    from transformers.utils import logging as hf_logging

    # vqa shows its own spinner; transformers' per-tensor bar and advice would interleave with it.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # bitsandbytes warns on every 8-bit matmul that fp32 inputs are cast to fp16: expected on CPU.
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    adapter = adapter_for(config)
    if not any(model_dir.glob("*.safetensors")):
        raise UnknownModelError(f"{str(model_dir)!r} has no .safetensors weights (pickled weights are not loaded)")
    cls = getattr(transformers, adapter.model_class)
    device_map: Any = "auto" if device == "cuda" else {"": device}
    started = time.perf_counter()
    model = cls.from_pretrained(
        model_dir,
        config=config,
        dtype=dtype,
        quantization_config=quantization_config(quant, adapter, dtype),
        device_map=device_map,
        use_safetensors=True,
    )
    model.eval()
    return LoadedModel(model, adapter, device, dtype, quant, time.perf_counter() - started)


def input_device(model: Any) -> Any:
    """Where inputs go: the device of the input embeddings (accelerate may spread the rest)."""
    return model.get_input_embeddings().weight.device
