"""Prompt embeddings and streaming detokenisation."""

from __future__ import annotations

import pytest
import torch

from vqa_cli.errors import UnsupportedModelError
from vqa_cli.model import prompt
from vqa_cli.model.generate import Generation, TimedTextStreamer


def test_the_checkpoints_template_renders_one_video_placeholder(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    template = prompt.load_chat_template(tiny_dir, tok)
    text = prompt.render(tok, template, "What happens?")
    assert text == "USER: <video>\nWhat happens? ASSISTANT:"


def test_expand_placeholder_replaces_the_single_placeholder():
    assert prompt.expand_placeholder([1, 5, 9, 2], 9, 3) == [1, 5, 9, 9, 9, 2]
    with pytest.raises(UnsupportedModelError):
        prompt.expand_placeholder([1, 9, 9], 9, 3)
    with pytest.raises(UnsupportedModelError):
        prompt.expand_placeholder([1, 2], 9, 3)


def test_embed_scatters_features_into_placeholder_positions_in_order():
    emb = torch.nn.Embedding(10, 4)

    class M:
        def get_input_embeddings(self):
            return emb

    ids = torch.tensor([[1, 9, 9, 9, 2]])
    feats = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    out = prompt.embed(M(), ids, feats, 9)
    torch.testing.assert_close(out[0, 1:4], feats)
    torch.testing.assert_close(out[0, [0, 4]], emb(torch.tensor([1, 2])))


def test_time_instruction_lists_duration_and_frame_times():
    text = prompt.time_instruction(12.345, [0.0, 1.5])
    assert "12.35 seconds" in text and "2 frames" in text and "0.00s,1.50s" in text


class _ByteTokenizer:
    """Decodes ids as UTF-8 bytes, like byte-level BPE: a character can span tokens."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_streamer_holds_back_incomplete_characters_and_skips_the_prompt():
    pieces: list[str] = []
    s = TimedTextStreamer(_ByteTokenizer(), pieces.append)
    s.put(torch.tensor([[104, 105]]))  # the prompt
    for b in "né✓".encode():
        s.put(torch.tensor([b]))
    s.end()
    assert "".join(pieces) == "né✓"
    assert all("\ufffd" not in p for p in pieces)
    assert s.first_token_at is not None and len(s.tokens) == len("né✓".encode())


def test_tokens_per_second_excludes_the_first_token():
    assert Generation("x", 11, first_token=1.0, total=2.0).tokens_per_second == 10.0
    assert Generation("x", 1, first_token=1.0, total=1.0).tokens_per_second == 0.0
