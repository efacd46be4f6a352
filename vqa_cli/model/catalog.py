"""The known checkpoints, what they cost, and which are already on this machine (``vqa models``, ``vqa download``).

Everything here is offline except ``download``. A checkpoint counts as ``cached`` when its
config and every safetensors shard are in the local Hugging Face cache, so ``vqa ask`` can run
with no network. Every size comes from the checkpoint's architecture: its cached ``config.json``, else
its published geometry (``PUBLISHED``: the widths, depths, heads and vocabulary of its hub config), built
on the meta device and counted by ``plan`` (this is the one source of the figures README.md and
docs/models.md state; tests/test_catalog.py checks them):

- ``parameters``: every parameter of the architecture, the vision tower included.
- ``disk_bytes`` / ``disk_gb`` (10^9 bytes): the real size of the cached safetensors when they are
  there; otherwise the parameters at 2 bytes (the hub's bf16 weights), marked ``disk_estimated``.
- ``memory_gib``: memory for the weights alone at each quantization (16-bit compute dtype); the vision
  tower, projector, head and embeddings (the family's skip list and every weight that is not an
  ``nn.Linear``) stay in 16 bits under 4-bit and 8-bit (``memory.estimate_memory``).
- ``kv_cache_gib`` and ``peak_gib``: the KV cache (16-bit) and the peak (``memory.request_memory``) of the
  family's default request (``--mode anyres`` at its default frames, a 64-token prompt and 256 new
  tokens): ``cuda_4bit`` and ``cuda_bf16`` on a GPU, ``cpu_float32`` on the CPU.
- ``quantized``: the quantizations (``4bit``, ``8bit``) with a current pre-quantized copy of the
  cached snapshot in the vqa cache (``vqa_cli.model.quantized``), ``quantized_copies`` their details.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vqa_cli.errors import ModelNotCachedError
from vqa_cli.model.families.registry import (
    CHECKPOINTS,
    DEFAULT_CPU_MODEL,
    DEFAULT_MODEL,
    KnownCheckpoint,
    adapter_for,
    resolve_alias,
)
from vqa_cli.settings import QUANTS
from vqa_cli.units import GB, gib, size_text

FP16_BYTES = 2
DEFAULT_PROMPT_TOKENS = 64  # a short question in the chat template, for the default-request KV cache
DEFAULT_NEW_TOKENS = 256


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at call time (``HF_HUB_CACHE``, ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, cache_dir: Path | None = None) -> Path | None:
    """The cached snapshot folder of ``repo_id``'s main revision when its config.json is there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir or hub_cache_dir())
    return Path(found).parent if isinstance(found, str) else None


def weight_files(snapshot: Path) -> list[Path] | None:
    """Every safetensors file a snapshot needs, or None when any is missing (or none is listed)."""
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
    else:
        names = [p.name for p in snapshot.glob("*.safetensors")]
    files = [snapshot / name for name in names]
    return files if files and all(f.is_file() for f in files) else None


# The published geometry of each known checkpoint: (model_type, vision tower, language model, extra config), as
# its hub config.json has them (llava-hf's conversions pad the vocabulary to a multiple of 64 after adding the
# image and video tokens: Vicuna's 32000 -> 32064, Qwen2-0.5B's 151936 -> 152000, Qwen2-7B's 152064 -> 152128).
_CLIP_L14 = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
             "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14, "projection_dim": 768}
_SIGLIP_SO400M = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                  "num_hidden_layers": 26, "num_attention_heads": 16, "image_size": 384, "patch_size": 14,
                  "vision_use_head": False}  # so400m's 27 layers less the last (OneVision reads the one before)
