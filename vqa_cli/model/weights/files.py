"""A checkpoint's safetensors weights: which files they are, and ``from_pretrained`` with every way they can be
broken (a missing shard, a truncated file, a tensor whose shape is not the config's) as a ``CheckpointError``
naming the file. The one place ``from_pretrained`` is called (the model, a pre-quantized copy, the guide).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqa_cli import console
from vqa_cli.errors import CheckpointError
from vqa_cli.model.loading import file_problem, read_json, short_cause

if TYPE_CHECKING:
    from transformers import PreTrainedModel


WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


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
        return short_cause(e).removeprefix("Error while deserializing header: ")

    for path in files:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except SafetensorError as bad:
            return f"{path} is truncated or corrupt ({detail(bad)}): download it again"
        except OSError as bad:
            return file_problem(path, bad)
    return f"the weights in {model_dir} cannot be read ({detail(exc)}): download them again"


def load_weights(cls: type[PreTrainedModel], model_dir: Path, **kwargs: Any) -> PreTrainedModel:
    """``cls.from_pretrained(model_dir, **kwargs)`` from safetensors; broken or mismatched weights are a
    CheckpointError naming the file (or, for a tensor whose shape is not the config's, the tensor)."""
    from safetensors import SafetensorError

    files = weight_files(model_dir)
    try:
        # Mismatched shapes are collected rather than raised so the message can name the tensor.
        with quiet_transformers():
            model, info = cls.from_pretrained(model_dir, use_safetensors=True, ignore_mismatched_sizes=True,
                                              output_loading_info=True, **kwargs)
    except SafetensorError as exc:
        raise CheckpointError(_safetensors_problem(model_dir, files, exc)) from exc
    except OSError as exc:  # a file that vanished or cannot be read
        where = exc.filename or f"the weights in {model_dir}"
        raise CheckpointError(f"cannot read {where}: {exc.strerror or short_cause(exc)}") from exc
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


@contextmanager
def quiet_transformers() -> Iterator[None]:
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
