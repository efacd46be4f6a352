"""Speech models: faster-whisper's names (``tiny`` ... ``large-v3``, ``turbo``, ``.en`` variants) or a local folder
of CTranslate2 Whisper files -> a local folder; what each size costs; the default per device.

Names map to the hub repositories faster-whisper itself uses (``SPEECH_MODELS``, the same as its
``faster_whisper.utils._MODELS``). Downloads go through huggingface-hub like the vision models' and fetch only a
CTranslate2 model's files (``PATTERNS``: ``model.bin`` is CTranslate2's own weight format, not a pickle; no code is
ever fetched or run). A name not in the local cache with no network is ``ModelNotCachedError`` naming
``vqa download NAME``.

The default (``SpeechSettings.model`` None): ``turbo`` on CUDA (large-v3's encoder with a 4-layer decoder: near
large-v3's accuracy at several times its speed, 1.6 GB in float16), ``small`` on the CPU (multilingual, 0.5 GB,
the largest size that transcribes faster than real time on a few cores in int8), as the vision default is a small
model on the CPU and a large one on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vqa_cli.errors import ModelNotCachedError, UnknownModelError

DEFAULT_CUDA = "turbo"
DEFAULT_CPU = "small"
PATTERNS = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]
REQUIRED = ("model.bin", "config.json")  # a folder without them is no CTranslate2 Whisper model


@dataclass(frozen=True)
class SpeechModel:
    """A size: its hub repository, the float16 ``model.bin`` on disk (as published) and its parameters."""

    name: str
    repo: str
    disk_mb: int  # the repository's model.bin (float16), MB (10^6 bytes)
    parameters_m: int  # millions (Whisper's paper; turbo and distil from their model cards)
    multilingual: bool

    def memory_mb(self, device: str) -> int:
        """The weights in memory: int8 on the CPU (1 byte a parameter), float16 on CUDA (2 bytes)."""
        return self.parameters_m * (2 if device.startswith("cuda") else 1)


_SIZES = [("tiny", 39, 75), ("base", 74, 145), ("small", 244, 484), ("medium", 769, 1530)]
SPEECH_MODELS: dict[str, SpeechModel] = {}
for _name, _params, _disk in _SIZES:
    SPEECH_MODELS[f"{_name}.en"] = SpeechModel(f"{_name}.en", f"Systran/faster-whisper-{_name}.en", _disk, _params,
                                               False)
    SPEECH_MODELS[_name] = SpeechModel(_name, f"Systran/faster-whisper-{_name}", _disk, _params, True)
for _name in ("large-v1", "large-v2", "large-v3"):
    SPEECH_MODELS[_name] = SpeechModel(_name, f"Systran/faster-whisper-{_name}", 3090, 1550, True)
SPEECH_MODELS["large"] = SpeechModel("large", "Systran/faster-whisper-large-v3", 3090, 1550, True)
SPEECH_MODELS["turbo"] = SpeechModel("turbo", "mobiuslabsgmbh/faster-whisper-large-v3-turbo", 1620, 809, True)
SPEECH_MODELS["large-v3-turbo"] = SpeechModel("large-v3-turbo", "mobiuslabsgmbh/faster-whisper-large-v3-turbo", 1620,
                                              809, True)
for _name, _repo, _disk, _params, _multi in (
        ("distil-large-v2", "Systran/faster-distil-whisper-large-v2", 1510, 756, True),
        ("distil-large-v3", "Systran/faster-distil-whisper-large-v3", 1510, 756, True),
        ("distil-large-v3.5", "distil-whisper/distil-large-v3.5-ct2", 1510, 756, True),
        ("distil-medium.en", "Systran/faster-distil-whisper-medium.en", 789, 394, False),
        ("distil-small.en", "Systran/faster-distil-whisper-small.en", 333, 166, False)):
    SPEECH_MODELS[_name] = SpeechModel(_name, _repo, _disk, _params, _multi)


def default_model(device: str) -> str:
    """The speech model for a device when none is named: ``DEFAULT_CUDA`` on a GPU, ``DEFAULT_CPU`` on the CPU."""
    return DEFAULT_CUDA if device.startswith("cuda") else DEFAULT_CPU


def is_model_dir(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED)


def resolve(name: str, *, download: bool = True) -> Path:
    """A local folder of CTranslate2 Whisper files for a faster-whisper name or a folder (downloading a name's
    files when they are not cached and ``download``)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not is_model_dir(path):
            raise UnknownModelError(f"{name!r} is no faster-whisper model folder: it needs "
                                    f"{' and '.join(REQUIRED)} (CTranslate2's Whisper conversion)")
        return path
    if name not in SPEECH_MODELS:
        if name.startswith((".", "/", "~")) or path.exists():
            raise UnknownModelError(f"no speech model folder at {name!r}")
        raise UnknownModelError(f"unknown speech model {name!r}: a folder or one of {', '.join(SPEECH_MODELS)}")
    return _snapshot(SPEECH_MODELS[name], download=download)


def cached(name: str) -> Path | None:
    """The cached folder of a name, None when it is not complete in the local hub cache (offline)."""
    try:
        return _snapshot(SPEECH_MODELS[name], download=False)
    except ModelNotCachedError:
        return None


def _snapshot(model: SpeechModel, *, download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(model.repo, allow_patterns=PATTERNS, local_files_only=True))
        if is_model_dir(folder):
            return folder
    except LocalEntryNotFoundError:
        pass
    if not download:
        raise ModelNotCachedError(f"speech model {model.name} is not in the local cache: `vqa download {model.name}`")
    try:
        return Path(snapshot_download(model.repo, allow_patterns=PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise ModelNotCachedError(
            f"speech model {model.name} ({model.repo}) is not in the local cache and the hub cannot be reached: "
            f"run `vqa download {model.name}` while online, or pass a local folder") from exc


def describe(name: str, device: str) -> dict:
    """A catalog row: the name, its repository, disk and memory (MB), multilingual, cached, default."""
    model = SPEECH_MODELS[name]
    return {"name": name, "repo": model.repo, "disk_mb": model.disk_mb, "memory_mb": model.memory_mb(device),
            "multilingual": model.multilingual, "cached": cached(name) is not None,
            "default": name == default_model(device)}
