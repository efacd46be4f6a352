"""Pre-quantized copies: a checkpoint's bitsandbytes weights, written once and read instead of quantizing again.

Why: a 7B checkpoint is about 15 GB of 16-bit safetensors, and every ``--quant 4bit`` load reads all of it and
quantizes it on the fly, although the result is the same every time. The first quantized load of a checkpoint
therefore writes its quantized weights (bitsandbytes' own serialization, through transformers'
``save_pretrained``: safetensors only, about 4 GB for a 7B model) and later loads of the same checkpoint,
quantization and dtype read them instead: less to read and nothing to quantize. ``vqa download MODEL --quant
4bit`` writes one ahead of time.

Where: ``$VQA_CACHE/quantized/``; without ``VQA_CACHE``, ``$XDG_CACHE_HOME/vqa/quantized/`` or
``~/.cache/vqa/quantized/``. One folder per copy, named ``SOURCE-QUANT-DTYPE-KEY``. ``KEY`` hashes everything
the bytes depend on, so an out-of-date copy is never found under the name a load looks for:

- the source: its resolved path (for a hub snapshot that includes the revision), a hash of its config.json,
  and each weight file's name, size and modification time;
- the settings: the whole bitsandbytes config (4-bit or 8-bit, NF4, double quantization, compute dtype, the
  skip list that keeps the vision tower, projector and head unquantized), the dtype of those modules, and the
  kind of device (``cpu``, ``cuda``) that quantized it: copies are only checked against quantizing on load on
  the same kind of device, so a copy made on the CPU is not used on a GPU;
- the writers: the transformers and bitsandbytes versions, and this module's ``FORMAT``.

A copy folder holds the safetensors, the config.json transformers wrote (not used when loading: see below)
and ``vqa-quantized.json`` (the key's fields and each file's size, checked before every use). A copy is
written into a ``.tmp-*`` folder beside and renamed into place once complete, so a load never sees a half
copy; a temporary folder left by a killed process is removed by the next write after an hour. An
out-of-date copy of the same source and settings is removed once its replacement is in place.
A failed write (a full disk, a read-only cache) is one warning line: the load it followed has succeeded.
A broken copy (a file truncated or corrupt) is removed with a warning, and the load quantizes the source
again (which is intact) and writes a new copy.

``$VQA_QUANT_CACHE``: ``1`` (the default) reads and writes copies, ``read`` only reads them (write one with
``vqa download MODEL --quant 4bit``), ``0`` neither.

Loading a copy uses the caller's config, with the bitsandbytes config added: the RoPE scaling a request
applies to the config reaches the model, and quantized weights do not depend on it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqa_cli import console
from vqa_cli.errors import CheckpointError, OutputWriteError, UsageError
from vqa_cli.fingerprint import file_stamp, json_sha256, sha256
from vqa_cli.model.device import dtype_name
from vqa_cli.model.loading import CONFIG_FILE, short_cause
from vqa_cli.model.weights import files as weightfiles
from vqa_cli.units import size_text

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PretrainedConfig, PreTrainedModel

DeviceMap = str | dict[str, int | str]  # from_pretrained's: "auto", or module -> GPU index, "cpu" or "disk"

CACHE_ENV = "VQA_CACHE"
SWITCH_ENV = "VQA_QUANT_CACHE"
MANIFEST = "vqa-quantized.json"
FORMAT = 1  # this module's layout of a copy: bump it when that changes, and every older copy is out of date
TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 3600  # no write takes an hour: an older temporary folder belongs to a killed process
HEADROOM_BYTES = 256 * 2**20  # free space kept on the cache's disk beyond the copy itself
_SWITCH = {"1": "on", "on": "on", "yes": "on", "true": "on", "read": "read",
           "0": "off", "off": "off", "no": "off", "false": "off"}


def cache_dir() -> Path:
    """Where copies live, from the environment at call time (tests and users point ``VQA_CACHE`` elsewhere)."""
    if os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV]).expanduser()
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "vqa"
    else:
        root = Path.home() / ".cache" / "vqa"
    return root / "quantized"


def mode() -> str:
    """``on`` (read and write copies), ``read`` or ``off``, from ``$VQA_QUANT_CACHE``."""
    value = os.environ.get(SWITCH_ENV, "").strip().lower() or "1"
    if value not in _SWITCH:
        raise UsageError(f"{SWITCH_ENV} must be 1, read or 0, not {os.environ[SWITCH_ENV]!r}")
    return _SWITCH[value]


def human_size(n: int) -> str:
    """A copy's size on disk: ``14.2 GB``, or ``95.0 MB`` under a tenth of a GB."""
    return size_text(n, 1, decimal=True)


