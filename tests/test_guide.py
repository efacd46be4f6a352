"""PPLLaVA prompt-guided pooling: the window maths, the relevance, and the engine end to end."""

from __future__ import annotations

import json

import pytest
import torch

from vqa_cli.model import modes, pooling
from vqa_cli.settings import ModeSettings


def _grid(t=32, h=24, w=24, d=8):
    return torch.randn(t, h, w, d, generator=torch.Generator().manual_seed(3))


def test_uniform_relevance_equals_plain_average_pooling():
    grid = _grid()
    out = pooling.guided_pool(grid, torch.full((32, 24, 24), 1 / (32 * 576)), (2, 3, 3))
    ref = torch.nn.AvgPool3d((2, 3, 3))(grid.permute(3, 0, 1, 2)[None])[0].permute(1, 2, 3, 0).reshape(-1, 8)
    assert out.shape == (1024, 8)
    torch.testing.assert_close(out, ref)


def test_one_hot_relevance_picks_that_token():
    grid = _grid()
    rel = torch.zeros(32, 24, 24)
    rel[5, 7, 10] = 1.0  # window (2, 2, 3) of the 16x8x8 output
    out = pooling.guided_pool(grid, rel, (2, 3, 3)).reshape(16, 8, 8, 8)
    torch.testing.assert_close(out[2, 2, 3], grid[5, 7, 10])


def test_uneven_sizes_are_padded_without_weight():
    grid = _grid(t=5, h=7, w=7)
    out = pooling.guided_pool(grid, torch.zeros(5, 7, 7), (2, 3, 3))
    assert out.shape == (3 * 3 * 3, 8)
    # The last temporal window holds frame 4 alone: its average is frame 4's window average.
    last = out.reshape(3, 3, 3, 8)[2, 0, 0]
    torch.testing.assert_close(last, grid[4, 0:3, 0:3].reshape(-1, 8).mean(0))


def test_relevance_is_a_softmax_over_all_tokens_of_scaled_cosines():
    visual = torch.randn(2, 3, 3, 4)
    text = torch.randn(4)
    rel = pooling.relevance(visual, text, torch.tensor(2.0))
    cos = torch.nn.functional.cosine_similarity(visual.reshape(-1, 4), text[None], dim=-1)
    torch.testing.assert_close(rel.flatten(), torch.softmax(cos * torch.e**2, 0))


def test_plan_counts_1024_tokens_for_32_frames_at_24x24():
    assert modes.plan_tokens(ModeSettings("pooled", guide=True), 32, (24, 24), 2).total == 1024


def test_guided_pooling_end_to_end(tiny_dir, guide_dir, clip_path, capsys):
    from vqa_cli.cli import main

    with pytest.raises(SystemExit) as code:
        main(["ask", clip_path, "Where is the dog?", "--model", str(tiny_dir), "--mode", "pooled", "--guide",
              "--guide-model", str(guide_dir), "--max-new-tokens", "4", "--json"])
    out, err = capsys.readouterr()
    assert code.value.code == 0, err
    record = json.loads(out)
    assert record["visual_tokens"] == 1024 and record["mode_settings"]["guide_kernel"] == [2, 3, 3]


def test_the_relevance_depends_on_the_prompt(engine_factory, guide_dir, clip_path):
    from vqa_cli.video import sample_frames

    engine = engine_factory(frames=4, mode=ModeSettings("pooled", guide=True), guide_model=str(guide_dir))
    pixels = engine.pixels(sample_frames(clip_path, 4))
    a = engine.aggregate(engine.encode(pixels), engine.settings.mode, "a dog in the park")
    b = engine.aggregate(engine.encode(pixels), engine.settings.mode, "cars at night")
    assert a.shape == b.shape == (2 * 8 * 8, 64)
    assert not torch.allclose(a, b)


def test_a_guide_model_of_another_width_is_refused(tiny_dir, clip_path, tmp_path, capsys):
    from transformers import CLIPConfig, CLIPModel

    from vqa_cli.cli import main

    config = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2},
                        vision_config={"hidden_size": 48, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
                        projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path / "wide")
    clip = clip_path
    with pytest.raises(SystemExit) as code:
        main(["caption", clip, "--model", str(tiny_dir), "--mode", "pooled", "--guide", "--guide-model",
              str(tmp_path / "wide"), "--out", str(tmp_path / "o.jsonl")])
    _, err = capsys.readouterr()
    assert code.value.code == 1 and "vision width 48" in err and "Traceback" not in err
