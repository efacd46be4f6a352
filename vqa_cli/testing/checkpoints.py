"""Offline test checkpoints: random weights, real geometry, the real loading path (``tiny_checkpoint``, and
``main``: ``python -m vqa_cli.testing tiny-checkpoint DIR``).

``tiny_checkpoint`` writes a checkpoint directory laid out like a hub repository (config, safetensors, tokenizer,
processor configs, chat template) so that ``vqa ask clip.mp4 "q" --model DIR`` goes through
exactly the code a hub checkpoint goes through. Only the hidden sizes are tiny: the vision
geometry, the text context and the token layout match the real checkpoint, so token counts and
RoPE decisions are the real ones:

- llava-next-video: CLIP 336 px, patch 14 (24x24), Llama with 4096 positions;
- video-llava: CLIP 224 px, patch 14 (16x16 + CLS), Llama with 4096 positions;
- llava-onevision: SigLIP 384 px, patch 14 (27x27), Qwen2 with 32768 positions, ChatML template.

Two full-size geometries make loading and memory cost what the real checkpoints cost (``--geometry``):
``7b`` for llava-next-video (LLaVA-NeXT-Video-7B's widths and depths, vocabulary included) and ``0.5b`` for
llava-onevision (llava-onevision-qwen2-0.5b's, except the vocabulary: see ``_05B_TEXT``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# A small English corpus for the offline BPE tokenizer: enough merges that random weights
# still produce word-like text when streamed.
_CORPUS = """
a video shows a person walking a dog in the park on a sunny day while cars pass by
the man opens the door and enters the kitchen where a woman is cooking dinner
two children play football on the grass and a bird flies over the trees
the camera pans across a city street at night with bright lights and people
what happens in this clip describe the scene in detail who is in the video
a cat jumps onto the table and knocks over a glass of water
the weather is cloudy and the river flows under an old stone bridge
""".strip()

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]

# Vicuna-style template of the LLaVA-NeXT-Video and Video-LLaVA checkpoints:
# "USER: <video>\n{text} ASSISTANT:".
VICUNA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'][0]['text'] + ' ' }}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'video' %}{{ '<video>\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Qwen ChatML of the LLaVA-OneVision / LLaVA-Video checkpoints:
# "<|im_start|>user\n<video>\n{text}<|im_end|>\n<|im_start|>assistant\n".
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'video' %}{{ '<video>' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ '\n' + item['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAVA_SPECIALS = {"bos": "<s>", "eos": "</s>", "pad": "<unk>", "extra": ("<video>", "<image>")}
QWEN_SPECIALS = {
    "bos": None,
    "eos": "<|im_end|>",
    "pad": "<|endoftext|>",
    "extra": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),
}

FAMILIES = ("llava-next-video", "video-llava", "llava-onevision")
# Qwen-VL recipes (family qwen-vl; vqa_cli/testing/qwen_checkpoints.py): kept out of FAMILIES, whose tests run every
# mode and the image path on each recipe.
QWEN_RECIPES = ("qwen3-vl", "qwen3-vl-moe", "qwen2.5-vl")

# Tiny sizes shared by every recipe: only widths and depths shrink, never the token geometry.
_TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
# The decoder's (and, through the composite config, the projector's) initialisation scale. At transformers'
# default 0.02 a 64-wide decoder is almost linear: attention is near-uniform, the residual stream is the last
# token's embedding, and every question about every video gets the same answer ("rererere..."), so tests
# comparing answers could not see a wrongly wired model. At 0.4 (3.2 / sqrt(64)) attention is peaked and the
# lm_head's logits spread (std ~3): different questions and different videos give different first-step logits
# and greedy answers that part within a token or two (tests/test_tiny_checkpoint.py), while float32 paths that
# should agree still agree to ~5e-6. The vision towers keep their defaults: their features already differ
# between two frames as much as they vary inside one.
TINY_INITIALIZER_RANGE = 0.4
_TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "initializer_range": TINY_INITIALIZER_RANGE}


def build_tokenizer(
    vocab_size: int = 512,
    *,
    bos: str | None = "<s>",
    eos: str = "</s>",
    pad: str = "<unk>",
    extra: tuple[str, ...] = ("<video>", "<image>"),
    alphabet_extra: str = "",
):
    """A byte-level BPE tokenizer trained offline, with LLaVA's special tokens (or those given)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Sentencepiece-style pieces ("▁word"), like Llama's tokenizer: random weights then stream
    # word-like pieces instead of stray bytes. Characters outside the corpus map to <unk>.
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = sorted(set(_CORPUS.replace("\n", " ")) | set("0123456789.,:;?!'-()\n") | set(_CORPUS.upper())
                      | set(alphabet_extra))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=["\u2581"] + alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    bos_id = tok.token_to_id(bos) if bos is not None else None
    if bos_id is not None:
        # Llama's tokenizer prepends BOS to every encoded text (Qwen's has none): so must this one, or a
        # prompt that lost its BOS would look right to every test.
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bos_id)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token="<unk>",
        pad_token=pad,
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": list(extra)})
    return fast


