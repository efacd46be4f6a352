"""Offline test checkpoints: random weights, real geometry, the real loading path.

``python -m vqa_cli.testing tiny-checkpoint DIR [--family llava-next-video]`` writes a
checkpoint directory laid out like a hub repository (config, safetensors, tokenizer,
processor configs, chat template) so that ``vqa ask clip.mp4 "q" --model DIR`` goes through
exactly the code a hub checkpoint goes through. Only the hidden sizes are tiny: the vision
geometry (336 px, patch 14, a 24x24 grid), the text context (4096 positions) and the token
layout match the real checkpoint, so token counts and RoPE decisions are the real ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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

# Vicuna-style template of the LLaVA-NeXT-Video checkpoints: "USER: <video>\n{text} ASSISTANT:".
LLAVA_NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'][0]['text'] + ' ' }}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'video' %}{{ '<video>\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

FAMILIES = ("llava-next-video",)


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained offline, with LLaVA's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Sentencepiece-style pieces ("▁word"), like Llama's tokenizer: random weights then stream
    # word-like pieces instead of stray bytes. Characters outside the corpus map to <unk>.
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = sorted(set(_CORPUS.replace("\n", " ")) | set("0123456789.,:;?!'-()\n") | set(_CORPUS.upper()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=["\u2581"] + alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": ["<video>", "<image>"]})
    return fast


def _llava_next_video(out: Path, seed: int) -> None:
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
    )

    tokenizer = build_tokenizer()
    tokenizer.chat_template = LLAVA_NEXT_VIDEO_TEMPLATE
    video_id = tokenizer.convert_tokens_to_ids("<video>")
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=336,
        patch_size=14,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaNextVideoConfig(
        vision_config=vision,
        text_config=text,
        video_token_index=video_id,
        image_token_index=image_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        spatial_pool_stride=2,
        spatial_pool_mode="average",
    )
    torch.manual_seed(seed)
    model = LlavaNextVideoForConditionalGeneration(config).eval()
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    processor = {
        "do_resize": True,
        "size": {"shortest_edge": 336},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 336, "width": 336},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
    }
    image_proc = dict(
        processor,
        image_processor_type="LlavaNextImageProcessor",
        image_grid_pinpoints=config.image_grid_pinpoints,
        do_pad=True,
    )
    video_proc = dict(processor, video_processor_type="LlavaNextVideoVideoProcessor")
    (out / "preprocessor_config.json").write_text(json.dumps(image_proc, indent=2))
    (out / "video_preprocessor_config.json").write_text(json.dumps(video_proc, indent=2))
    (out / "processor_config.json").write_text(
        json.dumps(
            {
                "processor_class": "LlavaNextVideoProcessor",
                "patch_size": 14,
                "vision_feature_select_strategy": "default",
            },
            indent=2,
        )
    )
    (out / "chat_template.json").write_text(json.dumps({"chat_template": LLAVA_NEXT_VIDEO_TEMPLATE}))


def tiny_checkpoint(out: str | Path, family: str = "llava-next-video", seed: int = 0) -> Path:
    """Write a random-weight checkpoint of ``family`` with the real geometry into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    builders = {"llava-next-video": _llava_next_video}
    if family not in builders:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(builders)}")
    builders[family](out, seed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqa_cli.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-checkpoint", help="write a random-weight checkpoint with real geometry")
    tiny.add_argument("dir")
    tiny.add_argument("--family", default="llava-next-video", choices=FAMILIES)
    tiny.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = tiny_checkpoint(args.dir, family=args.family, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
