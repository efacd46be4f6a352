"""Qwen-VL geometry against transformers' own Qwen processors and model, Pillow, and formulas written here.

Oracles: transformers' ``smart_resize`` functions, ``Qwen3VLVideoProcessor.sample_frames``/``patchify`` and
``Qwen3VLProcessor.replace_video_token``/``_calculate_timestamps`` (called unbound: they read only the settings
passed in, given here as a plain namespace), ``get_rope_index`` of a tiny random ``Qwen3VLModel`` built from a
config, Pillow's BICUBIC, PyTorch's adaptive pooling, and qwen-vl-utils' ``smart_nframes`` rule
(QwenLM/Qwen3-VL, qwen-vl-utils/src/qwen_vl_utils/vision_process.py) written out below.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqa_cli.model.families import qwen_geometry as qg

PUBLISHED = qg.QWEN3_VL.from_dict({"size": {"longest_edge": 25165824, "shortest_edge": 4096}})
SPECIAL = {"<|vision_start|>": 62, "<|video_pad|>": 61, "<|vision_end|>": 63}
TOKENS = qg.VisionTokens(start=62, pad=61, end=63)


def _encode(text: str) -> list[int]:
    """A character tokenizer that knows the three special tokens (ids below 64, characters from 1000)."""
    out: list[int] = []
    for piece in re.split("(" + "|".join(map(re.escape, SPECIAL)) + ")", text):
        out += [SPECIAL[piece]] if piece in SPECIAL else [1000 + ord(c) for c in piece]
    return out


# ---- processor settings -----------------------------------------------------------------------


def test_defaults_are_the_processors_class_defaults():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor as P
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    c = qg.QWEN3_VL
    assert (c.min_pixels, c.max_pixels) == (P.size["shortest_edge"], P.size["longest_edge"])
    assert (c.patch, c.merge, c.temporal, c.fps, c.min_frames, c.max_frames) == (
        P.patch_size, P.merge_size, P.temporal_patch_size, P.fps, P.min_frames, P.max_frames)
    assert (list(c.mean), list(c.std), c.clip_budget) == (P.image_mean, P.image_std, True)
    # Qwen2-VL's video processor (Qwen2.5-VL's) imports torchvision; its class defaults as its source states them
    d = qg.QWEN2_5_VL
    assert (d.min_pixels, d.max_pixels, d.patch, d.merge, d.temporal) == (128 * 28 * 28, 28 * 28 * 768, 14, 2, 2)
    assert (list(d.mean), list(d.std), d.clip_budget, d.factor) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, False, 28)


def test_from_dict_reads_size_and_the_older_pixel_keys_first():
    cfg = qg.QWEN3_VL.from_dict({"size": {"longest_edge": 1000000, "shortest_edge": 2000}, "patch_size": 14,
                                 "image_mean": [0.1, 0.2, 0.3], "fps": 1, "max_frames": 64})
    assert (cfg.min_pixels, cfg.max_pixels, cfg.patch, cfg.factor) == (2000, 1000000, 14, 28)
    assert (cfg.mean, cfg.std, cfg.fps, cfg.max_frames, cfg.min_frames) == ((0.1, 0.2, 0.3), (0.5,) * 3, 1, 64, 4)
    # Qwen2VLVideoProcessor.__init__: min_pixels / max_pixels, when given, replace size's edges
    old = qg.QWEN2_5_VL.from_dict({"min_pixels": 3136, "max_pixels": 12845056,
                                   "size": {"longest_edge": 5, "shortest_edge": 7}})
    assert (old.min_pixels, old.max_pixels, old.clip_budget) == (3136, 12845056, False)


# ---- frame count ------------------------------------------------------------------------------


def _smart_nframes(total: int, video_fps: float, fps: float, min_frames: int, max_frames: int) -> int:
    """qwen-vl-utils' rule: min rounded up, min(max, total) down to 2, clamp, floor to 2."""
    lo = math.ceil(min_frames / 2) * 2
    hi = math.floor(min(max_frames, total) / 2) * 2
    return math.floor(min(min(max(total / video_fps * fps, lo), hi), total) / 2) * 2


CLIPS = [(300, 30.0), (61, 24.0), (7, 25.0), (3, 25.0), (100000, 29.97), (125, 25.0), (37, 12.5)]


