"""A broken checkpoint is one line on stderr naming the file and the cause, never a traceback.

Each case damages a copy of the session's tiny checkpoint one way; each command that reads the
checkpoint (``ask``, ``ask`` choosing its own frame count, ``chat``, ``caption``, ``ask --plan``)
must stop with the case's exit code and one ``error:`` line, and ``caption`` must write nothing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli_run import run
from vqa_cli.errors import EXIT_FAILURE, VqaError, describe


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text(text)


def _config(**changes: object) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        config.update(changes)
        (d / "config.json").write_text(json.dumps(config))

    return damage


def _remove(*names: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        for name in names:
            (d / name).unlink()

    return damage


def _cut(keep: Callable[[int, int], int]) -> Callable[[Path], None]:
    """Keep ``keep(header_length, file_size)`` bytes of model.safetensors."""

    def damage(d: Path) -> None:
        path = d / "model.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[:keep(int.from_bytes(data[:8], "little"), len(data))])

    return damage


def _scramble_header(d: Path) -> None:
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"#" * 32
    path.write_bytes(bytes(data))


def _wrong_shape(d: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    path = d / "model.safetensors"
    tensors = load_file(path)
    name = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, path, metadata={"format": "pt"})


def _missing_shard(d: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = d / "model.safetensors"
    tensors = load_file(path)
    path.unlink()
    names = sorted(tensors)
    first = {k: tensors[k] for k in names[: len(names) // 2]}
    save_file(first, d / "model-00001-of-00002.safetensors", metadata={"format": "pt"})  # the second is never written
    weight_map = {k: f"model-0000{1 if k in first else 2}-of-00002.safetensors" for k in names}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _dangling_weights(d: Path) -> None:
    """model.safetensors as the hub cache has it, a link, whose blob is gone."""
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").symlink_to(d / "blobs" / "0123abcd")


@dataclass(frozen=True)
class Case:
    damage: Callable[[Path], None]
    file: str  # named in the message
    cause: str  # in the message
    kind: str = "checkpoint"
    code: int = EXIT_FAILURE
    weights: bool = False  # only the weights are broken: `ask --plan` (no weights read) still works


CASES = {
    "config-corrupt": Case(_write("config.json", '{"model_type": "llava_next_video",'), "config.json",
                           "not valid JSON"),
    "config-empty": Case(_write("config.json", ""), "config.json", "is empty"),
    "config-not-an-object": Case(_write("config.json", "[1, 2]"), "config.json", "not a JSON object"),
    "config-without-model-type": Case(_write("config.json", "{}"), "config.json", "no model_type"),
    "model-type-unknown-to-transformers": Case(_config(model_type="no_such_model"), "config.json",
                                               "unsupported architecture 'no_such_model'",
                                               kind="unsupported_architecture"),
    "model-type-without-vqa-adapter": Case(_config(model_type="bert"), "config.json",
                                           "unsupported architecture 'bert'", kind="unsupported_architecture"),
    "config-field-of-the-wrong-type": Case(_config(text_config=5), "config.json", "text_config"),
    "weights-header-cut": Case(_cut(lambda header, size: 100), "model.safetensors", "truncated or corrupt",
                               weights=True),
    "weights-data-cut": Case(_cut(lambda header, size: 8 + header + (size - 8 - header) // 2), "model.safetensors",
                             "truncated or corrupt", weights=True),
    "weights-empty": Case(_cut(lambda header, size: 0), "model.safetensors", "truncated or corrupt", weights=True),
    "weights-header-corrupt": Case(_scramble_header, "model.safetensors", "truncated or corrupt", weights=True),
    "weights-wrong-shape": Case(_wrong_shape, "config.json", "embed_tokens.weight", weights=True),
    "weights-shard-missing": Case(_missing_shard, "model.safetensors.index.json",
                                  "model-00002-of-00002.safetensors, which is missing", weights=True),
    "weights-link-broken": Case(_dangling_weights, "model.safetensors", "is a broken link", weights=True),
    "tokenizer-missing": Case(_remove("tokenizer.json", "tokenizer_config.json"), "tokenizer.json", "no tokenizer"),
    "tokenizer-corrupt": Case(_write("tokenizer.json", '{"version": "1.0", "model": '), "tokenizer.json",
                              "not valid JSON"),
    "tokenizer-model-invalid": Case(_write("tokenizer.json", json.dumps({"version": "1.0", "added_tokens": [],
                                                                          "model": {"type": "BPE", "vocab": 5}})),
                                    "tokenizer.json", "cannot load the tokenizer"),
    "tokenizer-config-corrupt": Case(_write("tokenizer_config.json", '{"bos_token'), "tokenizer_config.json",
                                     "not valid JSON"),
    "chat-template-missing": Case(_remove("chat_template.jinja", "chat_template.json"), "chat_template.jinja",
                                  "no chat template"),
    "chat-template-corrupt": Case(lambda d: (_remove("chat_template.jinja")(d), _write("chat_template.json", "{x")(d)),
                                  "chat_template.json", "not valid JSON"),
    "processor-config-corrupt": Case(_write("video_preprocessor_config.json", "{"), "video_preprocessor_config.json",
                                     "not valid JSON"),
    # The image processor config feeds a still's AnyRes path through transformers: checked up front too.
    "image-processor-config-corrupt": Case(_write("preprocessor_config.json", "{"), "preprocessor_config.json",
                                           "not valid JSON"),
}

# An earlier run's output, cut off by a kill: a failed checkpoint must leave it exactly as it was (no
# record, no error record, not even the repair of the cut-off line).
PREVIOUS_RUN = json.dumps({"video": "old.mp4", "caption": "a cat", "settings_id": "0123456789abcdef",
                           "error": None}) + "\n" + '{"video": "half.mp4", "capt'

COMMANDS = {
    "ask": (["ask", "{clip}", "q", "--frames", "2"], None),
    "ask-default-frames": (["ask", "{clip}", "q"], None),  # reads config.json for the mode's frame count first
    "chat": (["chat", "{clip}", "--frames", "2"], "q\n/quit\n"),
    "caption": (["caption", "{clip}", "--frames", "2", "--out", "{out}", "--workers", "1", "--batch-size", "1"], None),
    "plan": (["ask", "{clip}", "q", "--frames", "2", "--plan"], None),
}


@pytest.fixture(scope="module")
def damaged(tiny_dir, tmp_path_factory) -> Callable[[str], Path]:
    """The tiny checkpoint damaged as a case says: one copy per case, made on first use."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            target = tmp_path_factory.mktemp("damaged") / name
            shutil.copytree(tiny_dir, target)
            CASES[name].damage(target)
            made[name] = target
        return made[name]

    return get


