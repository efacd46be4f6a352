"""The native (anyres) path against LlavaNextVideoForConditionalGeneration's own forward: the oracle."""

from __future__ import annotations

import torch

from vqa_cli.video import sample_frames


def _inputs(engine, clip, question="What happens in the video?"):
    pixels = engine.pixels(clip)
    features = engine.aggregate(engine.encode(pixels), engine.settings.mode)
    ids, embeds = engine.prompt_inputs(question, clip, features)
    return pixels, features, ids, embeds


def test_native_path_logits_equal_model_forward_with_pixel_values_videos(engine_factory, clip_path):
    engine = engine_factory(frames=8)
    clip = sample_frames(clip_path, 8)
    pixels, _, ids, embeds = _inputs(engine, clip)
    with torch.no_grad():
        ours = engine.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits
        oracle = engine.model(
            input_ids=ids, pixel_values_videos=pixels[None], attention_mask=torch.ones_like(ids)
        ).logits
    assert ours.shape == oracle.shape
    assert (ours - oracle).abs().max().item() <= 1e-4


def test_placeholder_is_expanded_to_exactly_the_visual_token_count(engine_factory, clip_path):
    engine = engine_factory(frames=8)
    clip = sample_frames(clip_path, 8)
    _, features, ids, _ = _inputs(engine, clip)
    assert features.shape == (8 * 12 * 12, 64)  # 2x2 pooling of the 24x24 grid, tiny hidden 64
    assert int((ids == engine.adapter.video_token_id()).sum()) == features.shape[0]


def test_streamed_greedy_answer_equals_model_generate_with_pixels(engine_factory, clip_path):
    engine = engine_factory(frames=4, max_new_tokens=12)
    clip = sample_frames(clip_path, 4)
    pieces: list[str] = []
    answer = engine.answer(clip, "What happens?", on_text=pieces.append)
    pixels, _, ids, _ = _inputs(engine, clip, "What happens?")
    with torch.no_grad():
        out = engine.model.generate(
            input_ids=ids, pixel_values_videos=pixels[None], attention_mask=torch.ones_like(ids),
            max_new_tokens=12, do_sample=False,
        )
    oracle = engine.checkpoint.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert answer.text == oracle
    assert "".join(pieces).strip() == answer.text
    assert answer.tokens == out.shape[1] - ids.shape[1]


def test_greedy_answers_are_deterministic(engine_factory, clip_path):
    engine = engine_factory(frames=4)
    clip = sample_frames(clip_path, 4)
    assert engine.answer(clip, "Who is there?").text == engine.answer(clip, "Who is there?").text


def test_sampling_with_a_seed_is_reproducible(engine_factory, clip_path):
    engine = engine_factory(frames=4, temperature=1.0, seed=7, max_new_tokens=16)
    clip = sample_frames(clip_path, 4)
    assert engine.answer(clip, "Describe it.").text == engine.answer(clip, "Describe it.").text


def _still(tmp_path, hw=(200, 500)):
    import cv2
    import numpy as np

    path = tmp_path / "still.png"
    rng = np.random.default_rng(1)
    cv2.imwrite(str(path), rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    return str(path)


def test_a_still_image_in_anyres_takes_the_checkpoints_own_anyres_image_path(engine_factory, tmp_path):
    from transformers import LlavaNextImageProcessorPil

    engine = engine_factory(frames=4)
    clip = sample_frames(_still(tmp_path), 4)
    assert engine.uses_image_path(clip)
    features = engine.adapter.image_tokens(engine.model, engine.checkpoint.dir, clip.frames[0])
    ids, embeds = engine.prompt_inputs("What is this?", clip, features)
    image_id = engine.adapter.image_token_id()
    assert int((ids == image_id).sum()) == features.shape[0] > 576  # tiles + overview + newlines
    inputs = LlavaNextImageProcessorPil.from_pretrained(engine.checkpoint.dir)(images=[clip.frames[0]],
                                                                                return_tensors="pt")
    with torch.no_grad():
        ours = engine.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits
        oracle = engine.model(input_ids=ids, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"],
                              attention_mask=torch.ones_like(ids)).logits
    assert (ours - oracle).abs().max().item() <= 1e-4
    answer = engine.answer(clip, "What is this?")
    assert answer.budget.plan.total == features.shape[0] and answer.budget.plan.pathways[0].name == "image"


def test_a_still_image_in_other_modes_is_a_one_frame_video(engine_factory, tmp_path):
    from vqa_cli.settings import ModeSettings

    engine = engine_factory(frames=4, mode=ModeSettings("slowfast"))
    answer = engine.answer(sample_frames(_still(tmp_path), 4), "What is this?")
    assert len(answer.clip.indices) == 1 and answer.budget.plan.total == 288 + 16


def test_time_prompt_tells_the_model_the_duration_and_frame_times(engine_factory, clip_path):
    engine = engine_factory(frames=4, time_prompt=True)
    clip = sample_frames(clip_path, 4)
    _, _, ids, _ = _inputs(engine, clip)
    text = engine.checkpoint.tokenizer.decode([i for i in ids[0].tolist() if i != engine.adapter.video_token_id()])
    assert "The video lasts for 3.00 seconds, and 4 frames are uniformly sampled" in text
    assert ",".join(f"{t:.2f}s" for t in clip.timestamps) in text
    budget = engine.checkpoint.budget(engine.settings, ["What happens in the video?"])
    assert budget.prompt_tokens >= ids.shape[1] - 4 * 144  # budgeted for the longest time list
