"""The known checkpoints, what they cost, and which are already on this machine (``vqa models``, ``vqa download``).

Everything here is offline (downloads are ``weights.hub``'s). A checkpoint counts as ``cached`` when its
config and every safetensors shard are in the local Hugging Face cache, so ``vqa ask`` can run
with no network. Every size comes from the checkpoint's architecture: its cached ``config.json``, else
its published geometry (``PUBLISHED``: the widths, depths, heads and vocabulary of its hub config), built
on the meta device and counted by ``plan`` (this is the one source of the figures README.md and
docs/models.md state; tests/test_catalog.py checks them):

- ``parameters``: every parameter of the architecture, the vision tower included.
- ``disk_bytes`` / ``disk_gb`` (10^9 bytes): the real size of the cached safetensors when they are
  there; otherwise the parameters at 2 bytes (the hub's bf16 weights), marked ``disk_estimated``.
- ``memory_gib``: memory for the weights alone at each quantization (16-bit compute dtype); the vision
  tower, projector, head and embeddings (the family's skip list and every weight that is not an
  ``nn.Linear``) stay in 16 bits under 4-bit and 8-bit (``memory.estimate_memory``).
- ``kv_cache_gib`` and ``peak_gib``: the KV cache (16-bit) and the peak (``memory.request_memory``) of the
  family's default request (``--mode anyres`` at its default frames, a 64-token prompt and 256 new
  tokens): ``cuda_4bit`` and ``cuda_bf16`` on a GPU, ``cpu_float32`` on the CPU.
- ``quantized``: the quantizations (``4bit``, ``8bit``) with a current pre-quantized copy of the
  cached snapshot in the vqa cache (``vqa_cli.model.weights.copies``), ``quantized_copies`` their details.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqa_cli.model.families.registry import CHECKPOINTS, DEFAULT_CPU_MODEL, DEFAULT_MODEL, KnownCheckpoint, adapter_for
from vqa_cli.model.weights.hub import cached_snapshot, snapshot_weights

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

    from vqa_cli.model.families.base import FamilyAdapter
from vqa_cli.settings import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODE, QUANTS
from vqa_cli.units import GB, gib

FP16_BYTES = 2
DEFAULT_PROMPT_TOKENS = 64  # a short question in the chat template, for the default-request KV cache


# The published geometry of each known checkpoint: (model_type, vision tower, language model, extra config), as
# its hub config.json has them (llava-hf's conversions pad the vocabulary to a multiple of 64 after adding the
# image and video tokens: Vicuna's 32000 -> 32064, Qwen2-0.5B's 151936 -> 152000, Qwen2-7B's 152064 -> 152128).
_CLIP_L14 = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
             "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14, "projection_dim": 768}
_SIGLIP_SO400M = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                  "num_hidden_layers": 26, "num_attention_heads": 16, "image_size": 384, "patch_size": 14,
                  "vision_use_head": False}  # so400m's 27 layers less the last (OneVision reads the one before)
_VICUNA_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
_QWEN2 = {"model_type": "qwen2", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6}
_QWEN2_05B = {**_QWEN2, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 152000, "tie_word_embeddings": True}
_QWEN2_7B = {**_QWEN2, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152128, "tie_word_embeddings": False}
_LLAVA = {"vision_feature_layer": -2, "vision_feature_select_strategy": "default"}
_ONEVISION = ("llava_onevision", _SIGLIP_SO400M, {"vision_feature_layer": -1, "vision_feature_select_strategy": "full"})
# Qwen3-VL (REFERENCES.md section 13 and public copies of the hub config.json): M-RoPE over 262144 positions, the
# 24 x 1024 vision tower (DeepStack after blocks 5, 11, 17) of the 2B and 4B, the 27 x 1152 one (8, 16, 24) of the
# 8B and the 30B-A3B. The 8B's widths are those of a public copy of its config.json (GitHub
# nikolay-grudanov/Team_5_AI_Tutor, models/Qwen3-VL-8B-Instruct/config.json; that copy's max_position_embeddings
# is a local 8192, the hub revision's 262144 as other public copies of its text_config state).
_QWEN3_TEXT = {"vocab_size": 151936, "max_position_embeddings": 262144, "head_dim": 128, "rms_norm_eps": 1e-6,
               "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                   "mrope_interleaved": True}}
_QWEN3_VIT_24 = {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                 "deepstack_visual_indexes": [5, 11, 17]}
_QWEN3_VIT_27 = {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                 "deepstack_visual_indexes": [8, 16, 24]}
# Qwen2.5-VL (public copies of the hub config.json: GitHub zhanggaojian/Qwen2.5-VL-3B-LLMQ_Samples,
# models/Qwen2.5-VL-3B-Instruct/config.json, and Harrison-HXLiu/vlm_api_test,
# models/Qwen2.5-VL-7B-Instruct/config.json):
# contiguous M-RoPE [16, 24, 24] over 128000 positions, the 32 x 1280 windowed vision tower (full attention in blocks
# 7, 15, 23, 31), no DeepStack; the 3B ties its embeddings, the 7B does not.
_QWEN2_5_TEXT = {"max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
_QWEN2_5_VIT = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
                "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2}
PUBLISHED: dict[str, tuple[str, dict, dict, dict]] = {
    "Qwen/Qwen3-VL-2B-Instruct": ("qwen3_vl", {**_QWEN3_VIT_24, "out_hidden_size": 2048}, {
        **_QWEN3_TEXT, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "tie_word_embeddings": True},
        {"tie_word_embeddings": True}),
    "Qwen/Qwen3-VL-4B-Instruct": ("qwen3_vl", {**_QWEN3_VIT_24, "out_hidden_size": 2560}, {
        **_QWEN3_TEXT, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True},
        {"tie_word_embeddings": True}),
    "Qwen/Qwen3-VL-8B-Instruct": ("qwen3_vl", {**_QWEN3_VIT_27, "out_hidden_size": 4096}, {
        **_QWEN3_TEXT, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8}, {"tie_word_embeddings": False}),
    "Qwen/Qwen3-VL-30B-A3B-Instruct": ("qwen3_vl_moe", {**_QWEN3_VIT_27, "out_hidden_size": 2048}, {
        **_QWEN3_TEXT, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
        "num_attention_heads": 32, "num_key_value_heads": 4, "num_experts": 128, "num_experts_per_tok": 8,
        "moe_intermediate_size": 768, "decoder_sparse_step": 1}, {"tie_word_embeddings": False}),
    "Qwen/Qwen2.5-VL-3B-Instruct": ("qwen2_5_vl", {**_QWEN2_5_VIT, "out_hidden_size": 2048}, {
        **_QWEN2_5_TEXT, "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 16, "num_key_value_heads": 2, "tie_word_embeddings": True},
        {"tie_word_embeddings": True}),
    "Qwen/Qwen2.5-VL-7B-Instruct": ("qwen2_5_vl", {**_QWEN2_5_VIT, "out_hidden_size": 3584}, {
        **_QWEN2_5_TEXT, "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4}, {"tie_word_embeddings": False}),
    "llava-hf/LLaVA-NeXT-Video-7B-hf": ("llava_next_video", {**_CLIP_L14, "image_size": 336}, _VICUNA_7B,
                                        {**_LLAVA, "spatial_pool_stride": 2, "spatial_pool_mode": "average"}),
    "llava-hf/LLaVA-NeXT-Video-7B-DPO-hf": ("llava_next_video", {**_CLIP_L14, "image_size": 336}, _VICUNA_7B,
                                            {**_LLAVA, "spatial_pool_stride": 2, "spatial_pool_mode": "average"}),
    "LanguageBind/Video-LLaVA-7B-hf": ("video_llava", {**_CLIP_L14, "image_size": 224}, _VICUNA_7B, _LLAVA),
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": (_ONEVISION[0], _ONEVISION[1], _QWEN2_05B, _ONEVISION[2]),
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": (_ONEVISION[0], _ONEVISION[1], _QWEN2_7B, _ONEVISION[2]),
    "llava-hf/LLaVA-Video-7B-Qwen2-hf": (_ONEVISION[0], _ONEVISION[1], _QWEN2_7B, _ONEVISION[2]),
}


def published_config(ckpt: KnownCheckpoint) -> PretrainedConfig:
    """The transformers config of ``ckpt``'s published geometry (``PUBLISHED``), without downloading anything."""
    from transformers import CONFIG_MAPPING

    model_type, vision, text, extra = PUBLISHED[ckpt.repo_id]
    return CONFIG_MAPPING[model_type](vision_config=dict(vision), text_config=dict(text), **extra)