# ---- what a copy's bytes depend on -------------------------------------------------------------------------
def quant_name(bnb: BitsAndBytesConfig) -> str:
    return "4bit" if bnb.load_in_4bit else "8bit"


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _writer() -> dict[str, Any]:
    return {"format": FORMAT, "transformers": _package_version("transformers"),
            "bitsandbytes": _package_version("bitsandbytes")}


def source_identity(model_dir: Path) -> dict[str, Any]:
    """The source checkpoint as a copy is keyed by it: cheap (a stat per weight file and config.json's hash),
    and any change to the weights (a new download, an edited file) changes it."""
    resolved = model_dir.resolve()
    weights = [file_stamp(f) for f in weightfiles.weight_files(model_dir)]
    config = (model_dir / CONFIG_FILE).read_bytes()
    return {"path": str(resolved), "revision": resolved.name if resolved.parent.name == "snapshots" else None,
            "config_sha256": sha256(config), "weights": weights}


def device_kind(device_map: DeviceMap) -> str:
    """``cpu`` or ``cuda``: where a load's ``device_map`` puts the model (``{"": device}``, or ``"auto"``, which
    ``loader.load_model`` passes for CUDA only); several kinds are joined with ``+``."""
    if isinstance(device_map, str):
        return "cuda" if device_map == "auto" else device_map.split(":")[0]
    kinds = {"cuda" if isinstance(d, int) else str(d).split(":")[0] for d in device_map.values()}
    return "+".join(sorted(kinds))


def _settings(bnb: BitsAndBytesConfig, dtype: torch.dtype, device: str) -> dict[str, Any]:
    return {"quant": quant_name(bnb), "dtype": dtype_name(dtype), "device": device,
            "quantization": json.loads(json.dumps(bnb.to_dict(), sort_keys=True, default=str))}


def _key(identity: dict[str, Any]) -> str:
    return json_sha256({k: identity[k] for k in ("source", "settings", "writer")}, length=16)


def _slug(source: dict[str, Any]) -> str:
    """A readable name for the source in the folder name: ``owner--name`` for a hub snapshot, else the folder."""
    path = Path(source["path"])
    name = path.parents[1].name.removeprefix("models--") if source["revision"] and len(path.parents) > 1 else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "model"


def identity(model_dir: Path, bnb: BitsAndBytesConfig, dtype: torch.dtype, device: str) -> dict[str, Any]:
    """Everything a copy of ``model_dir`` quantized with ``bnb`` on a ``device`` (kind) with the unquantized
    modules in ``dtype`` depends on, with its key and folder name."""
    ident: dict[str, Any] = {"source": source_identity(model_dir), "settings": _settings(bnb, dtype, device),
                             "writer": _writer()}
    ident["key"] = _key(ident)
    settings = ident["settings"]
    ident["name"] = f"{_slug(ident['source'])}-{settings['quant']}-{settings['dtype']}-{ident['key']}"
    return ident