@pytest.mark.parametrize(("total", "video_fps"), CLIPS)
@pytest.mark.parametrize(("fps", "min_frames", "max_frames"), [(2.0, 4, 768), (1.0, 5, 33), (0.5, 4, 16)])
def test_frame_count_is_qwen_vl_utils_rule(total, video_fps, fps, min_frames, max_frames):
    cfg = qg.QWEN3_VL.from_dict({"min_frames": min_frames, "max_frames": max_frames})
    assert qg.frame_count(total / video_fps, total, cfg, fps=fps) == _smart_nframes(
        total, video_fps, fps, min_frames, max_frames)


@pytest.mark.parametrize(("total", "video_fps"), CLIPS)
def test_frame_count_is_qwen3_processors_count_floored_to_the_temporal_patch(total, video_fps):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    settings = SimpleNamespace(fps=2, min_frames=4, max_frames=768)
    theirs = len(Qwen3VLVideoProcessor.sample_frames(settings, VideoMetadata(total_num_frames=total, fps=video_fps)))
    assert qg.frame_count(total / video_fps, total, qg.QWEN3_VL) == theirs - theirs % 2


def test_a_one_frame_clip_keeps_its_frame_and_patchify_repeats_it():
    assert qg.frame_count(0.04, 1, qg.QWEN3_VL) == 1
    frame = torch.randn(1, 3, 32, 32)
    pv, grid = qg.patchify(frame, qg.QWEN3_VL)
    two, _ = qg.patchify(frame.repeat(2, 1, 1, 1), qg.QWEN3_VL)
    assert grid == (1, 2, 2) and torch.equal(pv, two)
    with pytest.raises(ValueError):
        qg.frame_count(1.0, 10, qg.QWEN3_VL, fps=0)


# ---- size -------------------------------------------------------------------------------------

SIZES = [(8, 240, 320), (64, 448, 448), (768, 1080, 1920), (4, 20, 700), (30, 360, 640), (2, 2000, 17), (16, 720, 1280)]
BUDGETS = [(4096, 25165824), (128 * 32 * 32, 32 * 32 * 768), (4096, 64 * 32 * 32), (3 * 10 ** 6, 4 * 10 ** 6)]


@pytest.mark.parametrize(("frames", "height", "width"), SIZES)
@pytest.mark.parametrize(("lo", "hi"), BUDGETS)
def test_clip_size_is_qwen3s_smart_resize(frames, height, width, lo, hi):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    ours = qg.clip_size(frames, height, width, factor=32, temporal=2, min_pixels=lo, max_pixels=hi)
    assert ours == smart_resize(frames, height, width, temporal_factor=2, factor=32, min_pixels=lo, max_pixels=hi)
    cfg = qg.QWEN3_VL.from_dict({"size": {"shortest_edge": lo, "longest_edge": hi}})
    assert qg.target_size(frames, height, width, cfg) == ours
    # one frame (the processor refuses it before padding): budgeted as the two frames the tower sees
    assert qg.clip_size(1, height, width, factor=32, temporal=2, min_pixels=lo, max_pixels=hi) == smart_resize(
        2, height, width, temporal_factor=2, factor=32, min_pixels=lo, max_pixels=hi)


@pytest.mark.parametrize(("frames", "height", "width"), SIZES)
@pytest.mark.parametrize(("lo", "hi"), [(128 * 28 * 28, 768 * 28 * 28), (3136, 12845056), (56 * 56, 64 * 28 * 28)])
def test_frame_size_is_qwen2s_smart_resize(frames, height, width, lo, hi):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    cfg = qg.QWEN2_5_VL.from_dict({"size": {"shortest_edge": lo, "longest_edge": hi}})
    expected = smart_resize(height, width, factor=28, min_pixels=lo, max_pixels=hi)
    assert qg.frame_size(height, width, factor=28, min_pixels=lo, max_pixels=hi) == expected
    assert qg.target_size(frames, height, width, cfg) == expected  # the frame count plays no part


def test_elongated_frames_are_refused_like_the_processors():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    with pytest.raises(ValueError):
        smart_resize(4, 32, 6500, temporal_factor=2, factor=32, min_pixels=4096, max_pixels=25165824)
    with pytest.raises(ValueError):
        qg.clip_size(4, 32, 6500, factor=32, temporal=2, min_pixels=4096, max_pixels=25165824)
    with pytest.raises(ValueError):
        qg.frame_size(30, 6500, factor=28, min_pixels=3136, max_pixels=12845056)


@pytest.mark.parametrize(("frames", "height", "width", "grid", "tokens"), [
    (8, 240, 320, (4, 16, 20), 320), (64, 448, 448, (32, 28, 28), 6272), (16, 720, 1280, (8, 44, 80), 7040)])
