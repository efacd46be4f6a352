"""Model loading, in one place: name -> local directory -> config -> quantized model on a device.

- A name is a short alias, a hub id or a local directory. Hub checkpoints are resolved to the
  local HF cache with ``snapshot_download`` (configs, tokenizer, chat template and safetensors
  only: pickled ``.bin`` weights are never fetched nor loaded).
- Never ``trust_remote_code``: the family must be one transformers ships and vqa registers.
- bitsandbytes 4-bit NF4 (double quant) or 8-bit, with the vision tower and projector kept in
  full precision; ``device_map`` through accelerate.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqa_cli import console
from vqa_cli.errors import (
    CheckpointError,
    MemoryFitError,
    ModelNotCachedError,
    UnknownModelError,
    UnsupportedModelError,
    UsageError,
)
from vqa_cli.model.families.base import FamilyAdapter
from vqa_cli.model.families.registry import (
    CHECKPOINTS,
    DEFAULT_CPU_MODEL,
    DEFAULT_MODEL,
    adapter_for,
    family_for_model_type,
    resolve_alias,
)
from vqa_cli.settings import DTYPES, QUANTS

CONFIG_PATTERNS = ["*.json", "*.jinja", "tokenizer.model", "*.txt", "*.tiktoken"]
WEIGHT_PATTERNS = ["*.safetensors"]
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# Files a tokenizer is built from (any one will do; those CONFIG_PATTERNS fetches, plus *.tiktoken) and the
# JSON files that configure it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
TOKENIZER_JSON = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_cpu_notice_shown = False


def default_model(device: str | None = None) -> str:
    """``$VQA_MODEL``, else the default for the device the run will use (``--device``, else CUDA when
    available): ``DEFAULT_MODEL`` (7B, 4-bit) with CUDA, the small ``DEFAULT_CPU_MODEL`` on the CPU."""
    if os.environ.get("VQA_MODEL"):
        return os.environ["VQA_MODEL"]
    return DEFAULT_MODEL if resolve_device(device, planning=True).startswith("cuda") else DEFAULT_CPU_MODEL


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


# ---- reading a checkpoint's files: every way they can be broken is a CheckpointError naming the file ----
def _cause(exc: BaseException) -> str:
    """A library exception's message as a short cause on one line."""
    if isinstance(exc, KeyError) and exc.args:
        return f"no {exc.args[0]!r} entry"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text if len(text) <= 300 else text[:299] + "…"


def file_problem(path: Path, exc: BaseException) -> str:
    """What is wrong with ``path``, from the exception reading or parsing it raised: one line naming it."""
    if isinstance(exc, json.JSONDecodeError):
        if not exc.doc.strip():
            return f"{path} is empty"
        return f"{path} is not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return f"{path} is not UTF-8 text (byte {exc.start})"
    if isinstance(exc, OSError):
        return f"cannot read {path}: {exc.strerror or _cause(exc)}"
    return f"{path}: {_cause(exc)}"


def read_json(path: Path) -> dict:
    """A checkpoint's JSON file as a dict; unreadable, empty, not JSON or not an object: a CheckpointError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(file_problem(path, exc)) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def read_config_dict(model_dir: Path) -> dict:
    """``config.json`` as plain JSON (no transformers import), checked to name a ``model_type``."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise UnknownModelError(f"{str(model_dir)!r} is not a model checkpoint (no config.json)")
    data = read_json(path)
    if "model_type" not in data:
        raise CheckpointError(f"{path} has no model_type: it is not a transformers model config")
    if not isinstance(data["model_type"], str) or not data["model_type"]:
        raise CheckpointError(f"{path}: model_type {data['model_type']!r} is not an architecture name")
    return data


def checkpoint_family(model_dir: Path, model_type: str) -> type[FamilyAdapter]:
    """The vqa family of a checkpoint's ``model_type``; the refusal names its config.json."""
    try:
        return family_for_model_type(model_type)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{model_dir / CONFIG_FILE}: {exc}") from None