# The real LLaVA-NeXT-Video-7B sizes (CLIP ViT-L/14-336 + Vicuna-7B), for full-cost benchmarks and --plan:
# random weights of this geometry cost exactly what the real checkpoint costs.
_7B_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16}
_7B_TEXT = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "rms_norm_eps": 1e-5}
_7B_VOCAB = 32064
# llava-onevision-qwen2-0.5b's sizes: the SigLIP so400m tower as its hf config holds it (26 of so400m's 27 layers:
# OneVision reads the second-to-last layer) and Qwen2-0.5B with tied embeddings. The vocabulary stays the tiny
# tokenizer's (a few hundred tokens, not 151646), so the real embedding (136M parameters, tied with the head) is
# left out: about 0.76B parameters against the real 0.89B, with every layer that is quantized or kept in full
# precision at its real shape.
_05B_VISION = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 26, "num_attention_heads": 16}
_05B_TEXT = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}
GEOMETRIES = ("tiny", "7b", "0.5b")
# The full-size geometry each family has (``--geometry``); every family has ``tiny``.
FULL_GEOMETRIES = {"llava-next-video": "7b", "llava-onevision": "0.5b"}


def _text_config(cls: type, tokenizer: Any, context: int, rope_theta: float, sizes: dict | None = None,
                 vocab_size: int | None = None) -> Any:
    """A decoder (tiny unless ``sizes`` says otherwise) with the real model's context and the tokenizer's ids."""
    eos = tokenizer.eos_token_id
    return cls(
        vocab_size=vocab_size or len(tokenizer),
        max_position_embeddings=context,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        **(sizes or _TINY_TEXT),
    )


def _processor(size: dict, crop: dict | None, mean: list[float], std: list[float]) -> dict:
    """Shared fields of a hub image/video processor config."""
    return {
        "do_resize": True,
        "size": size,
        "resample": 3,
        "do_center_crop": crop is not None,
        "crop_size": crop,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": True,
    }


def _clip_processor(side: int) -> dict:
    return _processor({"shortest_edge": side}, {"height": side, "width": side}, CLIP_MEAN, CLIP_STD)


def _save(out: Path, model: Any, tokenizer: Any, template: str, files: dict[str, dict]) -> None:
    """Weights, tokenizer, chat template and the processor JSON files, laid out like a hub repository.

    ``model`` may be a bare config: then only configs are written (for ``--plan`` and the catalog).
    """
    from transformers import GenerationConfig, PreTrainedConfig

    configs_only = isinstance(model, PreTrainedConfig)
    generation = GenerationConfig.from_model_config(model) if configs_only else model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    tokenizer.chat_template = template
    if configs_only:
        model.save_pretrained(out)
        generation.save_pretrained(out)
    else:
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": template}))


