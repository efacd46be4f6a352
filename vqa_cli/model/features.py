"""Visual-feature cache: a clip's visual tokens, kept so a second question about it skips decode and encode.

A clip's visual tokens (the mode's output, [N, D], what the prompt's placeholder is replaced with)
depend only on the file, how it was sampled, the mode and the model. ``feature_key`` hashes exactly
those: the file's identity (resolved path, size and modification time, or the bytes' hash for an
upload), the sampling settings, the mode settings, the checkpoint's files, the compute dtype and the
device kind; with prompt-guided pooling also the question, and the subtitles given before it (``context``:
their digest, for the question the guide reads is the subtitle text and the prompt). Without the guide the
visual tokens do not depend on any text, so subtitles do not change the key: a run with subtitles shares its
visual tokens with one without. A changed file gets a new key, so a stale entry is never used.

``FeatureCache`` keeps entries in memory (least recently used first out, bounded in bytes) and,
with a folder, on disk as one safetensors file per key (written atomically), for ``vqa serve`` and
for ``caption --feature-cache DIR`` re-runs with another prompt.

An entry on disk is checked before it is used: its metadata holds the SHA-256 of its tensor (dtype, shape and
bytes) and clip record, and the key's inputs (whose hash must be the file's name). A file that does not open,
a checksum that does not match (flipped bytes), an entry without them (an older vqa's) or one made for another
key is a one-line warning (once per entry) and a miss: the tokens are computed again and the entry replaced. A write
goes to a temporary file in the folder, renamed into place when complete; the temporary file is removed on
every failure (a full disk, an error, an interrupt). A folder vqa cannot write (read-only, a file where the
folder should be, a full disk) is one warning, and the run goes on with the memory cache only. Temporary
files older than ``STALE_TMP_SECONDS`` (left by a killed process or an older vqa) are removed when the cache
opens.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from vqa_cli import console
from vqa_cli.fingerprint import file_stamp, sha256

if TYPE_CHECKING:
    import torch

    from vqa_cli.model.engine import Engine
    from vqa_cli.settings import RunSettings
    from vqa_cli.video import Clip

_K = TypeVar("_K")
_V = TypeVar("_V")

DISK_SUFFIX = ".safetensors"
TMP_PREFIX = ".tmp-"  # a write in progress: TMP_PREFIX + random + DISK_SUFFIX, in the folder
STALE_TMP_SECONDS = 15 * 60  # a temporary file this old is no write in progress: removed when a cache opens
_CLIP_FIELDS = ("path", "indices", "timestamps", "duration", "fps", "frames_from_content", "is_image",
                "frames_from_header", "fps_from_header", "seek", "decoded", "damaged", "warnings", "decoder", "codec")


def file_identity(path: str) -> dict:
    """What identifies a file's content cheaply: resolved path, size and modification time (ns)."""
    st = os.stat(path)
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def bytes_identity(data: bytes) -> dict:
    """An uploaded file's identity: its content hash."""
    return {"sha256": sha256(data)}


def model_identity(checkpoint_dir: Path) -> dict:
    """The checkpoint's files that decide the visual tokens (weights, configs), by name, size and mtime."""
    files = sorted(p for p in Path(checkpoint_dir).iterdir() if p.suffix in (".safetensors", ".json"))
    return {"dir": os.path.realpath(checkpoint_dir),
            "files": [file_stamp(p) for p in files]}


class Key(str):
    """A cache key (the hex SHA-256 of its inputs) that carries those inputs (``inputs``: the JSON that was
    hashed), so the entry written for it records what made it."""

    inputs: str = ""

    def __new__(cls, inputs: str) -> Key:
        key = super().__new__(cls, sha256(inputs))
        key.inputs = inputs
        return key

    def __reduce__(self) -> tuple:  # a copy or a pickle is made from the inputs, not from the hash
        return Key, (self.inputs,)


def feature_key(source: dict, settings: RunSettings, frames: int, model: dict, *, dtype: str, device: str,
                question: str = "", context: str = "") -> Key:
    """The cache key of a clip's visual tokens (see the module docstring); ``frames``: the planned count;
    ``context``: what else the guiding question holds (``subtitles.digest`` of the cues given before it)."""
    identity = {
        "source": source,
        "sampling": {"frames": frames, "fps": settings.fps, "max_frames": settings.max_frames,
                     "start": settings.start, "end": settings.end, "seek": settings.seek},
        "mode": settings.mode.to_dict(),
        "model": model,
        "dtype": dtype,
        "device": device.split(":")[0],
        "question": question if settings.mode.guide else "",
    }
    if settings.mode.guide:  # only then: keys without the guide stay as they were
        identity["guide_model"] = settings.guide_model
    if context and settings.mode.guide:  # only then: keys without subtitles stay as they were
        identity["context"] = context
    return Key(json.dumps(identity, sort_keys=True))


