"""Prompt embeddings: chat template -> token ids with the video placeholder expanded -> embeddings.

The prompt text comes from the checkpoint's own chat template. Its single video placeholder is
expanded to exactly as many tokens as the mode produces (the processors hard-code their own
counts, so vqa expands it itself), and the visual features are scattered into those positions
of the input embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from vqa_cli.errors import UnsupportedModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_CAPTION_PROMPT = (
    "Describe this video in detail: the setting, the people and objects in it, "
    "and what happens, in order."
)

TIME_INSTRUCTION = (
    "The video lasts for {duration:.2f} seconds, and {frames} frames are uniformly sampled from it. "
    "These frames are located at {times}. Please answer the following questions related to this video."
)


def load_chat_template(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> str:
    """The checkpoint's chat template: ``chat_template.jinja``, ``chat_template.json``, or the tokenizer's."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    as_json = model_dir / "chat_template.json"
    if as_json.is_file():
        return json.loads(as_json.read_text())["chat_template"]
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return template
    raise UnsupportedModelError(f"{model_dir} has no chat template")


def time_instruction(duration: float, timestamps: list[float]) -> str:
    times = ",".join(f"{t:.2f}s" for t in timestamps)
    return TIME_INSTRUCTION.format(duration=duration, frames=len(timestamps), times=times)


def render(tokenizer: PreTrainedTokenizerBase, template: str, conversation: str | list[dict], *,
           media: str | None = "video", time_text: str | None = None) -> str:
    """The one prompt renderer: a conversation through the checkpoint's chat template, ready for the answer.

    ``conversation`` is the question, or the turns so far as ``[{"role": "user"|"assistant", "text": ...}]``
    starting with the user (after an optional ``"system"`` turn). The first user turn holds the video (or
    image, ``media``) and, before its text, ``time_text`` (the time instruction). ``media`` None: no media at
    all (a text-only conversation, answered by the language model alone).
    """
    turns = [{"role": "user", "text": conversation}] if isinstance(conversation, str) else conversation
    first_user = next((i for i, turn in enumerate(turns) if turn["role"] == "user"), 0)
    messages = []
    for i, turn in enumerate(turns):
        text = f"{time_text}\n{turn['text']}" if i == first_user and time_text else turn["text"]
        content = ([{"type": media}] if i == first_user and media else []) + [{"type": "text", "text": text}]
        messages.append({"role": turn["role"], "content": content})
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


def token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a rendered prompt, with the tokenizer's own special tokens (BOS) as the processor adds them."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def expand_placeholder(ids: list[int], placeholder_id: int, count: int) -> list[int]:
    """Replace the single placeholder id with ``count`` copies of it."""
    positions = [i for i, t in enumerate(ids) if t == placeholder_id]
    if len(positions) != 1:
        raise UnsupportedModelError(
            f"the chat template produced {len(positions)} video placeholders; expected exactly one"
        )
    at = positions[0]
    return ids[:at] + [placeholder_id] * count + ids[at + 1:]


def embed(model: PreTrainedModel, ids: torch.Tensor, features: torch.Tensor | None, placeholder_id: int
          ) -> torch.Tensor:
    """Input embeddings [1, L, D] with ``features`` [N, D] scattered into the N placeholder positions (``features``
    None: a prompt without media, the text's embeddings alone)."""
    embeds = model.get_input_embeddings()(ids)
    if features is None:
        return embeds
    mask = (ids == placeholder_id).unsqueeze(-1).expand_as(embeds)
    return embeds.masked_scatter(mask, features.to(embeds.device, embeds.dtype))