def read_config(model_dir: Path) -> Any:
    """The transformers config of any checkpoint (a vqa family or not: the guide model is CLIP)."""
    import transformers
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = model_dir / CONFIG_FILE
    model_type = read_config_dict(model_dir)["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise UnsupportedModelError(f"{path}: unsupported architecture {model_type!r}: transformers "
                                    f"{transformers.__version__} does not know it")
    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except StrictDataclassError as exc:  # a field of the wrong type: the cause says which
        raise CheckpointError(f"{path}: {_cause(exc.__cause__ or exc).split('. Errors:')[0]}") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: {_cause(exc)}") from exc


def read_checkpoint_config(model_dir: Path) -> tuple[Any, FamilyAdapter]:
    """A vqa checkpoint's config and family adapter; the family is checked before transformers reads it."""
    family = checkpoint_family(model_dir, read_config_dict(model_dir)["model_type"])
    config = read_config(model_dir)
    return config, family(config)


def has_tokenizer(model_dir: Path) -> bool:
    """Whether ``model_dir`` has a file a tokenizer is built from."""
    return any((model_dir / name).is_file() for name in TOKENIZER_FILES) or any(model_dir.glob("*.tiktoken"))


def load_tokenizer(model_dir: Path) -> Any:
    """The checkpoint's tokenizer; a missing or broken one is a CheckpointError naming the file."""
    from transformers import AutoTokenizer

    if not has_tokenizer(model_dir):  # transformers would build an empty one for some families (CLIP)
        raise CheckpointError(f"{model_dir} has no tokenizer: no tokenizer.json or tokenizer.model")
    try:
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(_tokenizer_problem(model_dir, exc)) from exc
    except Exception as exc:
        if type(exc) is not Exception:  # the tokenizers library (Rust) raises plain Exception for a bad tokenizer.json
            raise
        raise CheckpointError(_tokenizer_problem(model_dir, exc)) from exc


def _tokenizer_problem(model_dir: Path, exc: BaseException) -> str:
    for name in TOKENIZER_JSON:
        if (model_dir / name).is_file():
            read_json(model_dir / name)  # a file that is not a JSON object says so itself
    source = model_dir / "tokenizer.json"
    return f"{source if source.is_file() else model_dir}: cannot load the tokenizer: {_cause(exc)}"


def read_chat_template(model_dir: Path, tokenizer: Any) -> str:
    """The checkpoint's chat template (see ``prompt.load_chat_template``); missing or broken: a CheckpointError."""
    from vqa_cli.model.prompt import load_chat_template

    jinja, as_json = model_dir / "chat_template.jinja", model_dir / "chat_template.json"
    if not jinja.is_file() and as_json.is_file():
        template = read_json(as_json).get("chat_template")
        if not isinstance(template, str) or not template.strip():
            raise CheckpointError(f'{as_json} has no "chat_template" string')
    try:
        return load_chat_template(model_dir, tokenizer)
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(file_problem(jinja, exc)) from exc
    except UnsupportedModelError as exc:  # load_chat_template found none
        raise CheckpointError(f"{model_dir} has no chat template: no chat_template.jinja, chat_template.json "
                              "or chat_template in tokenizer_config.json") from exc


def read_processor_config(model_dir: Path) -> Any:
    """The checkpoint's video (else image) processor config; a broken one is a CheckpointError naming it."""
    from vqa_cli.video.preprocess import _CONFIG_FILES, ProcessorConfig

    for name in _CONFIG_FILES:  # both: the video one feeds frames, the image one a still's AnyRes path
        if (model_dir / name).is_file():
            read_json(model_dir / name)  # not JSON, not an object: says so
    path = next((model_dir / n for n in _CONFIG_FILES if (model_dir / n).is_file()), None)
    try:
        return ProcessorConfig.from_dir(model_dir)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a value of the wrong kind
        raise CheckpointError(f"{path or model_dir}: {_cause(exc)}") from exc