def key_for(engine: Engine, source: dict, settings: RunSettings, frames: int, question: str = "",
            context: str = "") -> Key:
    """``feature_key`` of a clip for ``engine`` (a loaded ``engine.Engine``): its checkpoint files, dtype, device."""
    return feature_key(source, settings, frames, _loaded_identity(str(engine.checkpoint.dir)),
                       dtype=str(engine.loaded.dtype), device=engine.loaded.device, question=question,
                       context=context)


@functools.lru_cache(maxsize=8)
def _loaded_identity(checkpoint_dir: str) -> dict:
    """``model_identity`` of a checkpoint whose weights this process has loaded (read once)."""
    return model_identity(Path(checkpoint_dir))


def entry_digest(tensor: torch.Tensor, clip: str) -> str:
    """SHA-256 of a CPU tensor's dtype, shape and bytes and of its clip record (``clip``: the JSON stored with it):
    what an entry on disk is checked against."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    raw = flat.view(torch.uint8) if flat.numel() else flat.new_empty(0, dtype=torch.uint8)
    digest = hashlib.sha256(f"{tensor.dtype}:{list(tensor.shape)}:".encode())
    digest.update(raw.numpy().tobytes())
    digest.update(b"\0" + clip.encode())
    return digest.hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def clip_meta(clip: Clip) -> dict:
    """A clip without its pixels: what records and prompts need once its tokens are known (the frames' size
    included: a native-resolution family lays its tokens out on it)."""
    return {**{name: getattr(clip, name) for name in _CLIP_FIELDS}, "frame_size": list(clip.frames.shape[1:3])}


def clip_from_meta(meta: dict) -> Clip:
    """A ``video.Clip`` from ``clip_meta`` (no pixels: its visual tokens come from the cache). Its ``frames`` are a
    read-only zero-stride view of one black pixel with the clip's shape (frames, height, width): no memory."""
    import numpy as np

    from vqa_cli.video import Clip

    height, width = meta.get("frame_size") or (1, 1)
    count = len(meta["indices"]) if meta.get("frame_size") else 0
    frames = np.broadcast_to(np.zeros((1, 1, 1, 3), dtype=np.uint8), (count, height, width, 3))
    return Clip(frames=frames, **{k: meta[k] for k in _CLIP_FIELDS})