def test_clip_grid_and_tokens_of_the_published_budget(frames, height, width, grid, tokens):
    """REFERENCES section 13: tokens = grid_t * h * w / 1024 at the published budget (4096..25165824 pixels)."""
    assert qg.clip_grid(frames, height, width, PUBLISHED) == grid
    assert qg.visual_tokens(qg.anyres_blocks(grid, [0.0] * grid[0], 2)) == tokens


# ---- pixels -----------------------------------------------------------------------------------


def _frames(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """uint8 [T, H, W, 3]: smooth gradients plus noise, in the decoder's layout."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([x, y, (x + y) / 2], -1) * 200
    return (base + torch.rand(t, h, w, 3, generator=g) * 55).to(torch.uint8)


@pytest.mark.parametrize(("h", "w", "size"), [(240, 320, (224, 320)), (360, 640, (192, 352)), (45, 70, (64, 96)),
                                               (100, 130, (64, 96))])
def test_resize_is_pillows_bicubic_within_a_level_or_two(h, w, size):
    from PIL import Image

    frames = _frames(2, h, w)
    ours = qg.resize_frames(frames, size)
    assert ours.dtype == torch.uint8 and tuple(ours.shape) == (2, 3, *size)
    pil = np.stack([np.asarray(Image.fromarray(f.numpy()).resize(size[::-1], Image.BICUBIC)) for f in frames])
    diff = (ours.permute(0, 2, 3, 1).int() - torch.from_numpy(pil).int()).abs()
    assert diff.max() <= 2 and diff.float().mean() < 0.02


def test_resize_keeps_frames_of_the_target_size_and_refuses_other_input():
    frames = _frames(1, 64, 96)
    assert torch.equal(qg.resize_frames(frames, (64, 96)), frames.permute(0, 3, 1, 2))
    with pytest.raises(ValueError):
        qg.resize_frames(frames.float(), (32, 32))
    with pytest.raises(ValueError):
        qg.resize_frames(frames.permute(0, 3, 1, 2), (32, 32))


@pytest.mark.parametrize("cfg", [qg.QWEN3_VL, qg.QWEN2_5_VL], ids=["qwen3", "qwen2.5"])
def test_normalize_is_rescale_then_mean_and_std(cfg):
    frames = _frames(2, 32, 64).permute(0, 3, 1, 2)
    ours = qg.normalize(frames, cfg)
    mean, std = torch.tensor(cfg.mean, dtype=torch.float64), torch.tensor(cfg.std, dtype=torch.float64)
    ref = (frames.double() / 255 - mean[:, None, None]) / std[:, None, None]
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=0)


def test_preprocess_resizes_to_the_clip_budget():
    cfg = qg.QWEN3_VL.from_dict({"size": {"shortest_edge": 4096, "longest_edge": 4 * 64 * 96}})
    out = qg.preprocess(_frames(4, 120, 180), cfg)
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    assert tuple(out.shape) == (4, 3, *smart_resize(4, 120, 180, 2, 32, 4096, 4 * 64 * 96))


# ---- patches ----------------------------------------------------------------------------------


def test_patchify_is_the_qwen3_processors_layout():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    frames = torch.randn(5, 3, 64, 96)  # odd: the last frame is repeated
    pv, grid = qg.patchify(frames, qg.QWEN3_VL)
    theirs, *their_grid = Qwen3VLVideoProcessor.patchify(None, frames[None], 16, 2, 2)
    assert grid == tuple(their_grid) == (3, 4, 6)
    assert torch.equal(pv, theirs[0])


def test_patchify_rows_follow_the_merge_blocks():
    """Qwen2.5 geometry (patch 14) against the layout spelled out: row (t, by, bx, iy, ix), column (c, f, y, x)."""
    cfg, p, m, tp = qg.QWEN2_5_VL, 14, 2, 2
    frames = torch.randn(4, 3, 56, 84)
    pv, (gt, gh, gw) = qg.patchify(frames, cfg)
    assert (gt, gh, gw) == (2, 4, 6) and tuple(pv.shape) == (48, 3 * 2 * 14 * 14)
    row = 0
    for t in range(gt):
        for by in range(gh // m):
            for bx in range(gw // m):
                for iy in range(m):
                    for ix in range(m):
                        y0, x0 = (by * m + iy) * p, (bx * m + ix) * p
                        patch = frames[t * tp:(t + 1) * tp, :, y0:y0 + p, x0:x0 + p]  # [f, c, y, x]
                        assert torch.equal(pv[row], patch.permute(1, 0, 2, 3).reshape(-1))
                        row += 1
    with pytest.raises(ValueError):
        qg.patchify(torch.randn(2, 3, 56, 70), cfg)


# ---- prompt -----------------------------------------------------------------------------------


@pytest.mark.parametrize("indices", [[0, 5, 10, 20, 30, 49], [0, 7, 14, 21, 28], [3]])
def test_group_times_are_the_processors_timestamps(indices):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    fps = 12.5
    expected = Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
    assert qg.group_times([i / fps for i in indices], 2) == expected


def _processor_prompt(grid: tuple[int, int, int], indices: list[int], fps: float, text: str) -> str:
    """Qwen3VLProcessor's text: the template's wrapper collapsed to a bare pad, then ``replace_video_token``."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    start, pad, end = SPECIAL
    processor = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
                                vision_start_token=start, video_token=pad, vision_end_token=end,
                                _calculate_timestamps=lambda *a: Qwen3VLProcessor._calculate_timestamps(None, *a))
    inputs = {"video_grid_thw": torch.tensor([grid]),
              "video_metadata": [VideoMetadata(total_num_frames=100, fps=fps, frames_indices=list(indices))]}
    return text.replace(start + pad + end, pad).replace(pad, Qwen3VLProcessor.replace_video_token(
        processor, inputs, 0))


