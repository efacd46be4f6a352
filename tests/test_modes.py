"""Aggregation modes on random grids against references built from the papers' formulas."""

from __future__ import annotations

from types import SimpleNamespace
from typing import get_args

import pytest
import torch
from torch import nn

from vqa_cli.errors import UsageError
from vqa_cli.model import modes, pooling
from vqa_cli.settings import DEFAULT_MODE, ModeName, ModeSettings
from vqa_cli.testing import FAMILIES

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
    out = pooling.slowfast(grid, 10, 4)
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
    out = pooling.pooled(grid, (16, 12, 12))
    ref = nn.AdaptiveAvgPool3d((16, 12, 12))(grid.permute(3, 0, 1, 2)[None])[0]
    assert out.shape == (2304, 8)
    torch.testing.assert_close(out, ref.permute(1, 2, 3, 0).reshape(-1, 8))


def test_anyres_pooling_equals_avgpool2d_per_frame():
    grid = _grid(3)
    out = pooling.spatial_avg_pool(grid, 2)
    ref = nn.AvgPool2d(2, 2)(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, ref)
    assert modes.plan_tokens(ModeSettings("anyres"), 3, GRID, 2).total == out.shape[0] * 144


def test_fewer_frames_than_slow_frames_uses_every_frame_once():
    out = pooling.slowfast(_grid(4), 10, 4)
    plan = modes.plan_tokens(ModeSettings("slowfast"), 4, GRID, 2)
    assert plan.pathways[0].frame_positions == (0, 1, 2, 3)
    assert out.shape[0] == plan.total == 4 * 288 + 4 * 16


def test_fewer_frames_than_the_pool_t_repeats_frames():
    grid = _grid(5)
    out = pooling.pooled(grid, (16, 12, 12))
    assert out.shape == (2304, 8)
    # Adaptive pooling over time with T < 16: every output step is one whole input frame.
    first = nn.AdaptiveAvgPool2d((12, 12))(grid[0].permute(2, 0, 1)[None])[0].permute(1, 2, 0).reshape(-1, 8)
    torch.testing.assert_close(out[:144], first)


def test_a_single_frame_in_every_mode():
    grid = _grid(1)
    assert pooling.slowfast(grid, 10, 4).shape[0] == modes.plan_tokens(ModeSettings("slowfast"), 1, GRID, 2).total
    assert pooling.pooled(grid, (16, 12, 12)).shape[0] == 2304


@pytest.mark.parametrize("grid", [(16, 16), (27, 27), (14, 14)])
def test_parameters_derive_from_other_grids_and_plans_match_tensors(grid):
    for name, frames in [("slowfast", 12), ("pooled", 8), ("anyres", 6)]:
        settings = modes.resolve(ModeSettings(name), grid, 2)
        plan = modes.plan_tokens(ModeSettings(name), frames, grid, 2)
        g = _grid(frames, *grid)
        if name == "slowfast":
            out = pooling.slowfast(g, settings.slow_frames, settings.fast_grid)
        elif name == "pooled":
            out = pooling.pooled(g, settings.pool)
        else:
            out = pooling.spatial_avg_pool(g, settings.stride).reshape(-1, 8)
        assert out.shape[0] == plan.total, (name, grid)


def test_overrides_change_the_layout():
    assert modes.plan_tokens(ModeSettings("anyres", stride=1), 2, GRID, 2).total == 2 * 576
    assert modes.plan_tokens(ModeSettings("anyres", stride=4), 2, GRID, 2).total == 2 * 36
    assert modes.plan_tokens(ModeSettings("pooled", pool=(8, 6, 6)), 32, GRID, 2).total == 288
    assert modes.plan_tokens(ModeSettings("slowfast", slow_frames=5, fast_grid=2), 50, GRID, 2).total == 5 * 288 + 200


def test_a_native_path_that_rounds_up_and_appends_a_newline_is_planned():
    plan = modes.plan_tokens(ModeSettings("anyres"), 8, (27, 27), 2, native_ceil=True, suffix_tokens=1)
    assert plan.total == 8 * 14 * 14 + 1


# ---- slow-frame selection at other frame counts ------------------------------------------------------------


