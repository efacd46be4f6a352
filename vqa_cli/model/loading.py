"""Reading a checkpoint's files, weights aside: config, tokenizer, chat template and processor config.

- Never ``trust_remote_code``: the family must be one transformers ships and vqa registers.
- Every way a file can be broken (missing, empty, not JSON, a field of the wrong type, an unknown
  architecture) is a ``CheckpointError`` (or ``UnsupportedModelError``) naming the file, on one line.

The weights are ``vqa_cli.model.weights``'s: ``hub`` (names -> folders), ``files``, ``copies``, ``loader``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from vqa_cli.errors import CheckpointError, UnknownModelError, UnsupportedModelError
from vqa_cli.model.families.base import FamilyAdapter
from vqa_cli.model.families.registry import family_for_model_type

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from vqa_cli.video.preprocess import ProcessorConfig

CONFIG_FILE = "config.json"
# Files a tokenizer is built from (any one will do; those hub.CONFIG_PATTERNS fetches, plus *.tiktoken) and the
# JSON files that configure it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
TOKENIZER_JSON = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")


def short_cause(exc: BaseException) -> str:
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
        return f"cannot read {path}: {exc.strerror or short_cause(exc)}"
    return f"{path}: {short_cause(exc)}"


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


def read_config(model_dir: Path) -> PretrainedConfig:
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
        raise CheckpointError(f"{path}: {short_cause(exc.__cause__ or exc).split('. Errors:')[0]}") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: {short_cause(exc)}") from exc


def read_checkpoint_config(model_dir: Path) -> tuple[PretrainedConfig, FamilyAdapter]:
    """A vqa checkpoint's config and family adapter; the family is checked before transformers reads it."""
    family = checkpoint_family(model_dir, read_config_dict(model_dir)["model_type"])
    config = read_config(model_dir)
    return config, family(config)


def has_tokenizer(model_dir: Path) -> bool:
    """Whether ``model_dir`` has a file a tokenizer is built from."""
    return any((model_dir / name).is_file() for name in TOKENIZER_FILES) or any(model_dir.glob("*.tiktoken"))


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
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
    return f"{source if source.is_file() else model_dir}: cannot load the tokenizer: {short_cause(exc)}"


def read_chat_template(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> str:
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


def read_processor_config(model_dir: Path) -> ProcessorConfig:
    """The checkpoint's video (else image) processor config; a broken one is a CheckpointError naming it."""
    from vqa_cli.video.preprocess import _CONFIG_FILES, ProcessorConfig

    for name in _CONFIG_FILES:  # both: the video one feeds frames, the image one a still's AnyRes path
        if (model_dir / name).is_file():
            read_json(model_dir / name)  # not JSON, not an object: says so
    path = next((model_dir / n for n in _CONFIG_FILES if (model_dir / n).is_file()), None)
    try:
        return ProcessorConfig.from_dir(model_dir)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a value of the wrong kind
        raise CheckpointError(f"{path or model_dir}: {short_cause(exc)}") from exc