@pytest.mark.parametrize("wrapped", [True, False])
def test_expand_video_is_the_processors_prompt(wrapped):
    indices, fps, grid = [0, 5, 10, 20, 30, 49], 10.0, (3, 4, 6)
    video = "<|vision_start|><|video_pad|><|vision_end|>" if wrapped else "<|video_pad|>"
    text = f"<|im_start|>user\n{video}What happens?<|im_end|>"
    times = qg.group_times([i / fps for i in indices], 2)
    ids, types = qg.expand_video(_encode(text), qg.anyres_blocks(grid, times, 2), TOKENS, _encode)
    assert ids == _encode(_processor_prompt(grid, indices, fps, text))
    assert types == [2 if i == TOKENS.pad else 0 for i in ids] and types.count(2) == 3 * 2 * 3


@pytest.mark.parametrize("text", ["no video", "<|video_pad|> and <|video_pad|>"])
def test_expand_video_wants_exactly_one_placeholder(text):
    with pytest.raises(ValueError):
        qg.expand_video(_encode(text), [], TOKENS, _encode)


# ---- modes: blocks, token counts and positions ------------------------------------------------


@dataclass(frozen=True)
class _Pathway:  # the two fields of a mode's pathway that the blocks read
    frame_positions: tuple[int, ...]
    grid: tuple[int, ...]


@pytest.mark.parametrize(("n", "out"), [(7, 3), (8, 4), (5, 5), (3, 5), (16, 6)])
def test_windows_and_times_are_adaptive_pooling(n, out):
    members = F.adaptive_avg_pool1d(torch.eye(n)[None], out)[0]  # [n, out]: input i's weight in window j
    windows = qg.adaptive_windows(n, out)
    assert windows == [tuple(torch.nonzero(members[:, j]).flatten().tolist()) for j in range(out)]
    times = [0.3 + 0.7 * i for i in range(n)]
    blocks = qg.pathway_blocks([_Pathway(tuple(range(n)), (out, 2, 3))], times)
    time_grid = torch.tensor(times, dtype=torch.float64)[:, None, None].expand(n, 4, 6)
    pooled = F.adaptive_avg_pool3d(time_grid[None, None], (out, 2, 3))[0, 0]  # every token: its window's time
    assert [b.time for b in blocks] == pytest.approx(pooled[:, 0, 0].tolist(), abs=1e-12)
    assert [(b.h, b.w) for b in blocks] == [(2, 3)] * out and qg.visual_tokens(blocks) == pooled.numel()


def test_pooled_grid_and_count_follow_the_pooling_op():
    merged = torch.randn(5, 16, 7, 9)  # [groups, D, h, w]
    k = 2
    out = F.adaptive_avg_pool2d(merged, qg.pooled_hw(7, 9, k))
    reference = F.avg_pool2d(merged, k, ceil_mode=True)  # partial windows kept: the same grid
    assert out.shape == reference.shape
    blocks = qg.pooled_blocks((7, 9), [float(t) for t in range(5)], k)
    assert qg.visual_tokens(blocks) == out.shape[0] * out.shape[2] * out.shape[3] == 5 * 4 * 5