def default_request(adapter: FamilyAdapter, frames: int | None = None, mode: str = DEFAULT_MODE
                    ) -> tuple[int, int, int]:
    """(frames, prefill tokens, total tokens) of the family's default request: ``mode`` at ``frames`` (default:
    the family's), a ``DEFAULT_PROMPT_TOKENS`` prompt and ``DEFAULT_MAX_NEW_TOKENS`` new tokens."""
    from vqa_cli.model import modes

    frames = frames or adapter.default_frames
    visual = modes.plan(modes.ModeSettings(mode), frames, adapter.geometry()).total
    return frames, visual + DEFAULT_PROMPT_TOKENS, visual + DEFAULT_PROMPT_TOKENS + DEFAULT_MAX_NEW_TOKENS


def request_peak(adapter: FamilyAdapter, setting: str | tuple[str, str, torch.dtype], frames: int | None = None,
                 mode: str = DEFAULT_MODE) -> int:
    """The peak bytes (``memory.request_memory``) of the default request (``default_request``) in ``setting``:
    one of ``PEAKS`` (``cuda_4bit``: bf16 compute, ``cuda_bf16``, ``cpu_float32``) or (device, quant, torch dtype)."""
    import torch

    from vqa_cli.model import memory

    named = {"cuda_4bit": ("cuda", "4bit", torch.bfloat16), "cuda_bf16": ("cuda", "none", torch.bfloat16),
             "cpu_float32": ("cpu", "none", torch.float32)}
    device, quant, dtype = named[setting] if isinstance(setting, str) else setting
    frames, prefill, total = default_request(adapter, frames, mode)
    est = memory.request_memory(adapter, quant=quant, dtype_bytes=dtype.itemsize, device=device,
                              frames=frames, prefill_tokens=prefill, total_tokens=total)
    return est.peak_bytes


