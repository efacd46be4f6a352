"""Pre-quantized copies (vqa_cli.model.quantized): written by the first quantized load, read by the next ones with the
same results, never used when out of date or broken, and listed by `vqa models`."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from vqa_cli.errors import OutputWriteError, UsageError
from vqa_cli.model import loading, rope
from vqa_cli.model.weights import copies, files, loader

IDS = torch.tensor([[1, 17, 42, 99, 7, 25, 3, 64, 12, 11, 5, 30]])  # inside the tiny vocabulary


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty vqa cache with copies switched on (the default); returns where copies go."""
    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "vqa"))
    monkeypatch.delenv("VQA_QUANT_CACHE", raising=False)
    return tmp_path / "vqa" / "quantized"


@pytest.fixture
def source(tiny_dir, tmp_path) -> Path:
    """A private copy of the tiny checkpoint (tests change its files)."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "src"))


def _load(model_dir: Path, quant: str = "4bit", factor: float = 1.0, dtype=torch.float32) -> loader.LoadedModel:
    """What Engine does: a fresh config, the RoPE factor applied to it, then load_model."""
    config, adapter = loading.read_checkpoint_config(model_dir)
    base = dict(adapter.text_config().rope_parameters or {})
    rope.apply_to_config(adapter.text_config(), base, factor, "linear")
    return loader.load_model(model_dir, config, device="cpu", dtype=dtype, quant=quant)


def _logits(loaded: loader.LoadedModel) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model(input_ids=IDS).logits


def _copies(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else []


@pytest.fixture
def spies(monkeypatch) -> dict[str, list]:
    """Every bitsandbytes 4-bit quantization call and every folder load_weights reads."""
    import bitsandbytes.functional as F

    calls: dict[str, list] = {"quantize_4bit": [], "load_weights": []}
    quantize, load_weights = F.quantize_4bit, files.load_weights

    def counting_quantize(*args, **kwargs):
        calls["quantize_4bit"].append(1)
        return quantize(*args, **kwargs)

    def recording_load(cls, model_dir, **kwargs):
        calls["load_weights"].append(Path(model_dir))
        return load_weights(cls, model_dir, **kwargs)

    monkeypatch.setattr(F, "quantize_4bit", counting_quantize)
    monkeypatch.setattr(files, "load_weights", recording_load)
    return calls


def test_the_first_quantized_load_writes_a_copy_and_the_second_reads_it_without_quantizing(cache, source, spies,
                                                                                          capsys):
    first = _load(source)
    assert not first.prequantized and spies["quantize_4bit"]  # quantized on load
    assert spies["load_weights"] == [source]
    [copy] = _copies(cache)
    assert "wrote a pre-quantized 4bit copy" in capsys.readouterr().err
    assert copy.name.startswith("src-4bit-float32-") and (copy / copies.MANIFEST).is_file()
    assert sorted(p.name for p in copy.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(cache.glob(copies.TMP_PREFIX + "*"))  # the temporary folder was renamed

    spies["quantize_4bit"].clear()
    spies["load_weights"].clear()
    second = _load(source)
    assert second.prequantized and not spies["quantize_4bit"]
    assert spies["load_weights"] == [copy]  # the copy's folder, not the source's
    linear = {type(m).__name__ for n, m in second.model.named_modules() if n.startswith("model.language_model")}
    assert "Linear4bit" in linear and "Linear" not in linear
    assert _copies(cache) == [copy]
    assert capsys.readouterr().err == ""  # reading a copy is silent


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_a_copy_gives_the_same_weights_and_logits_as_quantizing_on_load(cache, source, quant, monkeypatch):
    on_load = _load(source, quant)
    from_copy = _load(source, quant)
    assert not on_load.prequantized and from_copy.prequantized
    # Before any forward: on the CPU, bitsandbytes rewrites a 4-bit layer's statistics at its first forward.
    a, b = on_load.model.state_dict(), from_copy.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # packed weights, quantization statistics, unquantized towers
    monkeypatch.setenv("VQA_QUANT_CACHE", "0")
    again = _load(source, quant)
    assert not again.prequantized
    logits = [_logits(m) for m in (on_load, from_copy, again)]
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[2], logits[1])


def test_a_copy_loads_with_the_callers_rope_factor(cache, source, monkeypatch):
    """The copy is written by a load at RoPE factor 2; loads at 1 and 2 from it match quantizing on load at 1 and 2."""
    written = _load(source, factor=2.0)
    assert not written.prequantized
    copy_1, copy_2 = _load(source, factor=1.0), _load(source, factor=2.0)
    assert copy_1.prequantized and copy_2.prequantized
    text = copy_2.model.config.text_config
    assert text.rope_parameters["factor"] == 2.0 and text.rope_parameters["rope_type"] == "linear"
    assert copy_1.model.config.text_config.rope_parameters.get("factor") is None
    inv_freq = [m.model.model.language_model.rotary_emb.inv_freq for m in (copy_1, copy_2)]
    assert torch.allclose(inv_freq[0], 2 * inv_freq[1])
    monkeypatch.setenv("VQA_QUANT_CACHE", "0")
    load_1, load_2 = _load(source, factor=1.0), _load(source, factor=2.0)
    assert torch.equal(_logits(copy_1), _logits(load_1)) and torch.equal(_logits(copy_2), _logits(load_2))
    assert not torch.equal(_logits(copy_1), _logits(copy_2))


def _change_mtime(weights: Path) -> None:
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _change_size(weights: Path) -> None:
    """Same tensors, one more metadata entry: only the size differs (the modification time is put back)."""
    from safetensors.torch import load_file, save_file

    st = weights.stat()
    save_file(load_file(str(weights)), str(weights), metadata={"format": "pt", "note": "re-saved"})
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_size != st.st_size


@pytest.mark.parametrize("change", [_change_mtime, _change_size], ids=["mtime", "size"])
def test_a_copy_of_changed_weights_is_ignored_and_replaced(cache, source, change):
    _load(source)
    [old] = _copies(cache)
    change(source / "model.safetensors")
    assert copies.list_copies()[0]["current"] is False and copies.copies_of(source) == []
    assert not _load(source).prequantized  # the stale copy is not read
    [new] = _copies(cache)  # ... and its replacement removed it
    assert new != old and copies.list_copies()[0]["current"] is True
    assert _load(source).prequantized


def test_copies_of_other_settings_live_side_by_side(cache, source):
    _load(source, "4bit")
    assert not _load(source, "8bit").prequantized
    assert not _load(source, "4bit", dtype=torch.bfloat16).prequantized
    assert sorted((c["quant"], c["dtype"]) for c in copies.copies_of(source)) == [
        ("4bit", "bfloat16"), ("4bit", "float32"), ("8bit", "float32")]
    assert _load(source, "4bit").prequantized and _load(source, "8bit").prequantized
    assert _load(source, "4bit", dtype=torch.bfloat16).prequantized


def test_a_copy_made_on_another_kind_of_device_is_not_used(cache, source, monkeypatch):
    """Copies are only known to equal quantizing on load on the device kind that made them."""
    monkeypatch.setenv("VQA_QUANT_CACHE", "0")
    loaded = _load(source)
    bnb, dtype, _ = _settings(source)
    made_on_cuda = copies.save(loaded.model, source, bnb, dtype, "cuda")
    assert copies.manifest(made_on_cuda)["settings"]["device"] == "cuda"
    monkeypatch.delenv("VQA_QUANT_CACHE")
    assert not _load(source).prequantized
    assert sorted(c["device"] for c in copies.copies_of(source)) == ["cpu", "cuda"]
    assert copies.device_kind({"": "cuda:1"}) == "cuda" and copies.device_kind("auto") == "cuda"
    assert copies.device_kind({"a": 0, "b": "cpu"}) == "cpu+cuda"


def test_a_copy_written_by_other_library_versions_is_not_used(cache, source, monkeypatch):
    _load(source)
    versions = {"transformers": "0.0.1", "bitsandbytes": copies._package_version("bitsandbytes")}
    monkeypatch.setattr(copies, "_package_version", versions.get)
    assert copies.list_copies()[0]["current"] is False
    assert not _load(source).prequantized and _load(source).prequantized
    assert len(_copies(cache)) == 1  # the replaced copy was removed


def test_loading_a_copy_leaves_the_callers_config_alone(cache, source):
    _load(source)
    config, _ = loading.read_checkpoint_config(source)
    loaded = loader.load_model(source, config, device="cpu", dtype=torch.float32, quant="4bit")
    assert loaded.prequantized and getattr(config, "quantization_config", None) is None
    assert loaded.model.config.quantization_config.load_in_4bit


@pytest.mark.parametrize(("switch", "writes", "reads"), [("0", False, False), ("off", False, False),
                                                          ("read", False, True), ("1", True, True)])
def test_vqa_quant_cache_switches_writing_and_reading(cache, source, monkeypatch, switch, writes, reads):
    monkeypatch.setenv("VQA_QUANT_CACHE", switch)
    assert not _load(source).prequantized
    assert bool(_copies(cache)) is writes
    monkeypatch.delenv("VQA_QUANT_CACHE")
    _load(source)  # now there is a copy in any case
    monkeypatch.setenv("VQA_QUANT_CACHE", switch)
    assert _load(source).prequantized is reads


def test_a_bad_switch_value_is_a_usage_error(cache, source, monkeypatch):
    monkeypatch.setenv("VQA_QUANT_CACHE", "maybe")
    with pytest.raises(UsageError, match="VQA_QUANT_CACHE must be 1, read or 0, not 'maybe'"):
        _load(source)


def test_no_copy_without_quantization(cache, source):
    assert not _load(source, "none").prequantized
    assert not cache.exists()


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _corrupt_header(path: Path) -> None:
    """Same size, but the header length says 2^63 bytes: only reading it shows it is broken."""
    with open(path, "r+b") as f:
        f.write(b"\xff" * 8)


@pytest.mark.parametrize(("damage", "cause"), [(_truncate, "bytes, written with"),
                                               (_corrupt_header, "is truncated or corrupt")],
                         ids=["truncated", "corrupt"])
def test_a_broken_copy_is_replaced_with_one_warning_line(cache, source, damage, cause, capsys):
    reference = _logits(_load(source))
    [copy] = _copies(cache)
    damage(copy / "model.safetensors")
    capsys.readouterr()
    loaded = _load(source)
    assert not loaded.prequantized and torch.equal(_logits(loaded), reference)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and str(copy) in warnings[0] and "quantizing on load instead" in warnings[0]
    assert cause in warnings[0]
    assert _load(source).prequantized  # written again, and good


def test_a_failed_write_is_one_warning_and_leaves_nothing_behind(cache, source, monkeypatch, capsys):
    from transformers import PreTrainedModel

    save = PreTrainedModel.save_pretrained

    def dies_half_way(self, folder, **kwargs):
        save(self, folder, **kwargs)
        _truncate(Path(folder) / "model.safetensors")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", dies_half_way)
    loaded = _load(source)
    assert loaded.model is not None and not loaded.prequantized
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: could not write a pre-quantized copy to {cache} (No space left on device); later loads "
                   "quantize on load again"]
    assert list(cache.iterdir()) == []  # neither a copy nor a temporary folder
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save)
    assert not _load(source).prequantized and _load(source).prequantized


def test_an_unwritable_cache_does_not_fail_the_load(source, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("VQA_CACHE", str(blocker))
    monkeypatch.delenv("VQA_QUANT_CACHE", raising=False)
    assert _load(source).model is not None
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: could not write a pre-quantized copy")


def test_a_copy_is_not_written_when_the_disk_is_nearly_full(cache, source, monkeypatch, capsys):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(copies.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**6, 10**6))
    assert _load(source).model is not None
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: could not write a pre-quantized copy") and "needed, 0.0 GB free" in line
    assert list(cache.iterdir()) == []


def test_old_temporary_folders_are_cleared_and_fresh_ones_left(cache, source):
    cache.mkdir(parents=True)
    old, fresh = cache / ".tmp-old-1", cache / ".tmp-fresh-2"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    os.utime(old, (0, 0))
    _load(source)
    assert not old.exists() and fresh.exists()
    assert copies.find(source, *_settings(source)) is not None  # a temporary folder is never a copy


def _settings(model_dir: Path):
    config, adapter = loading.read_checkpoint_config(model_dir)
    return loader.quantization_config("4bit", adapter, torch.float32), torch.float32, "cpu"


def test_a_second_writer_of_the_same_copy_keeps_the_first(cache, source, monkeypatch):
    """Two runs that quantized the same checkpoint at once: the one that finishes second leaves the copy alone."""
    monkeypatch.setenv("VQA_QUANT_CACHE", "0")
    loaded = _load(source)
    first = copies.save(loaded.model, source, *_settings(source))
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert copies.save(loaded.model, source, *_settings(source)) == first
    assert _copies(cache) == [first] and not list(cache.glob(".tmp-*"))
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime


def test_a_folder_without_its_manifest_is_not_a_copy(cache, source, capsys):
    _load(source)
    [copy] = _copies(cache)
    (copy / copies.MANIFEST).unlink()
    assert copies.find(source, *_settings(source)) is None
    assert "vqa-quantized.json is missing" in capsys.readouterr().err
    assert not copy.exists()


def test_the_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "a"))
    assert copies.cache_dir() == tmp_path / "a" / "quantized"
    monkeypatch.delenv("VQA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert copies.cache_dir() == tmp_path / "xdg" / "vqa" / "quantized"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert copies.cache_dir() == tmp_path / "home" / ".cache" / "vqa" / "quantized"


def test_prepare_writes_even_when_automatic_copies_are_off_and_fails_loudly(cache, source, monkeypatch, tmp_path):
    monkeypatch.setenv("VQA_QUANT_CACHE", "0")
    folder, written = loader.prepare_copy(source, "4bit", device="cpu", dtype=torch.float32)
    assert written and folder.parent == cache and copies.manifest(folder)["settings"]["quant"] == "4bit"
    assert loader.prepare_copy(source, "4bit", device="cpu", dtype=torch.float32) == (folder, False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("VQA_CACHE", str(blocker))
    with pytest.raises(OutputWriteError, match="cannot write the pre-quantized copy to"):
        loader.prepare_copy(source, "8bit", device="cpu", dtype=torch.float32)


# ---- the command line ------------------------------------------------------------------------------------------
def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    from vqa_cli.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_vqa_download_of_a_local_directory_writes_the_copy_and_models_lists_it(cache, source, capsys):
    code, out, err = _run(["download", str(source), "--quant", "4bit", "--dtype", "float32"], capsys)
    assert code == 0, err
    where, folder = out.splitlines()
    assert where == str(source) and Path(folder).parent == cache
    assert [line for line in err.splitlines() if "wrote" in line] == [
        "wrote a pre-quantized 4bit copy (float32, 0.5 MB): loads with --quant 4bit --dtype float32 read it"]
    code, out, _ = _run(["models", "--quantized", "--json"], capsys)
    [row] = json.loads(out)
    assert code == 0 and row["path"] == folder and row["source"] == str(source.resolve())
    assert (row["quant"], row["dtype"], row["device"], row["current"]) == ("4bit", "float32", "cpu", True)
    assert row["disk_bytes"] > 0
    mtime = (Path(folder) / "model.safetensors").stat().st_mtime_ns
    code, out, err = _run(["download", str(source), "--quant", "4bit", "--dtype", "float32"], capsys)
    assert out.splitlines()[1] == folder and "already there" in err
    assert (Path(folder) / "model.safetensors").stat().st_mtime_ns == mtime  # not written again
    assert _load(source).prequantized  # what a run loads
    code, out, _ = _run(["models", "--quantized"], capsys)
    assert out.splitlines()[0].split("\t") == ["source", "quant", "dtype", "device", "size", "current", "path"]
    assert out.splitlines()[1].split("\t")[:6] == [str(source.resolve()), "4bit", "float32", "cpu", "0.5 MB", "yes"]


def test_vqa_download_without_quant_writes_no_copy(cache, source, capsys):
    code, out, _ = _run(["download", str(source)], capsys)
    assert code == 0 and out.splitlines() == [str(source)] and not cache.exists()


def test_vqa_models_shows_the_copies_of_a_cached_alias(cache, family_dirs, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as constants

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / "models--llava-hf--llava-onevision-qwen2-0.5b-ov-hf"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = Path(shutil.copytree(family_dirs["llava-onevision"], repo / "snapshots" / commit))

    def row() -> dict:
        code, out, _ = _run(["models", "--json"], capsys)
        return next(r for r in json.loads(out) if r["alias"] == "llava-onevision-0.5b")

    assert row()["quantized"] == [] and row()["quantized_copies"] == []
    code, out, err = _run(["download", "llava-onevision-0.5b", "--quant", "4bit", "--dtype", "float32"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == str(snapshot)
    folder = out.splitlines()[1]
    assert Path(folder).name.startswith("llava-hf--llava-onevision-qwen2-0.5b-ov-hf-4bit-float32-")
    described = row()
    assert described["quantized"] == ["4bit"]
    assert described["quantized_copies"][0]["path"] == folder and described["quantized_copies"][0]["dtype"] == "float32"
    code, out, _ = _run(["models"], capsys)
    header, *lines = out.splitlines()
    assert header.split("\t")[-1] == "quantized"
    assert next(line for line in lines if line.startswith("llava-onevision-0.5b")).split("\t")[-1] == "4bit"
    assert copies.manifest(Path(folder))["source"]["revision"] == commit


# ---- the full-size OneVision geometry the load benchmark uses --------------------------------------------------
def test_the_full_size_geometries_belong_to_their_families(tmp_path):
    from vqa_cli.testing import tiny_checkpoint

    with pytest.raises(ValueError, match="--geometry 0.5b is not available for video-llava"):
        tiny_checkpoint(tmp_path / "x", family="video-llava", geometry="0.5b")
    with pytest.raises(ValueError, match="--geometry 7b is not available for llava-onevision"):
        tiny_checkpoint(tmp_path / "y", family="llava-onevision", geometry="7b")
    assert not (tmp_path / "x").exists()


@pytest.mark.heavy
def test_the_0_5b_onevision_geometry_has_the_real_shapes_and_loads_from_a_copy(cache, tmp_path):
    from safetensors import safe_open

    from vqa_cli.testing import tiny_checkpoint

    model_dir = tiny_checkpoint(tmp_path / "ov", family="llava-onevision", geometry="0.5b")
    config = json.loads((model_dir / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"], text["num_key_value_heads"],
            text["intermediate_size"]) == (896, 24, 14, 2, 4864)
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["num_attention_heads"],
            vision["intermediate_size"], vision["patch_size"], vision["image_size"]) == (1152, 26, 16, 4304, 14, 384)
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert 0.7e9 < params < 0.8e9 and dtypes == {"BF16"}
    first = _load(model_dir)
    second = _load(model_dir)
    assert not first.prequantized and second.prequantized
    assert torch.equal(_logits(first), _logits(second))