def _reference_slow_positions(num_frames: int, slow: int) -> list[int]:
    """SlowFast-LLaVA's own rule, from apple/ml-slowfast-llava (slowfast_llava/llava/model/llava_arch.py,
    ``LlavaMetaForCausalLM.prepare_slowfast``): ``torch.linspace(0, T, slow + 1)`` (float32), converted with
    ``.to(torch.int32)`` (truncation toward zero: a floor for these non-negative values), then the last index
    popped. The reference has no case for T < slow: the positions then repeat (T=7: 0,0,1,2,2,3,4,4,5,6) and
    some frames become slow frames twice. vqa deliberately takes each frame once instead (docs/modes.md: "With
    fewer frames than slow frames, every frame is a slow frame once"): the same frames, without the repeats.
    """
    positions = torch.linspace(0, num_frames, slow + 1).to(torch.int32).tolist()
    positions.pop()
    return positions


@pytest.mark.parametrize(("frames", "slow"), [(f, s) for f in (32, 11, 13, 64, 10, 16, 50, 99, 100, 257)
                                               for s in (10, 4, 7, 16) if f >= s])
def test_slow_positions_equal_the_reference_linspace(frames, slow):
    expected = _reference_slow_positions(frames, slow)
    assert pooling.slow_positions(frames, slow) == expected
    plan = modes.plan_tokens(ModeSettings("slowfast", slow_frames=slow), frames, GRID, 2)
    assert list(plan.pathways[0].frame_positions) == expected


@pytest.mark.parametrize("frames", [1, 3, 7, 9])
def test_fewer_frames_than_slow_frames_take_the_references_frames_without_repeats(frames):
    reference = _reference_slow_positions(frames, 10)
    assert len(reference) == 10  # the reference repeats frames to make up 10
    assert pooling.slow_positions(frames, 10) == sorted(set(reference)) == list(range(frames))