def _build(config: Any, class_name: str, seed: int, dtype: Any = None) -> Any:
    """Random weights; ``dtype`` (e.g. bfloat16 for the 7B geometry) is used while building, so a 7B model
    never exists in float32 (28 GB)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        return getattr(transformers, class_name)(config).eval()
    finally:
        torch.set_default_dtype(previous)


def _media_ids(tokenizer: Any) -> dict[str, int]:
    return {
        "video_token_index": tokenizer.convert_tokens_to_ids("<video>"),
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
    }


def _llava_next_video(out: Path, seed: int, geometry: str = "tiny", weights: bool = True) -> None:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig

    tokenizer = build_tokenizer(**LLAVA_SPECIALS)
    big = geometry == "7b"
    config = LlavaNextVideoConfig(
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14, projection_dim=768 if big else 32,
                                       **(_7B_VISION if big else _TINY_VISION)),
        text_config=_text_config(LlamaConfig, tokenizer, 4096, 10000.0, _7B_TEXT if big else None,
                                 _7B_VOCAB if big else None),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        spatial_pool_stride=2,
        spatial_pool_mode="average",
        **_media_ids(tokenizer),
    )
    if weights:
        import torch

        model = _build(config, "LlavaNextVideoForConditionalGeneration", seed, torch.bfloat16 if big else None)
    else:
        model = config
    processor = _clip_processor(336)
    _save(out, model, tokenizer, VICUNA_TEMPLATE, {
        "preprocessor_config.json": dict(processor, image_processor_type="LlavaNextImageProcessor",
                                         image_grid_pinpoints=config.image_grid_pinpoints, do_pad=True),
        "video_preprocessor_config.json": dict(processor, video_processor_type="LlavaNextVideoVideoProcessor"),
        "processor_config.json": {"processor_class": "LlavaNextVideoProcessor", "patch_size": 14,
                                  "vision_feature_select_strategy": "default"},
    })


def _video_llava(out: Path, seed: int) -> None:
    """LanguageBind/Video-LLaVA-7B-hf: CLIP ViT-L/14 at 224 (two towers), Vicuna 7B with 4096 positions."""
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig

    tokenizer = build_tokenizer(**LLAVA_SPECIALS)
    config = VideoLlavaConfig(
        vision_config=CLIPVisionConfig(image_size=224, patch_size=14, projection_dim=32, **_TINY_VISION),
        text_config=_text_config(LlamaConfig, tokenizer, 4096, 10000.0),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        **_media_ids(tokenizer),
    )
    model = _build(config, "VideoLlavaForConditionalGeneration", seed)
    processor = _clip_processor(224)
    _save(out, model, tokenizer, VICUNA_TEMPLATE, {
        "preprocessor_config.json": dict(processor, image_processor_type="VideoLlavaImageProcessor"),
        "video_preprocessor_config.json": dict(processor, video_processor_type="VideoLlavaVideoProcessor"),
        "processor_config.json": {"processor_class": "VideoLlavaProcessor", "patch_size": 14,
                                  "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
    })


def _llava_onevision(out: Path, seed: int, geometry: str = "tiny") -> None:
    """llava-hf/llava-onevision-qwen2-*-ov-hf: SigLIP at 384 px (27x27), Qwen2 with 32768 positions.

    ``geometry="0.5b"``: llava-onevision-qwen2-0.5b's widths and depths (see ``_05B_TEXT``), built and saved in
    bfloat16 like the hub's weights (about 1.5 GB written)."""
    import torch
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    tokenizer = build_tokenizer(**QWEN_SPECIALS)
    big = geometry == "0.5b"
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(image_size=384, patch_size=14, vision_use_head=False,
                                         **(_05B_VISION if big else _TINY_VISION)),
        text_config=_text_config(Qwen2Config, tokenizer, 32768, 1000000.0, _05B_TEXT if big else None),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        **_media_ids(tokenizer),
    )
    model = _build(config, "LlavaOnevisionForConditionalGeneration", seed, torch.bfloat16 if big else None)
    # The hub's image processor config names no centre crop; its video processor config, saved by
    # transformers, writes every setting out, a disabled crop as null.
    processor = _processor({"height": 384, "width": 384}, None, SIGLIP_MEAN, SIGLIP_STD)
    image = {k: v for k, v in processor.items() if k not in ("do_center_crop", "crop_size")}
    _save(out, model, tokenizer, CHATML_TEMPLATE, {
        "preprocessor_config.json": dict(image, image_processor_type="LlavaOnevisionImageProcessor",
                                         image_grid_pinpoints=config.image_grid_pinpoints, do_pad=True),
        "video_preprocessor_config.json": dict(processor, do_center_crop=None,
                                               video_processor_type="LlavaOnevisionVideoProcessor"),
        "processor_config.json": {"processor_class": "LlavaOnevisionProcessor", "num_image_tokens": 729,
                                  "vision_feature_select_strategy": "full", "vision_aspect_ratio": "anyres_max_9"},
    })


