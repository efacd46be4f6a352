"""Model loading: names, errors, and 4-bit / 8-bit bitsandbytes through the same path on CPU."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vqa_cli.errors import CheckpointError, ModelNotCachedError, UnknownModelError, UnsupportedModelError
from vqa_cli.model import device as devices
from vqa_cli.model import loading
from vqa_cli.model.families.registry import adapter_for, resolve_alias
from vqa_cli.model.weights import files, hub, loader
from vqa_cli.video import sample_frames


def test_aliases_resolve_to_hub_ids():
    assert resolve_alias("llava-next-video-7b") == "llava-hf/LLaVA-NeXT-Video-7B-hf"
    assert resolve_alias("llava-next-video-7b-dpo") == "llava-hf/LLaVA-NeXT-Video-7B-DPO-hf"
    assert resolve_alias("someone/model") == "someone/model"


def test_vqa_model_env_changes_the_default(monkeypatch):
    monkeypatch.setenv("VQA_MODEL", "/models/mine")
    assert hub.default_model() == "/models/mine"
    assert hub.default_model("cpu") == "/models/mine"
    monkeypatch.delenv("VQA_MODEL")
    # Without it: the 7B model for CUDA (a plan may name a GPU this machine lacks), Qwen3-VL-2B for the CPU.
    assert hub.default_model("cuda") == "llava-next-video-7b"
    assert hub.default_model("cpu") == "qwen3-vl-2b"


def test_unknown_model_names_fail_with_one_line():
    with pytest.raises(UnknownModelError, match="unknown model 'not a model'"):
        hub.resolve_model_dir("not a model")
    with pytest.raises(UnknownModelError, match="no model directory"):
        hub.resolve_model_dir("./missing/dir")


def test_hub_model_missing_from_the_cache_offline_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotCachedError, match="not in the local cache"):
        hub.resolve_model_dir("llava-next-video-7b")


def test_unsupported_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    config = loading.read_config(tmp_path)
    with pytest.raises(UnsupportedModelError, match="unsupported architecture 'bert'"):
        adapter_for(config)


def test_pickled_weights_are_not_loaded(tiny_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target, ignore=shutil.ignore_patterns("*.safetensors"))
    (target / "pytorch_model.bin").write_bytes(b"pickle")
    config = loading.read_config(target)
    with pytest.raises(UnknownModelError, match="no .safetensors"):
        loader.load_model(target, config, device="cpu", dtype=torch.float32, quant="none")


def test_cpu_defaults_are_no_quantization_and_float32():
    assert devices.resolve_quant(None, "cpu") == "none"
    assert devices.resolve_quant(None, "cuda") == "4bit"
    assert devices.resolve_dtype(None, "cpu") == torch.float32


def test_quantization_config_keeps_vision_tower_and_projector_unquantized(tiny_dir):
    adapter = adapter_for(loading.read_config(tiny_dir))
    q4 = loader.quantization_config("4bit", adapter, torch.bfloat16)
    assert q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4" and q4.bnb_4bit_use_double_quant
    assert q4.bnb_4bit_compute_dtype == torch.bfloat16
    assert {"lm_head", "model.vision_tower", "model.multi_modal_projector"} <= set(q4.llm_int8_skip_modules)
    assert loader.quantization_config("8bit", adapter, torch.float32).load_in_8bit
    assert loader.quantization_config("none", adapter, torch.float32) is None


@pytest.mark.parametrize(("quant", "layer"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantized_loading_on_cpu_through_the_same_path(engine_factory, clip_path, quant, layer):
    engine = engine_factory(frames=4, quant=quant)
    model = engine.model
    lm_linear = [type(m).__name__ for n, m in model.named_modules() if n.startswith("model.language_model")
                 and n.endswith(("q_proj", "down_proj"))]
    assert lm_linear and set(lm_linear) == {layer}
    kept = [m for n, m in model.named_modules() if n.startswith(("model.vision_tower", "model.multi_modal_projector",
                                                                  "lm_head")) and isinstance(m, torch.nn.Linear)]
    assert kept and all(type(m) is torch.nn.Linear for m in kept)
    answer = engine.answer(sample_frames(clip_path, 4), "What happens?")
    assert answer.tokens > 0 and engine.loaded.quant == quant


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "x.json is empty"),
        (b"  \n", "x.json is empty"),
        (b'{"a": 1,}', "x.json is not valid JSON (Expecting property name enclosed in double quotes: line 1, "
                       "column 9)"),
        (b"[]", "x.json is not a JSON object"),
        (b"\xff\xfe{}", "x.json is not UTF-8 text (byte 0)"),
    ],
)
def test_a_broken_json_file_is_named_with_its_cause(tmp_path, content, message):
    (tmp_path / "x.json").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        loading.read_json(tmp_path / "x.json")
    assert str(info.value) == f"{tmp_path}/{message}"


def test_an_unreadable_json_file_says_why(tmp_path):
    (tmp_path / "x.json").mkdir()
    with pytest.raises(CheckpointError, match=r"cannot read .*x.json: Is a directory"):
        loading.read_json(tmp_path / "x.json")


def test_a_model_type_that_is_not_a_name_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": 5}))
    with pytest.raises(CheckpointError, match="model_type 5 is not an architecture name"):
        loading.read_config_dict(tmp_path)


def _shard(source, target):
    """``source``'s weights as two shards and an index."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    tensors = load_file(source / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, target / file, metadata={"format": "pt"})
    weight_map = {k: file for file, keys in halves.items() for k in keys}
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_a_sharded_checkpoint_loads_and_a_truncated_shard_is_named(tiny_dir, tmp_path):
    target = tmp_path / "sharded"
    _shard(tiny_dir, target)
    config = loading.read_config(target)
    assert [p.name for p in files.weight_files(target)] == ["model-00001-of-00002.safetensors",
                                                               "model-00002-of-00002.safetensors"]
    assert loader.load_model(target, config, device="cpu", dtype=torch.float32, quant="none").model is not None
    second = target / "model-00002-of-00002.safetensors"
    second.write_bytes(second.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002.safetensors is truncated or corrupt"):
        loader.load_model(target, config, device="cpu", dtype=torch.float32, quant="none")


def test_a_folder_without_tokenizer_files_is_refused_before_transformers_invents_one(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        loading.load_tokenizer(tmp_path)


def test_a_model_type_transformers_does_not_know_is_unsupported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_model"}))
    with pytest.raises(UnsupportedModelError, match=r"config.json: unsupported architecture 'no_such_model': "
                                                    r"transformers .* does not know it"):
        loading.read_config(tmp_path)


def test_a_read_error_while_loading_weights_names_the_file(tiny_dir, monkeypatch):
    import errno

    import transformers

    config = loading.read_config(tiny_dir)
    cls = getattr(transformers, adapter_for(config).model_class)
    weights = str(tiny_dir / "model.safetensors")

    def failing(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", weights)

    monkeypatch.setattr(cls, "from_pretrained", failing)
    with pytest.raises(CheckpointError, match=r"cannot read .*model.safetensors: Input/output error"):
        loader.load_model(tiny_dir, config, device="cpu", dtype=torch.float32, quant="none")


def test_a_processor_config_with_a_value_of_the_wrong_kind_is_named(tiny_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target, ignore=shutil.ignore_patterns("*.safetensors"))
    (target / "video_preprocessor_config.json").write_text(json.dumps({"size": "large"}))
    with pytest.raises(CheckpointError, match=r"video_preprocessor_config.json: 'str' object has no attribute"):
        loading.read_processor_config(target)
