"""What the language model is really fed, against references built here from transformers' own modules.

- Every pooling mode: the embeddings ``Engine.answer`` hands the language model (caught by a hook on the
  language model itself) equal the prompt's token embeddings with, in the placeholder's place, the model's own
  projected per-frame features (vision tower hidden state, projector) pooled by the papers' formulas written
  here with torch modules: SlowFast-LLaVA (max pool 1-D over row-major tokens for the slow frames at
  ``linspace(0, T, 11)[:-1]``, adaptive average 2-D for the fast pathway), PLLaVA (adaptive average 3-D) and
  PPLLaVA's prompt-guided windows, all AFTER the projector.
- PPLLaVA's relevance against CLIP's own ``get_text_features`` / ``post_layernorm`` / ``visual_projection``.
- KV-cache reuse: the first-step logits ``Conversation.ask`` itself produced equal the model's own forward of
  the whole prompt (its own vision path, no cache), for independent questions and for chat turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from vqa_cli.model.conversation import Conversation
from vqa_cli.model.engine import Engine
from vqa_cli.model.session import open_model
from vqa_cli.settings import ModeSettings, RunSettings
from vqa_cli.video import Clip, sample_frames

QUESTION = "Where is the dog going?"


@dataclass(frozen=True)
class Facts:
    """One family's layout, from its paper / model card / transformers port (REFERENCES.md), not from vqa."""

    tower: str  # attribute of model.model that encodes video frames
    layer: int  # hidden state the LLaVA recipe reads
    cls: bool  # a CLS token leads the tower's tokens (dropped for the patch grid)
    side: int  # patch grid side
    fast: int  # SlowFast fast-pathway grid: 4x4 at 24x24, scaled to the grid side
    pool: tuple[int, int, int]  # PLLaVA pool: (16, 12, 12) at 24x24, scaled to the grid side
    native: int  # tokens per frame of the checkpoint's own video path
    suffix: int  # tokens its own video path appends once per video


FACTS = {
    "llava-next-video": Facts("vision_tower", -2, True, 24, 4, (16, 12, 12), 144, 0),
    "video-llava": Facts("video_tower", -2, True, 16, 3, (16, 8, 8), 257, 0),
    "llava-onevision": Facts("vision_tower", -1, False, 27, 4, (16, 14, 14), 196, 1),
}


def _engine(model_dir: Path, **kw) -> Engine:
    settings = RunSettings(model=str(model_dir), **{"dtype": "float32", "max_new_tokens": 1, **kw})
    return open_model(settings, [QUESTION]).engine


# ---- references -----------------------------------------------------------------------------------------


def _vision(engine: Engine, pixels: torch.Tensor, facts: Facts) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own features of every frame in one call: (tower grid [T, h, w, Dv], projected [T, h, w, D])."""
    m = engine.model.model
    with torch.no_grad():
        hidden = getattr(m, facts.tower)(pixels, output_hidden_states=True).hidden_states[facts.layer]
        if facts.cls:
            hidden = hidden[:, 1:]
        projected = m.multi_modal_projector(hidden)
    t = pixels.shape[0]
    return hidden.reshape(t, facts.side, facts.side, -1), projected.reshape(t, facts.side, facts.side, -1)


def _slowfast_reference(projected: torch.Tensor, fast: int, slow_frames: int = 10) -> torch.Tensor:
    t, h, w, d = projected.shape
    positions = torch.linspace(0, t, slow_frames + 1, dtype=torch.float64)[:-1].floor().long()
    slow = projected[positions]
    if w % 2 == 0:  # the paper: kernel-2 max pool over each frame's row-major token sequence
        slow_tokens = nn.MaxPool1d(2, 2)(slow.reshape(len(positions), h * w, d).transpose(1, 2)).transpose(1, 2)
    else:  # an odd row: pairs stay inside their row, the last column alone
        rows = slow.reshape(len(positions) * h, w, d).transpose(1, 2)
        slow_tokens = nn.MaxPool1d(2, 2, ceil_mode=True)(rows).transpose(1, 2)
    fast_tokens = nn.AdaptiveAvgPool2d(fast)(projected.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return torch.cat([slow_tokens.reshape(-1, d), fast_tokens.reshape(-1, d)])


def _pooled_reference(projected: torch.Tensor, pool: tuple[int, int, int]) -> torch.Tensor:
    out = nn.AdaptiveAvgPool3d(pool)(projected.permute(3, 0, 1, 2)[None])[0]  # [D, t, h, w]
    return out.permute(1, 2, 3, 0).reshape(-1, projected.shape[-1])


def _relevance_reference(guide_dir: Path, grid: torch.Tensor, question: str) -> torch.Tensor:
    """PPLLaVA: CLIP text and visual embeddings, L2-normalised, scaled cosines softmaxed over all T*h*w tokens."""
    from transformers import AutoTokenizer, CLIPModel

    clip = CLIPModel.from_pretrained(guide_dir).eval()
    tokens = AutoTokenizer.from_pretrained(guide_dir)(question, return_tensors="pt")
    with torch.no_grad():
        text = clip.get_text_features(**tokens).pooler_output[0]
        visual = clip.visual_projection(clip.vision_model.post_layernorm(grid))
        text = text / text.norm()
        visual = visual / visual.norm(dim=-1, keepdim=True)
        scores = (visual @ text) * clip.logit_scale.exp()
    return torch.softmax(scores.flatten(), 0).reshape(scores.shape)


def _guided_reference(projected: torch.Tensor, relevance: torch.Tensor, kernel: tuple[int, int, int] = (2, 3, 3),
                      temperature: float = 0.01) -> torch.Tensor:
    """Each (2, 3, 3) window (stride = kernel, a short last window where T is odd): its tokens averaged with
    weights softmax(relevance / 0.01) over the window."""
    t, h, w, d = projected.shape
    kt, kh, kw = kernel
    out = []
    for t0 in range(0, t, kt):
        for y0 in range(0, h, kh):
            for x0 in range(0, w, kw):
                window = (slice(t0, t0 + kt), slice(y0, y0 + kh), slice(x0, x0 + kw))
                weights = torch.softmax(relevance[window].reshape(-1) / temperature, 0)
                out.append(weights @ projected[window].reshape(-1, d))
    return torch.stack(out)


def _prompt_ids(model_dir: Path, messages: list[dict]) -> list[int]:
    """The checkpoint's own tokenizer and chat template, ready for the assistant's answer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))["input_ids"]


