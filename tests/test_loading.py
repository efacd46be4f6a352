"""Model loading: names, errors, and 4-bit / 8-bit bitsandbytes through the same path on CPU."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vqa_cli import loading
from vqa_cli.errors import ModelNotCachedError, UnknownModelError, UnsupportedModelError
from vqa_cli.models.registry import adapter_for, resolve_alias
from vqa_cli.video import sample_frames


def test_aliases_resolve_to_hub_ids():
    assert resolve_alias("llava-next-video-7b") == "llava-hf/LLaVA-NeXT-Video-7B-hf"
    assert resolve_alias("llava-next-video-7b-dpo") == "llava-hf/LLaVA-NeXT-Video-7B-DPO-hf"
    assert resolve_alias("someone/model") == "someone/model"


def test_vqa_model_env_changes_the_default(monkeypatch):
    monkeypatch.setenv("VQA_MODEL", "/models/mine")
    assert loading.default_model() == "/models/mine"
    monkeypatch.delenv("VQA_MODEL")
    assert loading.default_model() == "llava-next-video-7b"


def test_unknown_model_names_fail_with_one_line():
    with pytest.raises(UnknownModelError, match="unknown model 'not a model'"):
        loading.resolve_model_dir("not a model")
    with pytest.raises(UnknownModelError, match="no model directory"):
        loading.resolve_model_dir("./missing/dir")


def test_hub_model_missing_from_the_cache_offline_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotCachedError, match="not in the local cache"):
        loading.resolve_model_dir("llava-next-video-7b")


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
        loading.load_model(target, config, device="cpu", dtype=torch.float32, quant="none")


def test_cpu_defaults_are_no_quantization_and_float32():
    assert loading.resolve_quant(None, "cpu") == "none"
    assert loading.resolve_quant(None, "cuda") == "4bit"
    assert loading.resolve_dtype(None, "cpu") == torch.float32


def test_quantization_config_keeps_vision_tower_and_projector_unquantized(tiny_dir):
    adapter = adapter_for(loading.read_config(tiny_dir))
    q4 = loading.quantization_config("4bit", adapter, torch.bfloat16)
    assert q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4" and q4.bnb_4bit_use_double_quant
    assert q4.bnb_4bit_compute_dtype == torch.bfloat16
    assert {"lm_head", "model.vision_tower", "model.multi_modal_projector"} <= set(q4.llm_int8_skip_modules)
    assert loading.quantization_config("8bit", adapter, torch.float32).load_in_8bit
    assert loading.quantization_config("none", adapter, torch.float32) is None


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