class BytesLRU(Generic[_K, _V]):
    """Entries with a size, least recently used out first while their total is over ``max_bytes``; an entry
    larger than the whole budget is not kept. Not locked: its owner locks."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[_K, tuple[_V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: _K) -> _V | None:
        """The value (now the most recently used), or None."""
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key][0]

    def add(self, key: _K, value: _V, size: int) -> None:
        if size > self.max_bytes:
            return
        self.pop(key)
        self._entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, old) = self._entries.popitem(last=False)
            self.bytes -= old

    def pop(self, key: _K) -> _V | None:
        """Remove and return the value (None when absent)."""
        if key not in self._entries:
            return None
        value, size = self._entries.pop(key)
        self.bytes -= size
        return value

    def items(self) -> list[tuple[_K, _V]]:
        return [(key, value) for key, (value, _) in self._entries.items()]


@dataclasses.dataclass
class Entry:
    clip: Clip  # without pixels
    features: torch.Tensor  # [N, D] on the CPU
    where: str  # "memory" or "disk": where this lookup found it


class FeatureCache:
    """In-memory LRU (``max_bytes``) in front of an optional on-disk folder; safe to share between threads."""

    def __init__(self, max_bytes: int, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder else None
        self._memory: BytesLRU[str, tuple[Clip, torch.Tensor]] = BytesLRU(max_bytes)  # key -> (clip, features)
        self._lock = threading.Lock()
        self.hits = {"memory": 0, "disk": 0}
        self.misses = 0
        self._warned: set[str] = set()  # entries already said to be bad: one warning each
        self._writes: ThreadPoolExecutor | None = None  # disk writes, off the caller's (the model's) thread
        self._disk_ok = self.folder is not None and self._open_folder()  # False: memory only (after a warning)
        if self._disk_ok:
            self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vqa-feature-cache")

    def _open_folder(self) -> bool:
        """Make the folder, check that a file can be written in it and remove stale temporary files; False (after
        one warning) when it cannot be written: entries already there are still read."""
        assert self.folder is not None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.folder, prefix=TMP_PREFIX, suffix=DISK_SUFFIX)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            self._unwritable(exc)
            return False
        now = time.time()
        for stale in self.folder.glob(f"{TMP_PREFIX}*{DISK_SUFFIX}"):
            try:
                if now - stale.stat().st_mtime > STALE_TMP_SECONDS:
                    stale.unlink()
            except OSError:  # gone already (another process cleaned it), or not ours to remove
                pass
        return True

    def _unwritable(self, exc: BaseException) -> None:
        reason = getattr(exc, "strerror", None) or exc
        console.info(f"warning: cannot write the feature cache in {self.folder} ({reason}): "
                     "going on with the memory cache only")

    def get(self, key: str) -> Entry | None:
        with self._lock:
            held = self._memory.get(key)
            if held is not None:
                self.hits["memory"] += 1
                return Entry(*held, "memory")
        found = self._read(key)
        with self._lock:
            if found is None:
                self.misses += 1
                return None
            self.hits["disk"] += 1
        self._remember(key, *found)
        return Entry(*found, "disk")

    def put(self, key: str, clip: Clip, features: torch.Tensor) -> None:
        """Keep ``features`` (moved to the CPU) for ``clip``; on disk too when the cache has a folder vqa can write
        (written on a thread of the cache's own: ``flush`` waits for it)."""
        features = features.detach().to("cpu").contiguous()
        meta = clip_meta(clip)
        self._remember(key, clip_from_meta(meta), features)
        if self._writes is not None:
            self._writes.submit(self._write, key, meta, features)

    def flush(self) -> None:
        """Wait until every entry ``put`` so far is on disk."""
        if self._writes is not None:
            self._writes.submit(lambda: None).result()

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._memory), "bytes": self._memory.bytes, "max_bytes": self._memory.max_bytes,
                    "hits": dict(self.hits), "misses": self.misses,
                    "folder": str(self.folder) if self.folder else None}

    def _remember(self, key: str, clip: Clip, features: torch.Tensor) -> None:
        with self._lock:
            if key not in self._memory:
                self._memory.add(key, (clip, features), features.numel() * features.element_size())

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{key}{DISK_SUFFIX}"

    def _read(self, key: str) -> tuple[Clip, torch.Tensor] | None:
        """The entry on disk when it is whole and made for ``key`` (see the module docstring), else None."""
        if self.folder is None or not self._path(key).is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self._path(key)), framework="pt") as f:
                stored = f.metadata() or {}
                features = f.get_tensor("features")
        except Exception as exc:  # noqa: BLE001 - any way a file fails to open is a damaged entry
            return self._bad(key, f"damaged ({type(exc).__name__})")
        if not {"sha256", "name", "clip"} <= set(stored):
            return self._bad(key, "without a checksum (written by an older vqa)")
        if entry_digest(features, stored["clip"]) != stored["sha256"]:
            return self._bad(key, "damaged (it does not match its checksum)")
        inputs = stored.get("key", "")
        if stored["name"] != key or (inputs and sha256(inputs) != key):
            return self._bad(key, "made for other settings than its name says")
        try:
            return clip_from_meta(json.loads(stored["clip"])), features
        except (ValueError, KeyError, TypeError) as exc:
            return self._bad(key, f"damaged ({type(exc).__name__} in its clip record)")

    def _bad(self, key: str, why: str) -> None:
        """One warning per entry: it is computed again (and replaced where the folder can be written)."""
        with self._lock:
            first = key not in self._warned
            self._warned.add(key)
        if first:
            console.info(f"warning: feature-cache entry {self._path(key)} is {why}: computing it again")
        return None

    def _write(self, key: str, meta: dict, features: torch.Tensor) -> None:
        """``features`` to the key's file, through a temporary file removed whatever happens; a failure (a full
        disk, a folder gone read-only) is one warning and the end of disk writes for this cache."""
        from safetensors.torch import save

        assert self.folder is not None
        if not self._disk_ok:  # an earlier write failed: memory only
            return
        tmp: str | None = None
        try:
            clip = json.dumps(meta)
            data = save({"features": features}, metadata={
                "clip": clip, "sha256": entry_digest(features, clip), "name": str(key),
                "key": getattr(key, "inputs", "")})  # a ``Key``'s inputs; "" for a bare string
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=TMP_PREFIX, suffix=DISK_SUFFIX)
            try:
                _write_all(fd, data)  # os.write raises ENOSPC (safetensors' save_file may not)
            finally:
                os.close(fd)
            os.replace(tmp, self._path(key))
            tmp = None
        except Exception as exc:  # noqa: BLE001 - a failed disk copy costs the copy, never the answer
            self._disk_ok = False
            self._unwritable(exc)
        finally:
            if tmp is not None:  # also on KeyboardInterrupt
                Path(tmp).unlink(missing_ok=True)