def _user(text: str, video: bool = False) -> dict:
    return {"role": "user", "content": ([{"type": "video"}] if video else []) + [{"type": "text", "text": text}]}


def _expected_embeddings(engine: Engine, visual: torch.Tensor, question: str) -> torch.Tensor:
    """Token embeddings of the rendered prompt with ``visual`` in the placeholder's place."""
    ids = _prompt_ids(engine.checkpoint.dir, [_user(question, video=True)])
    video_id = engine.model.config.video_token_index
    assert ids.count(video_id) == 1
    at = ids.index(video_id)
    with torch.no_grad():
        text = engine.model.get_input_embeddings()(torch.tensor(ids))
    return torch.cat([text[:at], visual, text[at + 1:]])


def _fed_embeddings(engine: Engine, clip: Clip, question: str) -> torch.Tensor:
    """The input embeddings the language model receives for its prefill when ``Engine.answer`` runs."""
    seen: list[torch.Tensor] = []

    def catch(module, args, kwargs):
        if not seen:
            seen.append(kwargs["inputs_embeds"][0].detach().clone())

    handle = engine.model.model.language_model.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        engine.answer(clip, question)
    finally:
        handle.remove()
    return seen[0]


def _check_fed(engine: Engine, clip: Clip, reference_visual: torch.Tensor) -> None:
    fed = _fed_embeddings(engine, clip, QUESTION)
    expected = _expected_embeddings(engine, reference_visual, QUESTION)
    assert fed.shape == expected.shape
    torch.testing.assert_close(fed, expected, rtol=1e-4, atol=1e-5)


# ---- the modes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FACTS))
def test_slowfast_feeds_projected_features_pooled_by_the_slowfast_formula(family_dirs, clip_path, family):
    frames = 12  # more than the 10 slow frames: the linspace positions pick 10 of 12
    engine = _engine(family_dirs[family], frames=frames, mode=ModeSettings("slowfast"))
    clip = sample_frames(clip_path, frames)
    facts = FACTS[family]
    _, projected = _vision(engine, engine.pixels(clip), facts)
    reference = _slowfast_reference(projected, facts.fast)
    assert reference.shape[0] == 10 * facts.side * -(-facts.side // 2) + frames * facts.fast**2
    _check_fed(engine, clip, reference)


@pytest.mark.parametrize(("family", "frames"), [("llava-next-video", 20), ("video-llava", 6), ("llava-onevision", 6)])
def test_pooled_feeds_projected_features_pooled_by_adaptive_avg_pool_3d(family_dirs, clip_path, family, frames):
    # 20 frames: more than one vision chunk (16) and uneven adaptive windows; 6: fewer frames than 16 (repeated).
    engine = _engine(family_dirs[family], frames=frames, mode=ModeSettings("pooled"))
    clip = sample_frames(clip_path, frames)
    facts = FACTS[family]
    _, projected = _vision(engine, engine.pixels(clip), facts)
    _check_fed(engine, clip, _pooled_reference(projected, facts.pool))


@pytest.fixture(scope="module")
def guided(family_dirs, guide_dir, clip_path):
    """An engine with --mode pooled --guide on LLaVA-NeXT-Video, 5 frames (an odd count: a short last window)."""
    engine = _engine(family_dirs["llava-next-video"], frames=5, mode=ModeSettings("pooled", guide=True),
                     guide_model=str(guide_dir))
    clip = sample_frames(clip_path, 5)
    grid, projected = _vision(engine, engine.pixels(clip), FACTS["llava-next-video"])
    return engine, clip, grid, projected


def test_guide_relevance_equals_clips_own_embeddings_of_the_question(guided, guide_dir):
    engine, _, grid, _ = guided
    reference = _relevance_reference(guide_dir, grid, QUESTION)
    ours = engine.guide.relevance(grid, QUESTION)
    assert ours.shape == (5, 24, 24)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-9)
    assert reference.max() > 2 * reference.min()  # the guide tells tokens apart; a uniform relevance would not
    other = _relevance_reference(guide_dir, grid, "What colour is the sky at night?")
    assert (other - reference).abs().max() > 1e-2 * reference.max()


