"""RoPE length generalisation: factor choice, and that the language model really runs scaled."""

from __future__ import annotations

import pytest
import torch

from vqa_cli.errors import ContextOverflowError
from vqa_cli.model import rope
from vqa_cli.model.checkpoint import Checkpoint
from vqa_cli.settings import ModeSettings, RunSettings


@pytest.mark.parametrize(
    ("tokens", "factor"), [(100, 1.0), (4096, 1.0), (4097, 2.0), (8192, 2.0), (8193, 3.0), (16000, 4.0)]
)
def test_required_factor_is_the_smallest_whole_factor_that_fits(tokens, factor):
    assert rope.required_factor(tokens, 4096) == factor


def test_scaled_parameters_keep_rope_theta_and_do_not_touch_the_original():
    base = {"rope_type": "default", "rope_theta": 10000.0}
    scaled = rope.scaled_rope_parameters(base, 2.0, "linear")
    assert scaled == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    assert base == {"rope_type": "default", "rope_theta": 10000.0}
    assert rope.scaled_rope_parameters(base, 1.0, "linear") == base


def test_32_anyres_frames_need_factor_2_at_a_4k_context(tiny_dir):
    checkpoint = Checkpoint(str(tiny_dir))
    budget = checkpoint.budget(RunSettings(model=str(tiny_dir)), ["What happens?"])
    assert budget.plan.total == 4608 and budget.rope_factor == 2.0
    few = checkpoint.budget(RunSettings(model=str(tiny_dir), frames=8), ["What happens?"])
    assert few.rope_factor == 1.0


def test_overflow_fails_with_the_number_of_frames_that_fit(tiny_dir):
    checkpoint = Checkpoint(str(tiny_dir))
    with pytest.raises(ContextOverflowError) as err:
        checkpoint.budget(RunSettings(model=str(tiny_dir), frames=500), ["q"])
    message = str(err.value)
    fit = int(message.split("at most ")[1].split()[0])
    ok = checkpoint.budget(RunSettings(model=str(tiny_dir), frames=fit), ["q"])
    assert ok.rope_factor <= rope.MAX_FACTOR
    with pytest.raises(ContextOverflowError):
        checkpoint.budget(RunSettings(model=str(tiny_dir), frames=fit + 1), ["q"])


def test_a_forced_factor_too_small_for_the_request_fails(tiny_dir):
    checkpoint = Checkpoint(str(tiny_dir))
    with pytest.raises(ContextOverflowError):
        checkpoint.budget(RunSettings(model=str(tiny_dir), rope_scale=1.0), ["q"])


def _rotary(engine):
    return engine.model.model.language_model.rotary_emb


def test_the_language_model_runs_with_the_scaled_rotary_embedding(engine_factory):
    plain = engine_factory(frames=4)
    scaled = engine_factory(frames=32)  # 4608 visual tokens -> factor 2
    assert plain.rope_factor == 1.0 and scaled.rope_factor == 2.0
    # What the model computes with: inverse frequencies divided by the factor (linear scaling).
    torch.testing.assert_close(_rotary(scaled).inv_freq, _rotary(plain).inv_freq / 2.0)
    # And the positions it feeds attention: cos/sin at position p equal the unscaled ones at p / 2.
    x = torch.zeros(1, 1, 64)
    pos = torch.tensor([[10, 20, 4000]])
    cos_s, _ = _rotary(scaled)(x, pos)
    cos_p, _ = _rotary(plain)(x, pos // 2)
    torch.testing.assert_close(cos_s, cos_p)


def test_dynamic_rope_type_is_passed_to_the_model(engine_factory):
    engine = engine_factory(frames=32, rope_type="dynamic")
    assert engine.model.config.text_config.rope_parameters["rope_type"] == "dynamic"
    assert _rotary(engine).rope_type == "dynamic"


def test_modes_change_the_budget(tiny_dir):
    checkpoint = Checkpoint(str(tiny_dir))
    pooled = checkpoint.budget(RunSettings(model=str(tiny_dir), mode=ModeSettings("pooled")), ["q"])
    assert pooled.plan.total == 2304 and pooled.rope_factor == 1.0