_VICUNA_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
_QWEN2 = {"model_type": "qwen2", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6}
_QWEN2_05B = {**_QWEN2, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 152000, "tie_word_embeddings": True}
_QWEN2_7B = {**_QWEN2, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152128, "tie_word_embeddings": False}
_LLAVA = {"vision_feature_layer": -2, "vision_feature_select_strategy": "default"}
_ONEVISION = ("llava_onevision", _SIGLIP_SO400M, {"vision_feature_layer": -1, "vision_feature_select_strategy": "full"})
PUBLISHED: dict[str, tuple[str, dict, dict, dict]] = {
    "llava-hf/LLaVA-NeXT-Video-7B-hf": ("llava_next_video", {**_CLIP_L14, "image_size": 336}, _VICUNA_7B,
                                        {**_LLAVA, "spatial_pool_stride": 2, "spatial_pool_mode": "average"}),
    "llava-hf/LLaVA-NeXT-Video-7B-DPO-hf": ("llava_next_video", {**_CLIP_L14, "image_size": 336}, _VICUNA_7B,
                                            {**_LLAVA, "spatial_pool_stride": 2, "spatial_pool_mode": "average"}),
    "LanguageBind/Video-LLaVA-7B-hf": ("video_llava", {**_CLIP_L14, "image_size": 224}, _VICUNA_7B, _LLAVA),
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": (_ONEVISION[0], _ONEVISION[1], _QWEN2_05B, _ONEVISION[2]),
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": (_ONEVISION[0], _ONEVISION[1], _QWEN2_7B, _ONEVISION[2]),
    "llava-hf/LLaVA-Video-7B-Qwen2-hf": (_ONEVISION[0], _ONEVISION[1], _QWEN2_7B, _ONEVISION[2]),
}


def published_config(ckpt: KnownCheckpoint) -> Any:
    """The transformers config of ``ckpt``'s published geometry (``PUBLISHED``), without downloading anything."""
    from transformers import CONFIG_MAPPING

    model_type, vision, text, extra = PUBLISHED[ckpt.repo_id]
    return CONFIG_MAPPING[model_type](vision_config=dict(vision), text_config=dict(text), **extra)


def default_request(adapter: Any, frames: int | None = None, mode: str = "anyres") -> tuple[int, int, int]:
    """(frames, prefill tokens, total tokens) of the family's default request: ``mode`` at ``frames`` (default:
    the family's), a ``DEFAULT_PROMPT_TOKENS`` prompt and ``DEFAULT_NEW_TOKENS`` new tokens."""
    from vqa_cli.model import modes

    frames = frames or adapter.default_frames
    visual = modes.plan(modes.ModeSettings(mode), frames, adapter.geometry()).total
    return frames, visual + DEFAULT_PROMPT_TOKENS, visual + DEFAULT_PROMPT_TOKENS + DEFAULT_NEW_TOKENS


def request_peak(adapter: Any, setting: str | tuple[str, str, Any], frames: int | None = None,
                 mode: str = "anyres") -> int:
    """The peak bytes (``memory.request_memory``) of the default request (``default_request``) in ``setting``:
    one of ``PEAKS`` (``cuda_4bit``: bf16 compute, ``cuda_bf16``, ``cpu_float32``) or (device, quant, torch dtype)."""
    import torch

    from vqa_cli.model import memory

    named = {"cuda_4bit": ("cuda", "4bit", torch.bfloat16), "cuda_bf16": ("cuda", "none", torch.bfloat16),
             "cpu_float32": ("cpu", "none", torch.float32)}
    device, quant, dtype = named[setting] if isinstance(setting, str) else setting
    frames, prefill, total = default_request(adapter, frames, mode)
    est = memory.request_memory(adapter, quant=quant, dtype_bytes=dtype.itemsize, dtype=dtype, device=device,
                              frames=frames, prefill_tokens=prefill, total_tokens=total)
    return est.peak_bytes


PEAKS = ("cuda_4bit", "cuda_bf16", "cpu_float32")


def costs(config: Any) -> dict[str, Any]:
    """Parameters, weight memory per quantization, the default request's KV cache and peaks, from a config."""
    from vqa_cli.model import memory

    adapter = adapter_for(config)
    tokens = default_request(adapter)[2]
    estimates = {q: memory.estimate_memory(adapter, q, FP16_BYTES, tokens) for q in QUANTS}
    return {
        "parameters": estimates["none"].parameters,
        "memory_gib": {q: gib(e.weight_bytes, 2) for q, e in estimates.items()},
        "kv_cache_gib": gib(estimates["none"].kv_cache_bytes, 2),
        "peak_gib": {s: gib(request_peak(adapter, s), 2) for s in PEAKS},
    }


