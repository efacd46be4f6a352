"""The engine's four public stages, run by hand in the order its docstring gives: prepare_clip -> visual_tokens ->
checked_budget -> generate. Oracles: a full sequential PyAV decode (the frames), the checkpoint's own transformers
image processor (the pixels), and ``model.generate`` fed ``pixel_values_videos`` (the answer)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessorPil

from tests.clips import pyav_decode_all
from vqa_cli.errors import ContextOverflowError
from vqa_cli.video import uniform_indices

QUESTION = "What happens in the video?"


def test_the_four_stages_in_order_answer_as_the_model_does_from_the_clips_pixels(engine_factory, clip_path):
    engine = engine_factory(frames=4, max_new_tokens=10)
    prepared = engine.prepare_clip(clip_path, 4)  # 1
    frames, _ = pyav_decode_all(clip_path)
    indices = uniform_indices(len(frames), 4)
    assert prepared.clip.indices == indices
    assert all(np.array_equal(prepared.clip.frames[k], frames[i]) for k, i in enumerate(indices))
    processor = CLIPImageProcessorPil.from_pretrained(engine.checkpoint.dir,
                                                      image_processor_filename="video_preprocessor_config.json")
    oracle_pixels = processor([frames[i] for i in indices], return_tensors="pt")["pixel_values"]
    assert prepared.pixels is not None and (prepared.pixels - oracle_pixels).abs().max().item() <= 1e-5
    assert set(prepared.timings) == {"decode", "preprocess"}

    tokens = engine.visual_tokens(prepared.clip, QUESTION, frames=engine.encode(prepared.pixels))  # 2
    budget = engine.checked_budget(replace(engine.settings, frames=4), QUESTION)  # 3
    assert tokens.shape[0] == budget.plan.total  # the budget counts the tokens stage 2 made
    answer = engine.generate(prepared.clip, QUESTION, tokens, budget)  # 4

    ids, _ = engine.prompt_inputs(QUESTION, prepared.clip, tokens)
    with torch.no_grad():
        out = engine.model.generate(input_ids=ids, pixel_values_videos=oracle_pixels[None],
                                    attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    assert answer.text == engine.checkpoint.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert answer.tokens == out.shape[1] - ids.shape[1] and answer.budget is budget


def test_a_request_that_cannot_fit_is_refused_before_the_vision_tower_runs(engine_factory, clip_path, monkeypatch):
    engine = engine_factory(frames=4)
    prepared = engine.prepare_clip(clip_path, 4)
    long = replace(engine.settings, max_new_tokens=10**6)  # far past the context at any RoPE factor
    view = engine.with_settings(long)

    def never(*args, **kwargs):
        raise AssertionError("the vision tower ran")

    monkeypatch.setattr(view, "encode", never)
    with pytest.raises(ContextOverflowError):
        view.answer(prepared.clip, QUESTION)


def test_a_clip_already_read_is_only_preprocessed(engine_factory, clip_path):
    engine = engine_factory(frames=4)
    first = engine.prepare_clip(clip_path, 4)
    again = engine.prepare_clip(first.clip, 4)
    assert again.clip is first.clip and "decode" not in again.timings
    assert torch.equal(again.pixels, first.pixels)
