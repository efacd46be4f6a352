"""Names and the hub: an alias, hub id or local directory -> a local checkpoint folder, and the downloads.

- A name is a short alias, a hub id or a local directory. Hub checkpoints are resolved to the local HF
  cache with ``snapshot_download`` (configs, tokenizer, chat template and safetensors only: pickled
  ``.bin`` weights are never fetched nor loaded); ``weights=False`` fetches the configs alone (planning).
- ``fetch_weights`` is what a run does before it loads a hub model whose weights are not cached yet (says
  what it downloads, with progress on a terminal); ``download`` is ``vqa download``.
- ``cached_snapshot`` and ``snapshot_weights`` look at the cache offline (``vqa models``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from vqa_cli import console
from vqa_cli.errors import ModelNotCachedError, UnknownModelError
from vqa_cli.model import device as device_module
from vqa_cli.model.families.registry import CHECKPOINTS, DEFAULT_CPU_MODEL, DEFAULT_MODEL, resolve_alias
from vqa_cli.units import size_text

CONFIG_PATTERNS = ["*.json", "*.jinja", "tokenizer.model", "*.txt", "*.tiktoken"]
WEIGHT_PATTERNS = ["*.safetensors"]
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def default_model(device: str | None = None) -> str:
    """``$VQA_MODEL``, else the default for the device the run will use (``--device``, else CUDA when
    available): ``DEFAULT_MODEL`` (7B, 4-bit) with CUDA, ``DEFAULT_CPU_MODEL`` (2B, float32) on the CPU."""
    if os.environ.get("VQA_MODEL"):
        return os.environ["VQA_MODEL"]
    cuda = device_module.resolve_device(device, planning=True).startswith("cuda")
    return DEFAULT_MODEL if cuda else DEFAULT_CPU_MODEL


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a hub repository id (``owner/name``)."""
    return bool(_HUB_ID.match(name))


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


def snapshot_weights(snapshot: Path) -> list[Path] | None:
    """Every safetensors file a snapshot needs, or None when any is missing (or none is listed)."""
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
    else:
        names = [p.name for p in snapshot.glob("*.safetensors")]
    files = [snapshot / name for name in names]
    return files if files and all(f.is_file() for f in files) else None


def remote_weight_bytes(repo_id: str) -> int | None:
    """The size of a hub repository's safetensors weights (one metadata request), None when unknown."""
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo_id, files_metadata=True, timeout=10)
        sizes = [f.size or 0 for f in info.siblings or () if f.rfilename.endswith(".safetensors")]
    except Exception:  # noqa: BLE001 - the size is a courtesy: the download itself reports real errors
        return None
    return sum(sizes) or None


def fetch_weights(name: str, *, size: Callable[[str], int | None] = remote_weight_bytes,
                  progress: bool | None = None) -> None:
    """Before a run loads a hub model whose weights are not cached yet: say what will be downloaded (size and
    destination), then download it with progress bars and ETA on a terminal. Ctrl-C leaves the partial
    files in the cache (``*.incomplete``), and the next run or ``vqa download`` resumes them.

    Nothing happens for a local directory, a cached model or offline (``HF_HUB_OFFLINE``: the load then
    fails with its own message). ``size``: a repository's weight bytes (tests pass their own)."""
    from huggingface_hub import constants


    if Path(name).expanduser().is_dir() or constants.is_offline_mode():
        return
    repo_id = resolve_alias(name)
    if not is_hub_id(repo_id):
        return
    snapshot = cached_snapshot(repo_id)
    if snapshot is not None and snapshot_weights(snapshot) is not None:
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

    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        path = resolve_model_dir(name, weights=True)
        if path.is_relative_to(hub_cache_dir()) and snapshot_weights(path) is None:
            raise ModelNotCachedError(f"{name!r}: only its configs are in the cache and the hub cannot be reached")
        return path
    except ModelNotCachedError as exc:
        raise ModelNotCachedError(f"cannot download {name!r}: the hub cannot be reached") from exc
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