def describe(ckpt: KnownCheckpoint, cache_dir: Path | None = None, default: str = DEFAULT_MODEL) -> dict[str, Any]:
    """One catalog row (see the module docstring for what each size means); ``default``: this machine's
    default alias (``DEFAULT_MODEL`` with CUDA, ``DEFAULT_CPU_MODEL`` without)."""
    snapshot = cached_snapshot(ckpt.repo_id, cache_dir)
    weights = weight_files(snapshot) if snapshot else None
    row: dict[str, Any] = {
        "alias": ckpt.alias,
        "repo_id": ckpt.repo_id,
        "family": ckpt.family,
        "params": ckpt.params,
        "default": ckpt.alias == default,
        "default_cuda": ckpt.alias == DEFAULT_MODEL,
        "default_cpu": ckpt.alias == DEFAULT_CPU_MODEL,
        "cached": weights is not None,
        "config_cached": snapshot is not None,
        "path": str(snapshot) if snapshot else None,
    }
    from vqa_cli.model import loading

    row.update(costs(loading.read_config(snapshot) if snapshot else published_config(ckpt)),
               config_source="cache" if snapshot else "published")
    size = sum(f.stat().st_size for f in weights) if weights else row["parameters"] * FP16_BYTES
    row.update(disk_bytes=size, disk_gb=round(size / GB, 2), disk_estimated=weights is None)
    row.update(_quantized_copies(snapshot if weights else None))
    return row


def _quantized_copies(snapshot: Path | None) -> dict[str, Any]:
    """The current pre-quantized copies of a cached snapshot (``vqa_cli.model.quantized``; offline, manifests only)."""
    from vqa_cli.model import quantized

    copies = quantized.copies_of(snapshot) if snapshot else []
    return {"quantized": sorted({c["quant"] for c in copies}),
            "quantized_copies": [{k: c[k] for k in ("quant", "dtype", "device", "disk_bytes", "path")} for c in copies]}


def list_models(cache_dir: Path | None = None, cuda: bool | None = None) -> list[dict[str, Any]]:
    """Every known checkpoint with its sizes and whether it is cached (offline). ``cuda``: whether this
    machine has CUDA, which decides the ``default`` mark (None: ask torch)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    default = DEFAULT_MODEL if cuda else DEFAULT_CPU_MODEL
    return [describe(ckpt, cache_dir, default) for ckpt in CHECKPOINTS]


def remote_weight_bytes(repo_id: str) -> int | None:
    """The size of a hub repository's safetensors weights (one metadata request), None when unknown."""
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo_id, files_metadata=True, timeout=10)
        sizes = [f.size or 0 for f in info.siblings or () if f.rfilename.endswith(".safetensors")]
    except Exception:  # noqa: BLE001 - the size is a courtesy: the download itself reports real errors
        return None
    return sum(sizes) or None


def fetch_weights(name: str, *, size: Any = remote_weight_bytes, progress: bool | None = None) -> None:
    """Before a run loads a hub model whose weights are not cached yet: say what will be downloaded (size and
    destination), then download it with progress bars and ETA on a terminal. Ctrl-C leaves the partial
    files in the cache (``*.incomplete``), and the next run or ``vqa download`` resumes them.

    Nothing happens for a local directory, a cached model or offline (``HF_HUB_OFFLINE``: the load then
    fails with its own message). ``size``: a repository's weight bytes (tests pass their own)."""
    from huggingface_hub import constants

    from vqa_cli import console
    from vqa_cli.model import loading

    if Path(name).expanduser().is_dir() or constants.is_offline_mode():
        return
    repo_id = resolve_alias(name)
    if not loading.is_hub_id(repo_id):
        return
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None and weight_files(snapshot) is not None:
        return
    total = size(repo_id)
    what = f"{size_text(total, 1, smaller=False, decimal=True)} of weights" if total else "its weights"
    console.info(f"downloading {repo_id}: {what} into {hub_cache_dir()} "
                 "(first run only; Ctrl-C stops, and the next run resumes)")
    try:
        download(name, progress=console.stderr_is_tty() if progress is None else progress)
    except KeyboardInterrupt:
        console.info(f"download of {repo_id} stopped: run the command again, or `vqa download {name}`, to resume it")
        raise


def download(name: str, progress: bool = True) -> Path:
    """Configs, tokenizer, chat template and safetensors weights of an alias or hub id into the HF cache.

    Returns the local snapshot folder (a local directory is returned as it is). Errors are
    ``vqa_cli.errors`` classes: unknown or gated repositories are ``UnknownModelError``, no
    network is ``ModelNotCachedError``.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    from vqa_cli.model import loading

    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        path = loading.resolve_model_dir(name, weights=True)
        if path.is_relative_to(hub_cache_dir()) and weight_files(path) is None:
            raise ModelNotCachedError(f"{name!r}: only its configs are in the cache and the hub cannot be reached")
        return path
    except ModelNotCachedError as exc:
        raise ModelNotCachedError(f"cannot download {name!r}: the hub cannot be reached") from exc
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