# ---- finding, loading and writing a copy -------------------------------------------------------------------
def manifest(folder: Path) -> dict[str, Any] | None:
    """A copy's ``vqa-quantized.json``, or None when it is missing or unreadable."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _problem(folder: Path, ident: dict[str, Any]) -> str | None:
    """What is wrong with the copy in ``folder`` for ``ident`` (None: it can be loaded)."""
    data = manifest(folder)
    if data is None:
        return f"{folder / MANIFEST} is missing or not valid JSON"
    if any(data.get(k) != ident[k] for k in ("key", "source", "settings", "writer")):
        return "it was written for other weights or settings"
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        return f"{folder / MANIFEST} lists no files"
    present = {p.name for p in folder.glob("*.safetensors")}
    if present != {n for n in files if n.endswith(".safetensors")}:
        return "its safetensors files are not the ones it was written with"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is truncated or was changed ({path.stat().st_size} bytes, written with {size})"
    return None


def _discard(folder: Path, why: str) -> None:
    console.info(f"warning: ignoring the pre-quantized copy {folder}: {why}; quantizing on load instead")
    shutil.rmtree(folder, ignore_errors=True)


def find(model_dir: Path, bnb: BitsAndBytesConfig, dtype: torch.dtype, device: str) -> Path | None:
    """The folder of a valid copy of ``model_dir`` for these settings, or None. A broken one is removed (with a
    warning): the load that asked quantizes the source instead and writes a new copy."""
    ident = identity(model_dir, bnb, dtype, device)
    folder = cache_dir() / ident["name"]
    if not folder.is_dir():
        return None
    problem = _problem(folder, ident)
    if problem is not None:
        _discard(folder, problem)
        return None
    return folder


def load(cls: type[PreTrainedModel], model_dir: Path, config: PretrainedConfig, bnb: BitsAndBytesConfig, *,
         dtype: torch.dtype, device_map: DeviceMap, **kwargs: Any) -> PreTrainedModel | None:
    """The model from a valid copy of ``model_dir``'s weights, or None (none there, copies switched off, or the
    copy is broken: then it is removed with a warning and the caller quantizes on load).

    Loaded with ``config`` (a copy, with the bitsandbytes config added so transformers reads the weights as
    already quantized), so RoPE scaling applied to ``config`` reaches the model; ``kwargs`` go to
    ``from_pretrained`` through ``files.load_weights``."""
    if mode() == "off":
        return None
    folder = find(model_dir, bnb, dtype, device_kind(device_map))
    if folder is None:
        return None
    prequantized = copy.deepcopy(config)
    prequantized.quantization_config = bnb.to_dict()  # transformers wants the dict form here
    try:
        return weightfiles.load_weights(cls, folder, config=prequantized, dtype=dtype, device_map=device_map, **kwargs)
    except CheckpointError as exc:
        _discard(folder, str(exc))
        return None


def _clear_temporaries(root: Path) -> None:
    """Remove temporary folders of writes that died (older than ``STALE_TMP_SECONDS``)."""
    now = time.time()
    for folder in root.glob(TMP_PREFIX + "*"):
        try:
            if now - folder.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


def _prune(keep: Path, written: dict[str, Any]) -> None:
    """Remove out-of-date copies of the same source and settings as ``keep`` (its replacement)."""
    for folder in keep.parent.iterdir():
        if folder == keep or folder.name.startswith(TMP_PREFIX) or not folder.is_dir():
            continue
        other = manifest(folder)
        if (other and other.get("source", {}).get("path") == written["source"]["path"]
                and other.get("settings") == written["settings"] and other.get("key") != written["key"]):
            shutil.rmtree(folder, ignore_errors=True)


def _write(model: PreTrainedModel, ident: dict[str, Any], root: Path) -> Path:
    """Write the copy into a temporary folder beside its final name, then rename it into place."""
    final = root / ident["name"]
    root.mkdir(parents=True, exist_ok=True)
    _clear_temporaries(root)
    need = int(model.get_memory_footprint())
    free = shutil.disk_usage(root).free
    if free < need + HEADROOM_BYTES:
        raise OSError(f"{need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free")
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{ident['name']}-", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the copy from other users of a shared cache
        with weightfiles.quiet_transformers():
            model.save_pretrained(tmp)  # transformers 5 writes safetensors only; checked below
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        if not any(n.endswith(".safetensors") for n in files) or any(n.endswith((".bin", ".pt")) for n in files):
            raise OSError(f"save_pretrained wrote {sorted(files)}, not safetensors")
        written = {k: ident[k] for k in ("key", "source", "settings", "writer")}
        written.update(files=files, disk_bytes=sum(files.values()),
                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        (tmp / MANIFEST).write_text(json.dumps(written, indent=2), encoding="utf-8")
        if final.exists() and _problem(final, ident) is None:
            return final  # another process wrote the same copy meanwhile
        shutil.rmtree(final, ignore_errors=True)  # a broken one under the name
        try:
            os.rename(tmp, final)
        except OSError:
            if _problem(final, ident) is not None:
                raise
            return final  # another process renamed the same copy into place first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed
    _prune(final, written)
    return final


def save(model: PreTrainedModel, model_dir: Path, bnb: BitsAndBytesConfig, dtype: torch.dtype, device: str, *,
         strict: bool = False) -> Path | None:
    """Write a copy of ``model`` (just quantized from ``model_dir`` with ``bnb``), or None when that failed.

    Call it before the model runs: on the CPU, bitsandbytes rewrites a 4-bit layer's quantization statistics in
    place at its first forward, and a copy saved after that would not load to the same model.

    A failure is one warning line, since the load it follows has succeeded; with ``strict`` (``vqa download
    --quant``, whose whole point is the copy) it is an ``OutputWriteError``."""
    root = cache_dir()
    try:
        return _write(model, identity(model_dir, bnb, dtype, device), root)
    except Exception as exc:  # noqa: BLE001 - never fail a load that succeeded; strict says why
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else short_cause(exc)
        if strict:
            raise OutputWriteError(f"cannot write the pre-quantized copy to {root}: {cause}") from exc
        console.info(f"warning: could not write a pre-quantized copy to {root} ({cause}); later loads "
                     "quantize on load again")
        return None


def remember(model: PreTrainedModel, model_dir: Path, bnb: BitsAndBytesConfig, dtype: torch.dtype,
             device_map: DeviceMap) -> Path | None:
    """After a quantize-on-load with ``device_map``: write a copy unless copies are switched off or read-only
    (``$VQA_QUANT_CACHE``)."""
    if mode() != "on":
        return None
    folder = save(model, model_dir, bnb, dtype, device_kind(device_map))
    if folder is not None:
        size = (manifest(folder) or {}).get("disk_bytes", 0)
        console.info(f"wrote a pre-quantized {quant_name(bnb)} copy ({human_size(size)}) to {folder}: later loads "
                     f"read it ({SWITCH_ENV}=0 turns this off)")
    return folder






# ---- listing -------------------------------------------------------------------------------------------------
def _current(data: dict[str, Any]) -> bool:
    """Whether a copy still matches its source's files and the installed libraries (what a load checks, except
    the settings, which need the checkpoint's config)."""
    try:
        return data.get("writer") == _writer() and source_identity(Path(data["source"]["path"])) == data["source"]
    except (OSError, KeyError, TypeError, CheckpointError):
        return False


def list_copies() -> list[dict[str, Any]]:
    """Every copy in the cache (offline: manifests and stats only), with whether it is current for its source.

    A folder without a readable manifest is listed with ``quant`` None (delete it)."""
    root = cache_dir()
    rows = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.startswith(TMP_PREFIX) or not folder.is_dir():
            continue
        data = manifest(folder) or {}
        source, settings = data.get("source") or {}, data.get("settings") or {}
        rows.append({"path": str(folder), "source": source.get("path"), "revision": source.get("revision"),
                     "quant": settings.get("quant"), "dtype": settings.get("dtype"), "device": settings.get("device"),
                     "disk_bytes": data.get("disk_bytes", 0), "created": data.get("created"),
                     "current": bool(data) and _current(data)})
    return rows


def copies_of(model_dir: Path) -> list[dict[str, Any]]:
    """The current copies of the checkpoint in ``model_dir`` (for ``vqa models``)."""
    path = str(model_dir.resolve())
    return [row for row in list_copies() if row["source"] == path and row["current"]]