def weight_files(model_dir: Path) -> list[Path]:
    """The .safetensors files transformers will read; a shard the index names but the folder lacks fails here."""
    single, index = model_dir / WEIGHTS_FILE, model_dir / WEIGHTS_INDEX
    if single.is_file() or not index.is_file():
        files = sorted(model_dir.glob("*.safetensors"))
        for path in files:
            if not path.is_file():  # a hub cache link whose blob is gone, or a folder
                what = "a broken link" if path.is_symlink() and not path.exists() else "not a file"
                raise CheckpointError(f"{path} is {what}: download the checkpoint again")
        return files
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f'{index} has no "weight_map"')
    shards = sorted({str(name) for name in weight_map.values()})
    for name in shards:
        if not (model_dir / name).is_file():
            raise CheckpointError(f"{index} names {name}, which is missing: download the checkpoint again")
    return [model_dir / name for name in shards]


def _safetensors_problem(model_dir: Path, files: list[Path], exc: BaseException) -> str:
    """Which weight file is broken: safetensors' own error does not say."""
    from safetensors import SafetensorError, safe_open

    def detail(e: BaseException) -> str:
        return _cause(e).removeprefix("Error while deserializing header: ")

    for path in files:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except SafetensorError as bad:
            return f"{path} is truncated or corrupt ({detail(bad)}): download it again"
        except OSError as bad:
            return file_problem(path, bad)
    return f"the weights in {model_dir} cannot be read ({detail(exc)}): download them again"