def test_slowfast_blocks_are_the_pathways_in_prompt_order():
    times = [0.5 + g for g in range(6)]
    slow = [0, 3]
    blocks = qg.slowfast_blocks(times, slow, (4, 6), (2, 2))
    assert blocks == qg.pathway_blocks([_Pathway((0, 3), (4, 6)), _Pathway(tuple(range(6)), (2, 2))], times)
    assert [(b.h, b.w, b.time, b.groups) for b in blocks[:3]] == [(4, 6, 0.5, (0,)), (4, 6, 3.5, (3,)),
                                                                   (2, 2, 0.5, (0,))]
    assert qg.visual_tokens(blocks) == 2 * 24 + 6 * 4
    with pytest.raises(ValueError):
        qg.pathway_blocks([_Pathway((), (5,))], times)


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny random Qwen3VLModel from a config (no download): only its ``get_rope_index`` is used."""
    from transformers import Qwen3VLConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=1, out_hidden_size=16,
                  deepstack_visual_indexes=[0], num_position_embeddings=16)
    text = dict(vocab_size=64, hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1,
                num_key_value_heads=1, head_dim=16,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2]})
    config = Qwen3VLConfig(vision_config=vision, text_config=text, image_token_id=60, video_token_id=TOKENS.pad,
                           vision_start_token_id=TOKENS.start, vision_end_token_id=TOKENS.end)
    return Qwen3VLModel(config).eval()


def _positions_by_formula(types: list[int], blocks: list[qg.Block]) -> torch.Tensor:
    """(3, L): text counts on along all three axes; a block of h x w tokens from s gets T = s, H = s + row,
    W = s + column, and what follows starts at s + max(h, w)."""
    rows, s, i, queue = [], 0, 0, iter(blocks)
    while i < len(types):
        if types[i] == 0:
            rows.append((s, s, s))
            s, i = s + 1, i + 1
            continue
        b = next(queue)
        rows += [(s, s + r, s + c) for r in range(b.h) for c in range(b.w)]
        s, i = s + max(b.h, b.w), i + b.tokens
    return torch.tensor(rows).T


def _model_positions(model, ids: list[int], types: list[int], rows: list[tuple[int, int, int]]) -> torch.Tensor:
    pos, _ = model.get_rope_index(torch.tensor([ids]), torch.tensor([types]), video_grid_thw=torch.tensor(rows))
    return pos[:, 0]


def _prompt(blocks: list[qg.Block]) -> tuple[list[int], list[int]]:
    text = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Describe it.<|im_end|>"
    return qg.expand_video(_encode(text), blocks, TOKENS, _encode)


def test_anyres_positions_are_the_models_own(tiny_model):
    grid, times = (3, 4, 6), [0.25, 1.25, 2.0]
    blocks = qg.anyres_blocks(grid, times, 2)
    ids, types = _prompt(blocks)
    ours = _model_positions(tiny_model, ids, types, qg.rope_rows(blocks, 2))
    assert torch.equal(ours, _model_positions(tiny_model, ids, types, [grid]))  # the processor's one row
    assert torch.equal(ours, _positions_by_formula(types, blocks))


@pytest.mark.parametrize("mode", ["pooled", "pooled3d", "slowfast"])
def test_pooled_and_slowfast_positions(tiny_model, mode):
    merged, times = (5, 7), [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5]
    if mode == "pooled":
        blocks = qg.pooled_blocks(merged, times, 2)
    elif mode == "pooled3d":
        blocks = qg.pathway_blocks([_Pathway(tuple(range(7)), (3, 2, 3))], times)
    else:
        blocks = qg.slowfast_blocks(times, [0, 3, 5], merged, qg.pooled_hw(*merged, 3))
    ids, types = _prompt(blocks)
    assert types.count(2) == qg.visual_tokens(blocks)
    assert ids.count(TOKENS.start) == len(blocks)
    ours = _model_positions(tiny_model, ids, types, qg.rope_rows(blocks, 2))
    assert torch.equal(ours, _positions_by_formula(types, blocks))


# ---- Qwen2.5-VL: one untimed run per pathway, time in the positions ---------------------------


@pytest.fixture(scope="module")
def tiny_qwen2_5():
    """A tiny random Qwen2_5_VLModel from a config: only its ``get_rope_index`` is used (published
    ``tokens_per_second`` 2)."""
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=1, out_hidden_size=16,
                  tokens_per_second=2, fullatt_block_indexes=[0])
    text = dict(vocab_size=64, hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1,
                num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                        "mrope_section": [4, 2, 2]})
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=60, video_token_id=TOKENS.pad,
                              vision_start_token_id=TOKENS.start, vision_end_token_id=TOKENS.end)
    return Qwen2_5_VLModel(config).eval()


def _qwen2_5_positions_by_formula(types: list[int], runs: list[tuple[int, int, list[float]]]) -> torch.Tensor:
    """(3, L) for runs of (h, w, step times): text counts on along all three axes; step k of a run starting at s
    gets T = s + int(k x tokens per second (2) x the mean interval between the run's steps), H = s + row,
    W = s + column; what follows starts at s + max(h, w) (the installed model's rule)."""
    rows, s, i, queue = [], 0, 0, iter(runs)
    while i < len(types):
        if types[i] == 0:
            rows.append((s, s, s))
            s, i = s + 1, i + 1
            continue
        h, w, times = next(queue)
        step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 0.0
        rows += [(s + int(k * 2 * step), s + r, s + c) for k in range(len(times)) for r in range(h)
                 for c in range(w)]
        s, i = s + max(h, w), i + len(times) * h * w
    return torch.tensor(rows).T


@pytest.mark.parametrize("mode", ["anyres", "pooled", "pooled3d", "slowfast"])
def test_qwen2_5_runs_are_one_per_pathway_with_the_mean_real_interval(tiny_qwen2_5, mode):
    """The runs' tokens, grid rows and intervals, written out from the mode's layout; the positions the model's own
    ``get_rope_index`` gives them equal the formula (uneven times: the interval is their mean step)."""
    merged, times = (5, 7), [0.25, 1.0, 2.5, 3.0, 4.75, 5.5, 7.0]
    layout = {"anyres": [_Pathway(tuple(range(7)), merged)],
              "pooled": [_Pathway(tuple(range(7)), qg.pooled_hw(*merged, 2))],
              "pooled3d": [_Pathway(tuple(range(7)), (3, 2, 3))],
              "slowfast": [_Pathway((0, 3, 5), merged), _Pathway(tuple(range(7)), qg.pooled_hw(*merged, 3))]}[mode]
    windows = [[0, 1, 2], [2, 3, 4], [4, 5, 6]]  # adaptive pooling of 7 steps to 3
    expected = {"anyres": [(5, 7, times)], "pooled": [(3, 4, times)],
                "pooled3d": [(2, 3, [sum(times[g] for g in win) / len(win) for win in windows])],
                "slowfast": [(5, 7, [times[0], times[3], times[5]]), (2, 3, times)]}[mode]
    runs = qg.pathway_runs(layout, times)
    assert [(r.blocks[0].h, r.blocks[0].w, [b.time for b in r.blocks]) for r in runs] == [
        (h, w, pytest.approx(t)) for h, w, t in expected]
    assert [r.rope_row(2) for r in runs] == [(len(t), 2 * h, 2 * w) for h, w, t in expected]
    assert [r.interval(9.0) for r in runs] == pytest.approx([(t[-1] - t[0]) / (len(t) - 1) for _, _, t in expected])
    text = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Describe it.<|im_end|>"
    ids, types = qg.expand_video(_encode(text), runs, TOKENS, lambda stamp: [])  # Qwen2.5: no timestamps
    assert len(ids) == len(_encode(text)) - 3 + sum(2 + r.tokens for r in runs)  # start + pads + end per run
    assert types.count(2) == qg.visual_tokens(runs) == sum(len(t) * h * w for h, w, t in expected)
    pos, _ = tiny_qwen2_5.get_rope_index(torch.tensor([ids]), torch.tensor([types]),
                                         video_grid_thw=torch.tensor([r.rope_row(2) for r in runs]),
                                         second_per_grid_ts=torch.tensor([r.interval(9.0) for r in runs]))
    assert torch.equal(pos[:, 0], _qwen2_5_positions_by_formula(types, expected))


def test_a_run_needs_blocks_of_one_size():
    with pytest.raises(ValueError, match="one size"):
        qg.Run((qg.Block(2, 3, 0.0, (0,)), qg.Block(3, 2, 1.0, (1,))))
    assert qg.Run((qg.Block(2, 3, 0.5, (0,)),)).interval(1.0) == 1.0