PEAKS = ("cuda_4bit", "cuda_bf16", "cpu_float32")


def costs(config: PretrainedConfig) -> dict[str, Any]:
    """Parameters, weight memory per quantization, the default request's KV cache and peaks, from a config."""
    from vqa_cli.model import memory

    adapter = adapter_for(config)
    tokens = default_request(adapter)[2]
    estimates = {q: memory.estimate_memory(adapter, q, FP16_BYTES, tokens) for q in QUANTS}
    return {
        "parameters": estimates["none"].parameters,
        "memory_gib": {q: gib(e.weight_bytes, 2) for q, e in estimates.items()},
        "kv_cache_gib": gib(estimates["none"].kv_cache_bytes, 2),
        "peak_gib": {s: gib(request_peak(adapter, s), 2) for s in PEAKS},
    }


def describe(ckpt: KnownCheckpoint, cache_dir: Path | None = None, default: str = DEFAULT_MODEL) -> dict[str, Any]:
    """One catalog row (see the module docstring for what each size means); ``default``: this machine's
    default alias (``DEFAULT_MODEL`` with CUDA, ``DEFAULT_CPU_MODEL`` without)."""
    snapshot = cached_snapshot(ckpt.repo_id, cache_dir)
    weights = snapshot_weights(snapshot) if snapshot else None
    row: dict[str, Any] = {
        "alias": ckpt.alias,
        "repo_id": ckpt.repo_id,
        "family": ckpt.family,
        "params": ckpt.params,
        "default": ckpt.alias == default,
        "default_cuda": ckpt.alias == DEFAULT_MODEL,
        "default_cpu": ckpt.alias == DEFAULT_CPU_MODEL,
        "cached": weights is not None,
        "config_cached": snapshot is not None,
        "path": str(snapshot) if snapshot else None,
    }
    from vqa_cli.model import loading

    row.update(costs(loading.read_config(snapshot) if snapshot else published_config(ckpt)),
               config_source="cache" if snapshot else "published")
    size = sum(f.stat().st_size for f in weights) if weights else row["parameters"] * FP16_BYTES
    row.update(disk_bytes=size, disk_gb=round(size / GB, 2), disk_estimated=weights is None)
    row.update(_quantized_copies(snapshot if weights else None))
    return row


def _quantized_copies(snapshot: Path | None) -> dict[str, Any]:
    """The current pre-quantized copies of a cached snapshot (``weights.copies``; offline, manifests only)."""
    from vqa_cli.model.weights import copies as stored

    copies = stored.copies_of(snapshot) if snapshot else []
    return {"quantized": sorted({c["quant"] for c in copies}),
            "quantized_copies": [{k: c[k] for k in ("quant", "dtype", "device", "disk_bytes", "path")} for c in copies]}


def list_models(cache_dir: Path | None = None, cuda: bool | None = None) -> list[dict[str, Any]]:
    """Every known checkpoint with its sizes and whether it is cached (offline). ``cuda``: whether this
    machine has CUDA, which decides the ``default`` mark (None: ask torch)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    default = DEFAULT_MODEL if cuda else DEFAULT_CPU_MODEL
    return [describe(ckpt, cache_dir, default) for ckpt in CHECKPOINTS]
