"""Aggregation modes on random grids against references built from the papers' formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vqa_cli import modes
from vqa_cli.modes import ModeSettings

GRID = (24, 24)


def _grid(t, h=24, w=24, d=8, seed=0):
    return torch.randn(t, h, w, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("mode", "frames", "tokens"), [("slowfast", 50, 3680), ("pooled", 32, 2304),
                                                          ("anyres", 32, 4608)])
def test_token_counts_at_the_24x24_grid(mode, frames, tokens):
    assert modes.default_frames(mode, 32) == frames
    assert modes.plan_tokens(ModeSettings(mode), frames, GRID, 2).total == tokens


def test_slowfast_equals_maxpool1d_slow_and_adaptiveavgpool2d_fast():
    grid = _grid(50)
    out = modes.slowfast(grid, 10, 4)
    slow_idx = torch.linspace(0, 50, 11)[:-1].long()  # 0, 5, ..., 45
    assert slow_idx.tolist() == list(range(0, 50, 5))
    # Reference: 1-D max pool (kernel 2, stride 2) over the 576 row-major tokens of each slow frame.
    tokens = grid[slow_idx].reshape(10, 576, 8).transpose(1, 2)  # [S, D, 576]
    slow_ref = nn.MaxPool1d(2, 2)(tokens).transpose(1, 2).reshape(-1, 8)  # [S*288, D]
    fast_ref = nn.AdaptiveAvgPool2d((4, 4))(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(-1, 8)
    assert out.shape == (3680, 8)
    torch.testing.assert_close(out[:2880], slow_ref)
    torch.testing.assert_close(out[2880:], fast_ref)


def test_pooled_equals_adaptiveavgpool3d():
    grid = _grid(32)
    out = modes.pooled(grid, (16, 12, 12))
    ref = nn.AdaptiveAvgPool3d((16, 12, 12))(grid.permute(3, 0, 1, 2)[None])[0]
    assert out.shape == (2304, 8)
    torch.testing.assert_close(out, ref.permute(1, 2, 3, 0).reshape(-1, 8))


def test_anyres_pooling_equals_avgpool2d_per_frame():
    grid = _grid(3)
    out = modes.spatial_avg_pool(grid, 2)
    ref = nn.AvgPool2d(2, 2)(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, ref)
    assert modes.plan_tokens(ModeSettings("anyres"), 3, GRID, 2).total == out.shape[0] * 144


def test_fewer_frames_than_slow_frames_uses_every_frame_once():
    out = modes.slowfast(_grid(4), 10, 4)
    plan = modes.plan_tokens(ModeSettings("slowfast"), 4, GRID, 2)
    assert plan.pathways[0].frame_positions == (0, 1, 2, 3)
    assert out.shape[0] == plan.total == 4 * 288 + 4 * 16


def test_fewer_frames_than_the_pool_t_repeats_frames():
    grid = _grid(5)
    out = modes.pooled(grid, (16, 12, 12))
    assert out.shape == (2304, 8)
    # Adaptive pooling over time with T < 16: every output step is one whole input frame.
    first = nn.AdaptiveAvgPool2d((12, 12))(grid[0].permute(2, 0, 1)[None])[0].permute(1, 2, 0).reshape(-1, 8)
    torch.testing.assert_close(out[:144], first)


def test_a_single_frame_in_every_mode():
    grid = _grid(1)
    assert modes.slowfast(grid, 10, 4).shape[0] == modes.plan_tokens(ModeSettings("slowfast"), 1, GRID, 2).total
    assert modes.pooled(grid, (16, 12, 12)).shape[0] == 2304


@pytest.mark.parametrize("grid", [(16, 16), (27, 27), (14, 14)])
def test_parameters_derive_from_other_grids_and_plans_match_tensors(grid):
    for name, frames in [("slowfast", 12), ("pooled", 8), ("anyres", 6)]:
        settings = modes.resolve(ModeSettings(name), grid, 2)
        plan = modes.plan_tokens(ModeSettings(name), frames, grid, 2)
        g = _grid(frames, *grid)
        if name == "slowfast":
            out = modes.slowfast(g, settings.slow_frames, settings.fast_grid)
        elif name == "pooled":
            out = modes.pooled(g, settings.pool)
        else:
            out = modes.spatial_avg_pool(g, settings.stride).reshape(-1, 8)
        assert out.shape[0] == plan.total, (name, grid)


def test_overrides_change_the_layout():
    assert modes.plan_tokens(ModeSettings("anyres", stride=1), 2, GRID, 2).total == 2 * 576
    assert modes.plan_tokens(ModeSettings("anyres", stride=4), 2, GRID, 2).total == 2 * 36
    assert modes.plan_tokens(ModeSettings("pooled", pool=(8, 6, 6)), 32, GRID, 2).total == 288
    assert modes.plan_tokens(ModeSettings("slowfast", slow_frames=5, fast_grid=2), 50, GRID, 2).total == 5 * 288 + 200


def test_a_native_path_that_rounds_up_and_appends_a_newline_is_planned():
    plan = modes.plan_tokens(ModeSettings("anyres"), 8, (27, 27), 2, native_ceil=True, suffix_tokens=1)
    assert plan.total == 8 * 14 * 14 + 1
