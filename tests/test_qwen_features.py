"""Everything the other families do, for the qwen-vl family (Qwen3-VL dense and MoE) on tiny checkpoints.

Oracles: the model's own forward from pixels (transformers' ``model(input_ids, pixel_values_videos, video_grid_thw,
mm_token_type_ids)`` with its own positions, the pixels patchified by transformers' own video processor), the
published geometry formulas written out here, and the module list of the quantized model itself.
"""

from __future__ import annotations

import pytest
import torch

from tests.clips import make_clip
from vqa_cli.model.session import open_model
from vqa_cli.settings import RunSettings

QUESTIONS = ["What happens in the video?", "What colour is it?"]
SIZE = (96, 64)  # width, height: kept as is by the budget: 2 x 3 merged tokens a temporal group
RECIPES = ["qwen3-vl", "qwen3-vl-moe"]


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory) -> dict[str, str]:
    from vqa_cli.testing import tiny_checkpoint

    root = tmp_path_factory.mktemp("qwenf")
    return {r: str(tiny_checkpoint(root / r, family=r)) for r in RECIPES}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    """3 s at 10 fps (6 frames at 2 fps: 3 groups of 2 x 3) and 2 s portrait (4 frames: 2 groups of 3 x 2)."""
    root = tmp_path_factory.mktemp("qfclips")
    return [make_clip(str(root / "a.mp4"), 30, fps=10.0, size=SIZE),
            make_clip(str(root / "b.mp4"), 20, fps=10.0, size=(SIZE[1], SIZE[0]))]


_ENGINES: dict[tuple, object] = {}


def engine_for(model_dir: str, **kw):
    key = (model_dir, tuple(sorted(kw.items())))
    if key not in _ENGINES:
        settings = RunSettings(model=model_dir, dtype="float32", max_new_tokens=4, **kw)
        _ENGINES[key] = open_model(settings, [QUESTIONS[0]]).engine
    return _ENGINES[key]


def own_forward_logits(engine, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The oracle: the model's own forward of ``ids`` from the pixels, its own patch layout and positions."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    values, *grid = Qwen3VLVideoProcessor.patchify(None, pixels[None], 16, 2, 2)
    types = (ids == engine.model.config.video_token_id).long() * 2
    with torch.inference_mode():
        engine.model.model.rope_deltas = None
        return engine.model(input_ids=ids, pixel_values_videos=values[0], video_grid_thw=torch.tensor([grid]),
                            mm_token_type_ids=types).logits[0, -1]


# ---- chat: the KV cache reused across turns ----------------------------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES)
def test_a_second_chat_turn_reuses_the_cache_and_equals_a_fresh_forward(qwen_dirs, clips, recipe, monkeypatch):
    from vqa_cli.model.conversation import Conversation

    engine = engine_for(qwen_dirs[recipe])
    prepared = engine.prepare_clip(clips[0], engine.checkpoint.frames_for(engine.settings))
    conversation = Conversation.open(engine, prepared.clip)
    first = conversation.ask(QUESTIONS[0], keep=True)
    tower_calls = []
    tower = engine.model.model.visual
    monkeypatch.setattr(tower, "forward", lambda *a, **k: tower_calls.append(1) or type(tower).forward(tower, *a, **k))
    turn = conversation.ask(QUESTIONS[1], keep=True, first_logits=True)
    assert tower_calls == []  # no second vision-tower call
    whole = [{"role": "user", "text": QUESTIONS[0]}, {"role": "assistant", "text": first.answer},
             {"role": "user", "text": QUESTIONS[1]}]
    ids = torch.tensor([conversation.ids_for(whole)])
    video_end = 1 + max(i for i, t in enumerate(ids[0].tolist()) if t == engine.model.config.video_token_id)
    assert turn.fed_tokens <= ids.shape[1] - video_end  # everything up to the video's end came from the cache
    full = own_forward_logits(engine, prepared.pixels, ids)
    assert (turn.first_logits - full).abs().max().item() <= 1e-4


def test_independent_questions_share_the_video_prefix(qwen_dirs, clips):
    from vqa_cli.model.conversation import Conversation

    engine = engine_for(qwen_dirs["qwen3-vl"])
    prepared = engine.prepare_clip(clips[0], engine.checkpoint.frames_for(engine.settings))
    alone = [engine.answer(prepared.clip, q).text for q in QUESTIONS]
    conversation = Conversation.open(engine, prepared.clip)
    turns = [conversation.ask(q, keep=False, first_logits=True) for q in QUESTIONS]
    assert [t.answer for t in turns] == alone
    ids = torch.tensor([conversation.ids_for([{"role": "user", "text": QUESTIONS[1]}])])
    video_end = 1 + max(i for i, t in enumerate(ids[0].tolist()) if t == engine.model.config.video_token_id)
    assert all(t.fed_tokens <= ids.shape[1] - video_end for t in turns)  # the shared prefix was prefilled once
    full = own_forward_logits(engine, prepared.pixels, ids)
    assert (turns[1].first_logits - full).abs().max().item() <= 1e-4
