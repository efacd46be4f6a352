"""The known checkpoints, what they cost, and which are already on this machine (``vqa models``, ``vqa download``).

Everything here is offline except ``download``. A checkpoint counts as ``cached`` when its
config and every safetensors shard are in the local Hugging Face cache, so ``vqa ask`` can run
with no network. Sizes:

- ``disk_bytes`` / ``disk_gb`` (10^9 bytes): the real size of the cached safetensors when they are
  there; otherwise the nominal parameter count (``params``, "7B") at 2 bytes per parameter
  (fp16), marked ``disk_estimated``.
- ``memory_gib``: GPU memory for the weights alone at each quantization (fp16 compute dtype).
  With the config cached it is exact (``plan.estimate_memory`` counts the architecture's
  parameters on the meta device and keeps the vision tower, projector and head unquantized);
  without it, the nominal count with every weight quantized, marked ``memory_estimated`` (a
  lower bound: the unquantized vision tower and embeddings are not known without the config).
- ``kv_cache_gib``: with the config cached, the KV cache of the family's default request
  (``--mode anyres`` at its default frames, a short prompt and 256 new tokens); else None.
- ``quantized``: the quantizations (``4bit``, ``8bit``) with a current pre-quantized copy of the
  cached snapshot in the vqa cache (``vqa_cli.quantized``), ``quantized_copies`` their details.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vqa_cli.errors import ModelNotCachedError
from vqa_cli.models.registry import (
    CHECKPOINTS,
    DEFAULT_CPU_MODEL,
    DEFAULT_MODEL,
    KnownCheckpoint,
    adapter_for,
    resolve_alias,
)

QUANTS = ("4bit", "8bit", "none")
FP16_BYTES = 2
DEFAULT_PROMPT_TOKENS = 64  # a short question in the chat template, for the default-request KV cache
DEFAULT_NEW_TOKENS = 256
_GB = 10**9
_GIB = 1024**3


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


def _round(value: float) -> float:
    return round(value, 2)


def _exact_costs(snapshot: Path) -> dict[str, Any]:
    """Parameters, weight memory per quantization and the default request's KV cache, from the config."""
    from vqa_cli import loading, modes, plan

    adapter = adapter_for(loading.read_config(snapshot))
    visual = modes.plan(modes.ModeSettings("anyres"), adapter.default_frames, adapter.geometry()).total
    tokens = visual + DEFAULT_PROMPT_TOKENS + DEFAULT_NEW_TOKENS
    estimates = {q: plan.estimate_memory(adapter, q, FP16_BYTES, tokens) for q in QUANTS}
    return {
        "parameters": estimates["none"].parameters,
        "memory_gib": {q: _round(e.weight_bytes / _GIB) for q, e in estimates.items()},
        "kv_cache_gib": _round(estimates["none"].kv_cache_bytes / _GIB),
        "memory_estimated": False,
    }


def _nominal_costs(ckpt: KnownCheckpoint) -> dict[str, Any]:
    from vqa_cli.plan import QUANT_BYTES

    n = ckpt.nominal_parameters
    per_param = {"none": FP16_BYTES, **QUANT_BYTES}
    return {
        "parameters": n,
        "memory_gib": {q: _round(n * per_param[q] / _GIB) for q in QUANTS},
        "kv_cache_gib": None,
        "memory_estimated": True,
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
    size = sum(f.stat().st_size for f in weights) if weights else ckpt.nominal_parameters * FP16_BYTES
    row.update(disk_bytes=size, disk_gb=_round(size / _GB), disk_estimated=weights is None)
    row.update(_exact_costs(snapshot) if snapshot else _nominal_costs(ckpt))
    row.update(_quantized_copies(snapshot if weights else None))
    return row


def _quantized_copies(snapshot: Path | None) -> dict[str, Any]:
    """The current pre-quantized copies of a cached snapshot (``vqa_cli.quantized``; offline, manifests only)."""
    from vqa_cli import quantized

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

    from vqa_cli import console, loading

    if Path(name).expanduser().is_dir() or constants.is_offline_mode():
        return
    repo_id = resolve_alias(name)
    if not loading.is_hub_id(repo_id):
        return
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None and weight_files(snapshot) is not None:
        return
    total = size(repo_id)
    what = f"{total / _GB:.1f} GB of weights" if total else "its weights"
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

    from vqa_cli import loading

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