def test_guided_pooling_feeds_relevance_weighted_windows_of_projected_features(guided, guide_dir):
    engine, clip, grid, projected = guided
    relevance = _relevance_reference(guide_dir, grid, QUESTION)
    reference = _guided_reference(projected, relevance)
    assert reference.shape[0] == 3 * 8 * 8
    # The relevance must matter at this tolerance: plain window averages are far from the guided ones.
    plain = _guided_reference(projected, torch.zeros_like(relevance))
    assert (plain - reference).abs().max() > 1e-3
    _check_fed(engine, clip, reference)


# ---- KV-cache reuse ------------------------------------------------------------------------------------------

QUESTIONS = ["What happens in the video?", "Who is in the video?", "Is there a dog?", "Describe the scene."]
CHAT = ["Hello, what happens?", "And then?", "Why?"]


def _full_prefill_logits(engine: Engine, pixels: torch.Tensor, messages: list[dict], facts: Facts) -> torch.Tensor:
    """The model's own forward of the whole prompt from scratch: its own video path, no cache."""
    ids = _prompt_ids(engine.checkpoint.dir, messages)
    video_id = engine.model.config.video_token_index
    at = ids.index(video_id)
    count = pixels.shape[0] * facts.native + facts.suffix
    ids_t = torch.tensor([ids[:at] + [video_id] * count + ids[at + 1:]])
    with torch.no_grad():
        return engine.model(input_ids=ids_t, pixel_values_videos=pixels[None],
                            attention_mask=torch.ones_like(ids_t)).logits[0, -1]


@pytest.mark.parametrize("family", list(FACTS))
def test_independent_questions_first_logits_equal_a_full_prefill(family_dirs, clip_path, family):
    engine = _engine(family_dirs[family], frames=3, max_new_tokens=3)
    clip = sample_frames(clip_path, 3)
    pixels = engine.pixels(clip)
    visual = 3 * FACTS[family].native + FACTS[family].suffix
    conversation = Conversation.open(engine, clip)
    for question in [*QUESTIONS, QUESTIONS[-1]]:  # asked again right away: the cache holds its whole prompt
        turn = conversation.ask(question, keep=False, first_logits=True)
        assert turn.fed_tokens < 20  # the video came from the cache
        full = _full_prefill_logits(engine, pixels, [_user(question, video=True)], FACTS[family])
        assert turn.first_logits.shape == full.shape
        assert (turn.first_logits - full).abs().max().item() <= 1e-4, question
        assert turn.context_tokens < visual + 40  # cropped back: earlier questions are gone


@pytest.mark.parametrize("family", list(FACTS))
def test_chat_turns_first_logits_equal_a_full_prefill_of_the_whole_conversation(family_dirs, clip_path, family):
    engine = _engine(family_dirs[family], frames=3, max_new_tokens=4)
    clip = sample_frames(clip_path, 3)
    pixels = engine.pixels(clip)
    conversation = Conversation.open(engine, clip)
    history: list[dict] = []
    for i, question in enumerate(CHAT):
        turn = conversation.ask(question, keep=True, first_logits=True)
        history.append(_user(question, video=i == 0))
        full = _full_prefill_logits(engine, pixels, history, FACTS[family])
        assert (turn.first_logits - full).abs().max().item() <= 1e-4, question
        if i:  # the video and the earlier questions came from the cache (the last answer may be fed again)
            assert turn.fed_tokens < 60
        history.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})


def test_first_logits_are_only_kept_when_asked(engine_factory, clip_path, monkeypatch):
    engine = engine_factory(frames=2, max_new_tokens=2)
    conversation = Conversation.open(engine, sample_frames(clip_path, 2))
    calls: list[dict] = []
    real = engine.model.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", spy)
    plain = conversation.ask("What happens?", keep=False)
    kept = conversation.ask("What happens?", keep=False, first_logits=True)
    assert plain.first_logits is None and kept.first_logits is not None
    assert not calls[0].get("output_logits") and not calls[0].get("return_dict_in_generate")  # normal turns pay nothing
    assert plain.answer == kept.answer and plain.context_tokens == kept.context_tokens