@pytest.mark.parametrize("frames", [32, 7, 11, 13, 64])
def test_slowfast_tensors_at_other_frame_counts_equal_the_reference_pathways(frames):
    grid = _grid(frames, seed=frames)
    out = pooling.slowfast(grid, 10, 4)
    idx = _reference_slow_positions(frames, 10) if frames >= 10 else list(range(frames))  # vqa's rule below 10
    tokens = grid[idx].reshape(len(idx), 576, 8).transpose(1, 2)  # [S, D, 576], row-major tokens
    slow_ref = nn.MaxPool1d(2, 2)(tokens).transpose(1, 2).reshape(-1, 8)
    fast_ref = nn.AdaptiveAvgPool2d((4, 4))(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(-1, 8)
    assert out.shape[0] == len(idx) * 288 + frames * 16 == modes.plan_tokens(ModeSettings("slowfast"), frames,
                                                                                GRID, 2).total
    torch.testing.assert_close(out[: len(idx) * 288], slow_ref)
    torch.testing.assert_close(out[len(idx) * 288:], fast_ref)


# ---- derived parameters at other grids, pinned to docs/modes.md ("Other grid sizes") and docs/models.md ----------

# grid side: (slow tokens grid, fast grid side, pooled output, guide window,
#             tokens: slowfast at 50 frames, pooled at 32, pooled --guide at 32), written out from the docs' formulas:
# slow s x ceil(s/2); fast round(4s/24) (27: 4.5 -> 4, the 4x4 of docs/models.md); pool (16, round(12s/24) x2);
# guide (2, ceil(s / round(8s/24)) x2).
DERIVED = {
    24: ((24, 12), 4, (16, 12, 12), (2, 3, 3), (3680, 2304, 1024)),
    16: ((16, 8), 3, (16, 8, 8), (2, 4, 4), (1730, 1024, 256)),  # Video-LLaVA
    27: ((27, 14), 4, (16, 14, 14), (2, 3, 3), (4580, 3136, 1296)),  # LLaVA-OneVision
    14: ((14, 7), 2, (16, 7, 7), (2, 3, 3), (1180, 784, 400)),
}


@pytest.mark.parametrize("side", list(DERIVED))
def test_derived_parameters_are_the_documented_numbers(side):
    slow_grid, fast, pool, kernel, (sf_tokens, pooled_tokens, guide_tokens) = DERIVED[side]
    grid = (side, side)
    sf = modes.resolve(ModeSettings("slowfast"), grid, 2)
    assert (sf.slow_frames, sf.fast_grid) == (10, fast)
    assert modes.resolve(ModeSettings("pooled"), grid, 2).pool == pool
    assert modes.resolve(ModeSettings("pooled", guide=True), grid, 2).guide_kernel == kernel

    plan = modes.plan_tokens(ModeSettings("slowfast"), 50, grid, 2)
    assert plan.pathways[0].grid == slow_grid and plan.pathways[1].grid == (fast, fast)
    assert plan.total == sf_tokens
    assert modes.plan_tokens(ModeSettings("pooled"), 32, grid, 2).total == pooled_tokens
    assert modes.plan_tokens(ModeSettings("pooled", guide=True), 32, grid, 2).total == guide_tokens

    # The tensor paths produce those counts too.
    assert pooling.slowfast(_grid(50, side, side, d=2), 10, fast).shape == (sf_tokens, 2)
    g32 = _grid(32, side, side, d=2)
    assert pooling.pooled(g32, pool).shape == (pooled_tokens, 2)
    assert pooling.guided_pool(g32, torch.zeros(32, side, side), kernel).shape == (guide_tokens, 2)


# ---- the registry: every mode plans exactly what it produces --------------------------------------------------

# Settings each registered mode is checked with (its defaults always; a new mode needs no entry to be checked).
VARIANTS = {
    "anyres": [ModeSettings("anyres", stride=1), ModeSettings("anyres", stride=4)],
    "slowfast": [ModeSettings("slowfast", slow_frames=3, fast_grid=2), ModeSettings("slowfast", fast_grid=30)],
    "pooled": [ModeSettings("pooled", guide=True), ModeSettings("pooled", pool=(5, 3, 2)),
               ModeSettings("pooled", guide=True, guide_kernel=(3, 4, 5))],
}


class _Projector(nn.Module):
    """Stands in for the LLaVA projector (``FamilyAdapter.project`` reads ``linear_1``'s dtype)."""

    def __init__(self, vision: int, text: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision, text)

    def forward(self, x):
        return self.linear_1(x)


class _Guide:
    def relevance(self, grid, prompt):
        return torch.rand(grid.shape[:3], generator=torch.Generator().manual_seed(len(prompt)))


def test_the_registry_holds_one_mode_per_name():
    assert tuple(m.name for m in modes.REGISTRY) == get_args(ModeName)
    for name in get_args(ModeName):
        assert modes.mode_for(name).name == name
    assert DEFAULT_MODE in get_args(ModeName)


@pytest.mark.parametrize("call", [
    lambda: modes.mode_for("fastslow"),
    lambda: modes.plan(ModeSettings("fastslow"), 8, modes.REFERENCE_GEOMETRY),
    lambda: modes.plan_tokens(ModeSettings("fastslow"), 8, GRID, 2),
    lambda: modes.resolve(ModeSettings("fastslow"), GRID, 2),
    lambda: modes.default_frames("fastslow", 32),
])
def test_an_unknown_mode_is_refused(call):
    with pytest.raises(UsageError, match="unknown mode 'fastslow'"):
        call()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_registered_mode_plans_the_tokens_its_apply_produces(family, family_dirs):
    from vqa_cli.model.families.base import FrameFeatures
    from vqa_cli.model.families.registry import adapter_for
    from vqa_cli.model.loading import read_config

    adapter = adapter_for(read_config(family_dirs[family]))
    g = adapter.geometry()
    torch.manual_seed(0)
    model = SimpleNamespace(model=SimpleNamespace(multi_modal_projector=_Projector(g.vision_hidden, 6),
                                                  image_newline=torch.randn(6)))
    for mode in modes.REGISTRY:
        for settings in [ModeSettings(mode.name), *VARIANTS.get(mode.name, [])]:
            resolved = mode.resolve(settings, g)
            assert resolved == mode.resolve(resolved, g)  # resolving twice changes nothing
            for frames in (1, 5, 12):
                grid = _grid(frames, *g.grid, d=g.vision_hidden, seed=frames)
                prefix = torch.randn(frames, g.frame_prefix_tokens, g.vision_hidden) if g.frame_prefix_tokens else None
                with torch.no_grad():
                    out = mode.apply(resolved, FrameFeatures(grid, prefix), adapter=adapter, model=model,
                                     guide=_Guide(), prompt_text="where is the dog?")
                plan = modes.plan(settings, frames, g)
                assert out.shape == (plan.total, 6), (family, settings, frames)
                assert plan == mode.plan(settings, frames, g) == modes.plan_tokens(
                    settings, frames, g.grid, g.native_stride, native_ceil=g.native_ceil,
                    suffix_tokens=g.video_suffix_tokens, frame_prefix_tokens=g.frame_prefix_tokens)
                assert plan.mode == mode.name and plan.frames == frames


def test_guided_pooling_without_a_guide_is_refused():
    mode = modes.mode_for("pooled")
    settings = mode.resolve(ModeSettings("pooled", guide=True), modes.REFERENCE_GEOMETRY)
    adapter = SimpleNamespace(project=lambda model, x: x)
    with pytest.raises(UsageError, match="needs an engine loaded with --guide"):
        mode.apply(settings, SimpleNamespace(grid=_grid(2)), adapter=adapter, model=None)
