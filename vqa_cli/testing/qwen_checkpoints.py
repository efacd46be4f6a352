"""Tiny Qwen3-VL checkpoints (dense ``qwen3_vl`` and MoE ``qwen3_vl_moe``): random weights at the real video
geometry (patch 16, temporal patch 2, 2x2 merge, DeepStack after vision blocks 1-3 of 4, M-RoPE sections over a
32-wide head), the published processor settings (fps 2, 4..768 frames, a 4096..25165824-pixel clip budget, mean and
std 0.5) and a ChatML template that writes a video as ``<|vision_start|><|video_pad|><|vision_end|>``, as Qwen's
own ``chat_template.json`` does. The text model has 4 layers (DeepStack feeds the first 3) and the real 262144
positions; the MoE recipe has 4 experts, 2 per token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

QWEN_VL_SPECIALS = {
    "bos": None,
    "eos": "<|im_end|>",
    "pad": "<|endoftext|>",
    "extra": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
              "<|video_pad|>"),
}

# Qwen3-VL's ChatML: a video item is the three-token wrapper, inline with the text; no default system turn.
QWEN_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The published Qwen3-VL processor settings (REFERENCES.md section 13; transformers' class defaults otherwise).
_PROCESSING = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
               "image_std": [0.5, 0.5, 0.5], "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
               "do_resize": True, "resample": 3, "do_convert_rgb": True}
QWEN3_VL_VIDEO_PROCESSOR = {**_PROCESSING, "video_processor_type": "Qwen3VLVideoProcessor",
                            "size": {"longest_edge": 25165824, "shortest_edge": 4096}, "fps": 2, "min_frames": 4,
                            "max_frames": 768, "do_sample_frames": True}
QWEN3_VL_IMAGE_PROCESSOR = {**_PROCESSING, "image_processor_type": "Qwen2VLImageProcessor",
                            "size": {"longest_edge": 16777216, "shortest_edge": 65536}}

_VISION = {"depth": 4, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "patch_size": 16,
           "temporal_patch_size": 2, "spatial_merge_size": 2, "num_position_embeddings": 2304,
           "deepstack_visual_indexes": [1, 2, 3], "hidden_act": "gelu_pytorch_tanh"}
_ROPE = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [6, 5, 5], "mrope_interleaved": True}
_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1}


def _text(tokenizer: PreTrainedTokenizerFast, initializer_range: float, moe: bool) -> dict:
    return {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "rope_parameters": dict(_ROPE),
            "max_position_embeddings": 262144, "initializer_range": initializer_range,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, **(_MOE if moe else {})}


FILES = {
    "video_preprocessor_config.json": QWEN3_VL_VIDEO_PROCESSOR,
    "preprocessor_config.json": QWEN3_VL_IMAGE_PROCESSOR,
    "processor_config.json": {"processor_class": "Qwen3VLProcessor"},
}


# Qwen2.5-VL: patch 14, windowed attention (112 px windows, full attention in blocks 1 and 3 of 4), 2 tokens per
# second on the time axis, CLIP's mean and std, a budget per frame (transformers' Qwen2-VL video processor defaults).
QWEN2_5_VL_VIDEO_PROCESSOR = {**_PROCESSING, "video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 14,
                              "size": {"longest_edge": 768 * 28 * 28, "shortest_edge": 128 * 28 * 28},
                              "image_mean": [0.48145466, 0.4578275, 0.40821073],
                              "image_std": [0.26862954, 0.26130258, 0.27577711]}
QWEN2_5_CLASS = "Qwen2_5_VLForConditionalGeneration"
QWEN2_5_FILES = {
    "video_preprocessor_config.json": QWEN2_5_VL_VIDEO_PROCESSOR,
    "preprocessor_config.json": {**QWEN2_5_VL_VIDEO_PROCESSOR, "image_processor_type": "Qwen2VLImageProcessor"},
    "processor_config.json": {"processor_class": "Qwen2_5_VLProcessor"},
}


def model_class(moe: bool) -> str:
    return "Qwen3VLMoeForConditionalGeneration" if moe else "Qwen3VLForConditionalGeneration"


def qwen2_5_config(tokenizer: PreTrainedTokenizerFast, initializer_range: float) -> PretrainedConfig:
    """A tiny Qwen2.5-VL config with ``tokenizer``'s ids."""
    from transformers import Qwen2_5_VLConfig

    text = {**_text(tokenizer, initializer_range, False), "head_dim": 16, "max_position_embeddings": 128000,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}}
    vision = {"depth": 4, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "patch_size": 14,
              "temporal_patch_size": 2, "spatial_merge_size": 2, "window_size": 112, "fullatt_block_indexes": [1, 3],
              "out_hidden_size": 64, "tokens_per_second": 2}
    return Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True, **_ids(tokenizer))


def _ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}


def config(tokenizer: PreTrainedTokenizerFast, initializer_range: float, moe: bool = False) -> PretrainedConfig:
    """A tiny Qwen3-VL (``moe``: Qwen3-VL-MoE) config with ``tokenizer``'s ids (built by ``checkpoints``)."""
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    ids = _ids(tokenizer)
    config_class = Qwen3VLMoeConfig if moe else Qwen3VLConfig
    return config_class(vision_config={**_VISION, "out_hidden_size": 64},
                        text_config=_text(tokenizer, initializer_range, moe), tie_word_embeddings=True, **ids)
