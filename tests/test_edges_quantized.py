"""Edges of the pre-quantized copy's key (model/weights/copies.py): the quantization, the dtype, the device kind,
the source's config bytes and weight files, and the writing libraries' versions each change it; the same
inputs give the same key. Oracle: the inputs the module docstring lists, varied one at
a time in the test (a key that ignores one of them fails here)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from vqa_cli.model import loading
from vqa_cli.model.weights import copies, files, loader


@pytest.fixture
def source(tiny_dir, tmp_path) -> Path:
    dest = tmp_path / "src"
    shutil.copytree(tiny_dir, dest)
    return dest


def _bnb(model_dir: Path, quant: str = "4bit"):
    _, adapter = loading.read_checkpoint_config(model_dir)
    return loader.quantization_config(quant, adapter, torch.float32)


def _key(model_dir: Path, quant: str = "4bit", dtype=torch.float32, device: str = "cpu") -> str:
    return copies.identity(model_dir, _bnb(model_dir, quant), dtype, device)["key"]


def test_the_same_inputs_give_the_same_key(source):
    # freshly built settings objects each time: the key depends on the values, not on the objects
    assert _key(source) == _key(source)
    assert _key(source, "8bit") == _key(source, "8bit")


def test_quant_bits_dtype_and_device_kind_change_the_key(source):
    keys = {_key(source), _key(source, "8bit"), _key(source, dtype=torch.float16), _key(source, device="cuda")}
    assert len(keys) == 4


def test_the_skip_list_changes_the_key(source):
    bnb = _bnb(source)
    other = _bnb(source)
    other.llm_int8_skip_modules = [*bnb.llm_int8_skip_modules, "language_model.lm_head"]
    assert (copies.identity(source, bnb, torch.float32, "cpu")["key"]
            != copies.identity(source, other, torch.float32, "cpu")["key"])


def test_config_contents_change_the_key_at_the_same_size_and_time(source):
    before = _key(source)
    config = source / "config.json"
    st = config.stat()
    data = config.read_bytes()
    i = data.index(b"0.") if b"0." in data else data.index(b"1")
    config.write_bytes(data[:i] + (b"9" if data[i:i + 1] != b"9" else b"8") + data[i + 1:])
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert config.stat().st_size == st.st_size
    assert _key(source) != before


@pytest.mark.parametrize("change", ["rewrite", "grow", "rename", "add-shard"])
def test_weight_file_changes_change_the_key(source, change):
    before = _key(source)
    weights = files.weight_files(source)[0]
    if change == "rewrite":  # new bytes, same size: a new download or an edit gets a new mtime
        data = weights.read_bytes()
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    elif change == "grow":
        with weights.open("ab") as f:
            f.write(b" ")
        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns))
    elif change == "rename":
        st = weights.stat()
        renamed = weights.with_name("model-renamed.safetensors")
        weights.rename(renamed)
        os.utime(renamed, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        shutil.copy2(weights, source / "extra.safetensors")
    assert _key(source) != before


@pytest.mark.parametrize("library", ["transformers", "bitsandbytes"])
def test_library_versions_change_the_key(source, monkeypatch, library):
    before = _key(source)
    real = copies._package_version
    monkeypatch.setattr(copies, "_package_version", lambda name: "0.0.1" if name == library else real(name))
    assert _key(source) != before
    monkeypatch.setattr(copies, "_package_version", real)
    assert _key(source) == before


def test_the_format_version_changes_the_key(source, monkeypatch):
    before = _key(source)
    monkeypatch.setattr(copies, "FORMAT", copies.FORMAT + 1)
    assert _key(source) != before


def test_the_key_names_the_folder_a_load_looks_in(source):
    ident = copies.identity(source, _bnb(source), torch.float32, "cpu")
    assert ident["name"].endswith("-4bit-float32-" + ident["key"])
    assert ident["name"] != copies.identity(source, _bnb(source, "8bit"), torch.float32, "cpu")["name"]