def load_weights(cls: Any, model_dir: Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained(model_dir, **kwargs)`` from safetensors; broken or mismatched weights are a
    CheckpointError naming the file (or, for a tensor whose shape is not the config's, the tensor)."""
    from safetensors import SafetensorError

    files = weight_files(model_dir)
    try:
        # Mismatched shapes are collected rather than raised so the message can name the tensor.
        with _quiet_transformers():
            model, info = cls.from_pretrained(model_dir, use_safetensors=True, ignore_mismatched_sizes=True,
                                              output_loading_info=True, **kwargs)
    except SafetensorError as exc:
        raise CheckpointError(_safetensors_problem(model_dir, files, exc)) from exc
    except OSError as exc:  # a file that vanished or cannot be read
        where = exc.filename or f"the weights in {model_dir}"
        raise CheckpointError(f"cannot read {where}: {exc.strerror or _cause(exc)}") from exc
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        name, found, expected = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise CheckpointError(f"the weights in {model_dir} do not match its config.json: {name} has shape "
                              f"{list(found)}, the config says {list(expected)}{more}")
    missing = sorted(info.get("missing_keys") or ())
    if missing:  # loaded at random: say so (not refused: a checkpoint may legitimately leave a buffer out)
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        console.info(f"warning: the weights in {model_dir} lack {missing[0]}{more}: initialised at random, "
                     "so answers may be meaningless; download the checkpoint again")
    return model


def resolve_device(device: str | None, *, planning: bool = False) -> str:
    """The device a request runs on: ``cuda`` when available and none was asked for, else ``cpu``.

    ``planning`` (``--plan``) may name a device this machine lacks (a plan for a GPU made on a laptop)."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not planning and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available here")
    return device


def cpu_notice(requested: str | None, device: str) -> None:
    """Say once per process that the model runs on the CPU because no GPU was found (after it loaded,
    so that a failed load stays one line)."""
    global _cpu_notice_shown
    if requested in (None, "", "auto") and device == "cpu" and not _cpu_notice_shown:
        console.info("no CUDA GPU found: running on CPU (slow)")
        _cpu_notice_shown = True


def resolve_quant(quant: str | None, device: str) -> str:
    if quant in (None, "", "auto"):
        return "4bit" if device.startswith("cuda") else "none"
    if quant not in QUANTS:
        raise UsageError(f"--quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    return quant


def resolve_dtype(dtype: str | None, device: str, *, planning: bool = False) -> Any:
    """The compute dtype: bfloat16 on a GPU that has it (float16 otherwise), float32 on the CPU.

    ``planning`` assumes a GPU has bfloat16 (the device may not be on this machine)."""
    import torch

    if dtype in (None, "", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if planning or torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return getattr(torch, dtype)


def dtype_name(dtype: Any) -> str:
    """A torch dtype as ``--dtype`` spells it and records show it: ``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


def quantization_config(quant: str, adapter: FamilyAdapter, compute_dtype: Any, offload: bool = False) -> Any:
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
    model: Any
    adapter: FamilyAdapter
    device: str
    dtype: Any
    quant: str
    seconds: float
    prequantized: bool = False  # read from a pre-quantized copy (vqa_cli.model.quantized) instead of quantized on load


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """While loading: vqa shows its own spinner, and transformers' per-tensor bar and advice would interleave
    with it. Its settings are restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_model(model_dir: Path, config: Any, *, device: str, dtype: Any, quant: str,
               max_memory: dict[str, int] | None = None, device_map: dict | None = None,
               offload_dir: str | None = None) -> LoadedModel:
    """Weights from safetensors, quantized and placed; ``config`` carries any RoPE scaling.

    ``max_memory`` (``--max-memory``, bytes per ``cuda:N``/``cpu``): accelerate places the layers within it, and
    what does not fit goes to the CPU, then to disk (read from the safetensors). ``device_map``: that placement
    as the memory check computed it (``memory.place``: the caps less the KV cache and activations), so the load
    is what ``--plan`` showed; without it ``memory.device_map`` places the weights in the caps as they are. A
    placement with disk is refused unless ``offload_dir`` (``--offload-dir``) allows it: it is never passed to
    ``from_pretrained`` otherwise."""
    import transformers

    if quant == "8bit" and not device.startswith("cuda"):
        # bitsandbytes warns on every 8-bit matmul that fp32 inputs are cast to fp16: expected on the CPU.
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    adapter = adapter_for(config)
    if not any(model_dir.glob("*.safetensors")):
        raise UnknownModelError(f"{str(model_dir)!r} has no .safetensors weights (pickled weights are not loaded)")
    cls = getattr(transformers, adapter.model_class)
    from vqa_cli.model import memory

    offload: dict[str, Any] = {}
    if max_memory:
        device_map = dict(device_map or memory.device_map(adapter, quant, dtype, max_memory))
        if "disk" in device_map.values():
            if not offload_dir:
                raise MemoryFitError(f"--max-memory ({memory.describe_placement(max_memory)}) cannot hold the weights "
                                     "of this model without the disk: raise it, or allow the disk with --offload-dir")
            offload["offload_folder"] = str(offload_dir)
    else:
        device_map = "auto" if device == "cuda" else {"": device}
    started = time.perf_counter()
    bnb = quantization_config(quant, adapter, dtype, offload=bool(max_memory))
    from vqa_cli.model import quantized  # a pre-quantized copy of these weights, read instead of quantizing again

    # (not with --max-memory: the offloaded layers must stay unquantized)
    model = quantized.load(cls, model_dir, config, bnb, dtype=dtype, device_map=device_map) \
        if bnb and not max_memory else None
    prequantized = model is not None
    if model is None:
        with memory.quiet_offload() if max_memory else contextlib.nullcontext():
            model = load_weights(cls, model_dir, config=config, dtype=dtype,
                                 quantization_config=bnb, device_map=device_map, **offload)
        if max_memory:
            spread = sorted({str(d) if not isinstance(d, int) else f"cuda:{d}" for d in device_map.values()})
            slow = " (offloaded layers are slower)" if len(spread) > 1 else ""
            if "disk" in spread:
                slow = " (the layers on disk are read from it again for every generated token: slow)"
            console.info(f"--max-memory: the layers are on {', '.join(spread)}{slow}")
    model.eval()
    seconds = time.perf_counter() - started
    if bnb is not None and not prequantized and not max_memory:
        quantized.remember(model, model_dir, bnb, dtype, device_map)  # the first quantized load writes the copy
    return LoadedModel(model, adapter, device, dtype, quant, seconds, prequantized)


def input_device(model: Any) -> Any:
    """Where inputs go: the device of the input embeddings (accelerate may spread the rest; embeddings it
    offloaded compute where its hook brings them)."""
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    if embeddings.weight.device.type == "meta" and getattr(hook, "execution_device", None) is not None:
        import torch

        return torch.device(hook.execution_device)
    return embeddings.weight.device
