"""The tiny test checkpoints must see their inputs: a model that answers the same whatever it is asked about
whatever video would let every answer-comparing test pass with the video or the question wired wrongly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.clips import make_clip
from vqa_cli.model.engine import Engine
from vqa_cli.model.session import open_model
from vqa_cli.settings import RunSettings
from vqa_cli.testing import FAMILIES
from vqa_cli.video import Clip, sample_frames

QUESTIONS = ("What happens in the video?", "Is there a dog?")
FRAMES = 4
NEW_TOKENS = 4  # the answers must part within their first few tokens
MIN_LOGIT_GAP = 0.1  # float32 noise between two forwards of one prompt is ~1e-5


@pytest.fixture(scope="module")
def other_clip(tmp_path_factory) -> str:
    """Self-numbering frames like ``clip_path``'s (90 frames) but 40 of them: 4 uniform samples differ."""
    return make_clip(str(tmp_path_factory.mktemp("other") / "other.mp4"), 40, fps=10.0, size=(320, 240))


def _engine(model_dir: Path) -> Engine:
    settings = RunSettings(model=str(model_dir), dtype="float32", frames=FRAMES, max_new_tokens=NEW_TOKENS)
    return open_model(settings, list(QUESTIONS)).engine


def _first_step_logits(engine: Engine, clip: Clip, question: str) -> torch.Tensor:
    """The model's own forward with pixel_values_videos (its own vision path) at the last prompt position."""
    pixels = engine.pixels(clip)
    ids, _ = engine.prompt_inputs(question, clip, engine.aggregate(engine.encode(pixels), engine.settings.mode))
    with torch.no_grad():
        return engine.model(input_ids=ids, pixel_values_videos=pixels[None],
                            attention_mask=torch.ones_like(ids)).logits[0, -1]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tiny_checkpoint_is_sensitive_to_the_question_and_the_video(family_dirs, clip_path, other_clip, family):
    engine = _engine(family_dirs[family])
    a, b = sample_frames(clip_path, FRAMES), sample_frames(other_clip, FRAMES)
    assert a.indices != b.indices and not all((x == y).all() for x, y in zip(a.frames, b.frames, strict=True))
    same = _first_step_logits(engine, a, QUESTIONS[0])
    other_question = _first_step_logits(engine, a, QUESTIONS[1])
    other_video = _first_step_logits(engine, b, QUESTIONS[0])
    assert (same - _first_step_logits(engine, a, QUESTIONS[0])).abs().max().item() < 1e-4  # deterministic
    assert (same - other_question).abs().max().item() > MIN_LOGIT_GAP
    assert (same - other_video).abs().max().item() > MIN_LOGIT_GAP
    answer = engine.answer(a, QUESTIONS[0]).text
    assert answer != engine.answer(a, QUESTIONS[1]).text
    assert answer != engine.answer(b, QUESTIONS[0]).text
    assert len(set(answer)) > 4  # not one piece over and over ("rererere...")


def test_the_tiny_recipe_is_seeded(tmp_path):
    from vqa_cli.testing import tiny_checkpoint

    a = tiny_checkpoint(tmp_path / "a", family="video-llava")
    b = tiny_checkpoint(tmp_path / "b", family="video-llava")
    c = tiny_checkpoint(tmp_path / "c", family="video-llava", seed=1)
    weights = [(d / "model.safetensors").read_bytes() for d in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]