# The default frame count only reads config.json: that command is tried with the config cases.
PAIRS = [(name, command) for name in CASES for command in COMMANDS
         if command != "ask-default-frames" or name.startswith(("config", "model-type"))]


@pytest.mark.parametrize(("name", "command"), PAIRS)
def test_a_broken_checkpoint_is_one_line(name, command, damaged, clip_path, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    model = damaged(name)
    out_file = tmp_path / "captions.jsonl"
    out_file.write_text(PREVIOUS_RUN)
    argv, stdin = COMMANDS[command]
    argv = [a.format(clip=clip_path, out=out_file) for a in argv]
    # No --device: the "running on CPU" notice must not come before the error and make it two lines.
    code, out, err = run(argv + ["--model", str(model), "--max-new-tokens", "2"], capsys,
                         stdin=stdin, monkeypatch=monkeypatch)
    assert "Traceback" not in err
    if command == "plan" and case.weights:  # planning reads configs, tokenizer and template only
        assert code == 0, err
        return
    lines = err.splitlines()
    assert code == case.code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.file in lines[0] and case.cause in lines[0], lines[0]
    assert out == ""
    assert out_file.read_text() == PREVIOUS_RUN  # caption stops before it writes (or repairs) anything


@pytest.mark.parametrize("name", list(CASES))
def test_a_broken_checkpoint_has_its_kind(name, damaged):
    """The error table's view (caption's error records and the summary use the kind)."""
    from vqa_cli.model.session import open_model
    from vqa_cli.settings import RunSettings

    settings = RunSettings(model=str(damaged(name)), frames=2, max_new_tokens=2, device="cpu")
    with pytest.raises(VqaError) as info:
        open_model(settings, ["q"])
    assert describe(info.value)[:2] == (CASES[name].code, CASES[name].kind), repr(info.value)



@pytest.mark.parametrize("name", ["config-corrupt", "weights-data-cut", "tokenizer-missing"])
def test_a_broken_guide_model_is_one_line(name, guide_dir, tiny_dir, clip_path, tmp_path, capsys):
    case = CASES[name]
    broken = tmp_path / "clip"
    shutil.copytree(guide_dir, broken)
    case.damage(broken)
    out_file = tmp_path / "captions.jsonl"
    code, out, err = run(["caption", clip_path, "--model", str(tiny_dir), "--mode", "pooled", "--guide",
                          "--guide-model", str(broken), "--frames", "2", "--max-new-tokens", "2", "--device", "cpu",
                          "--out", str(out_file)], capsys)
    lines = err.splitlines()
    assert code == case.code and len(lines) == 1 and "Traceback" not in err, err
    assert str(broken) in lines[0] and case.file in lines[0] and case.cause in lines[0], lines[0]
    assert not out_file.exists() or out_file.read_text() == ""


def test_a_tensor_missing_from_the_weights_is_a_warning_naming_it(tiny_dir, clip_path, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, model)
    tensors = load_file(model / "model.safetensors")
    name = next(k for k in sorted(tensors) if k.endswith("multi_modal_projector.linear_1.weight"))
    del tensors[name]
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    code, out, err = run(["ask", clip_path, "q", "--model", str(model), "--frames", "2", "--max-new-tokens", "2"],
                         capsys)
    assert code == 0 and out.strip(), err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(model) in warning[0] and "multi_modal_projector.linear_1.weight" in warning[0]
    code, _, err = run(["ask", clip_path, "q", "--model", str(tiny_dir), "--frames", "2", "--max-new-tokens", "2"],
                       capsys)
    assert code == 0 and "warning:" not in err  # a whole checkpoint loads without one