def _qwen3_vl(out: Path, seed: int, moe: bool | None = False) -> None:
    """Qwen3-VL (``moe``: Qwen3-VL-MoE; None: Qwen2.5-VL) at its real video geometry: see ``qwen_checkpoints``."""
    from vqa_cli.testing import qwen_checkpoints as qwen

    tokenizer = build_tokenizer(**qwen.QWEN_VL_SPECIALS, alphabet_extra="<>")
    if moe is None:  # Qwen2.5-VL
        config = qwen.qwen2_5_config(tokenizer, TINY_INITIALIZER_RANGE)
        name, files = qwen.QWEN2_5_CLASS, qwen.QWEN2_5_FILES
    else:
        config, name, files = qwen.config(tokenizer, TINY_INITIALIZER_RANGE, moe), qwen.model_class(moe), qwen.FILES
    _save(out, _build(config, name, seed), tokenizer, qwen.QWEN_VL_TEMPLATE, files)


_BUILDERS = {"llava-next-video": _llava_next_video, "video-llava": _video_llava, "llava-onevision": _llava_onevision,
             "qwen3-vl": _qwen3_vl, "qwen3-vl-moe": lambda out, seed: _qwen3_vl(out, seed, moe=True),
             "qwen2.5-vl": lambda out, seed: _qwen3_vl(out, seed, moe=None)}


def tiny_checkpoint(out: str | Path, family: str = "llava-next-video", seed: int = 0, geometry: str = "tiny",
                    weights: bool = True) -> Path:
    """Write a random-weight checkpoint of ``family`` with the real geometry into ``out``.

    ``geometry="7b"`` (LLaVA-NeXT-Video) and ``"0.5b"`` (LLaVA-OneVision) use the real widths and depths too
    (``FULL_GEOMETRIES``); ``weights=False`` writes configs, tokenizer and template only (LLaVA-NeXT-Video).
    """
    out = Path(out)
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(_BUILDERS)}")
    if geometry not in ("tiny", FULL_GEOMETRIES.get(family)):
        sizes = ", ".join(f"{g} for {f}" for f, g in FULL_GEOMETRIES.items())
        raise ValueError(f"--geometry {geometry} is not available for {family} (besides tiny: {sizes})")
    if not weights and family != "llava-next-video":
        raise ValueError("--no-weights is available for llava-next-video")
    out.mkdir(parents=True, exist_ok=True)
    if family == "llava-next-video":
        _llava_next_video(out, seed, geometry=geometry, weights=weights)
    elif family == "llava-onevision":
        _llava_onevision(out, seed, geometry=geometry)
    else:
        _BUILDERS[family](out, seed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqa_cli.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-checkpoint", help="write a random-weight checkpoint with real geometry")
    tiny.add_argument("dir")
    tiny.add_argument("--family", default="llava-next-video", choices=FAMILIES + QWEN_RECIPES)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--geometry", default="tiny", choices=GEOMETRIES,
                      help="tiny widths (default), or the real sizes: 7b (llava-next-video), 0.5b (llava-onevision)")
    tiny.add_argument("--no-weights", action="store_true", help="configs, tokenizer and template only")
    args = parser.parse_args(argv)
    try:
        path = tiny_checkpoint(args.dir, family=args.family, seed=args.seed, geometry=args.geometry,
                               weights=not args.no_weights)
    except ValueError as exc:
        parser.error(str(exc))
    print(path)
    return 0
