"""The qwen-vl family (Qwen3-VL dense and MoE) end to end on tiny checkpoints at the real video geometry.

Oracles: the model's own forward from pixels (transformers' ``model(input_ids, pixel_values_videos, video_grid_thw,
mm_token_type_ids)``, the pixels patchified by transformers' own video processor), a full sequential PyAV decode
for the presentation times, and the M-RoPE position formula written out here.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.clips import make_clip, pyav_decode_all, vfr_clip
from vqa_cli.model.generate import generate
from vqa_cli.model.session import open_model
from vqa_cli.settings import ModeSettings, RunSettings

QUESTION = "What happens in the video?"
SIZE = (96, 64)  # width, height: multiples of 32 within the budget, so the clip keeps its size: 2 x 3 tokens a group
# A variable frame rate (at a nominal 60 fps): 2 fps sampling picks 7 frames, an odd count (the last is repeated).
VFR_TIMES = [0.0, 0.12, 0.2, 0.61, 0.9, 1.0, 1.33, 1.7, 2.2, 2.25, 2.3, 2.87, 3.1, 3.44, 3.6]


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory) -> dict[str, str]:
    from vqa_cli.testing import QWEN_RECIPES, tiny_checkpoint

    root = tmp_path_factory.mktemp("qwen")
    return {r: str(tiny_checkpoint(root / r, family=r)) for r in QWEN_RECIPES}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    """3 s at 10 fps: 2 fps sampling picks 6 frames, 3 temporal groups."""
    return make_clip(str(tmp_path_factory.mktemp("qclip") / "clip.mp4"), 30, fps=10.0, size=SIZE)


@pytest.fixture(scope="module")
def vfr(tmp_path_factory) -> str:
    return vfr_clip(tmp_path_factory.mktemp("qvfr") / "vfr.mkv", VFR_TIMES, fps=60.0, size=SIZE)


_ENGINES: dict[str, object] = {}


def engine_for(model_dir: str):
    if model_dir not in _ENGINES:
        settings = RunSettings(model=model_dir, dtype="float32", max_new_tokens=4)
        _ENGINES[model_dir] = open_model(settings, [QUESTION]).engine
    return _ENGINES[model_dir]


def vqa_inputs(engine, path: str):
    """vqa's own path: decode at the family's rate, pixels, tower, tokens, prompt inputs."""
    prepared = engine.prepare_clip(path, engine.checkpoint.frames_for(engine.settings))
    features = engine.visual_tokens(prepared.clip, QUESTION)
    ids, inputs = engine.prompt_inputs(QUESTION, prepared.clip, features)
    return prepared, ids, inputs


@pytest.mark.parametrize("recipe", ["qwen3-vl", "qwen3-vl-moe"])
def test_logits_equal_the_models_own_forward_from_pixels(qwen_dirs, clip, recipe):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    engine = engine_for(qwen_dirs[recipe])
    prepared, ids, inputs = vqa_inputs(engine, clip)
    assert prepared.pixels.shape == (6, 3, SIZE[1], SIZE[0])
    gen = generate(engine.model, engine.checkpoint.tokenizer, ids, inputs, max_new_tokens=1, logits=True)
    # The reference: transformers' own patch layout of the same pixels, its own positions, tower and DeepStack.
    values, *grid = Qwen3VLVideoProcessor.patchify(None, prepared.pixels[None], 16, 2, 2)
    types = (ids == engine.model.config.video_token_id).long() * 2
    with torch.inference_mode():
        engine.model.model.rope_deltas = None
        ref = engine.model(input_ids=ids, pixel_values_videos=values[0], video_grid_thw=torch.tensor([grid]),
                           mm_token_type_ids=types).logits[0, -1]
    assert int(types.sum()) // 2 == 3 * 2 * 3
    assert torch.allclose(gen.first_logits, ref, atol=1e-4), (gen.first_logits - ref).abs().max()


def test_positions_are_the_mrope_formula(qwen_dirs, clip):
    engine = engine_for(qwen_dirs["qwen3-vl"])
    _, ids, inputs = vqa_inputs(engine, clip)
    pos = inputs["position_ids"][:, 0]
    pad = engine.model.config.video_token_id
    h, w = SIZE[1] // 32, SIZE[0] // 32
    expected, s, i, row = [], 0, 0, ids[0].tolist()
    while i < len(row):
        if row[i] != pad:
            expected.append((s, s, s))
            s, i = s + 1, i + 1
            continue
        expected += [(s, s + r, s + c) for r in range(h) for c in range(w)]
        s, i = s + max(h, w), i + h * w
    assert pos[0].tolist() == list(range(len(row)))
    assert pos[1:].T.tolist() == [list(p) for p in expected]


def test_prompt_timestamps_are_the_decoders_presentation_times(qwen_dirs, vfr):
    engine = engine_for(qwen_dirs["qwen3-vl"])
    prepared, ids, _ = vqa_inputs(engine, vfr)
    times = pyav_decode_all(vfr)[1]
    chosen = [times[i] for i in prepared.clip.indices]
    assert len(chosen) % 2 == 1  # the last group repeats its frame
    chosen.append(chosen[-1])
    stamps = [f"<{(chosen[g] + chosen[g + 1]) / 2:.1f} seconds>" for g in range(0, len(chosen), 2)]
    by_index = [f"<{(i + j) / 2 / 60:.1f} seconds>" for i, j in zip(prepared.clip.indices[::2],
                                                                    prepared.clip.indices[1::2], strict=False)]
    assert stamps[:len(by_index)] != by_index  # index / fps would say otherwise: the test can tell them apart
    tok, config = engine.checkpoint.tokenizer, engine.model.config
    row = ids[0].tolist()
    starts = [i for i, t in enumerate(row) if t == config.vision_start_token_id]
    ends = [i for i, t in enumerate(row) if t == config.vision_end_token_id]
    assert len(starts) == len(stamps)
    for k, (start, stamp) in enumerate(zip(starts, stamps, strict=True)):
        stamp_ids = tok(stamp, add_special_tokens=False)["input_ids"]
        before = row[ends[k - 1] + 1:start] if k else row[start - len(stamp_ids):start]
        assert before == stamp_ids, (k, tok.decode(before), stamp)
        assert row[start + 1:ends[k]] == [config.video_token_id] * (SIZE[1] // 32) * (SIZE[0] // 32)


def _windows(n: int, out: int) -> list[list[int]]:
    """Adaptive pooling's windows, written out: floor(i n / out) to ceil((i + 1) n / out)."""
    return [list(range(i * n // out, -(-(i + 1) * n // out))) for i in range(out)]


def _pooled_by_hand(grid: torch.Tensor, mode: ModeSettings) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The papers' pooling of a merged grid [T, h, w, C] channel by channel (tokens and DeepStack alike), and the
    (h, w) of each prompt block in order."""
    t, h, w, _ = grid.shape
    if mode.name == "pooled":
        pt, ph, pw = mode.pool
        rows = [grid[wt][:, wh][:, :, ww].mean(dim=(0, 1, 2)) for wt in _windows(t, pt) for wh in _windows(h, ph)
                for ww in _windows(w, pw)]
        return torch.stack(rows), [(ph, pw)] * pt
    slow = [i * t // mode.slow_frames for i in range(mode.slow_frames)]
    pairs = [list(range(c, min(c + 2, w))) for c in range(0, w, 2)]
    rows = [grid[f, r, pair].amax(dim=0) for f in slow for r in range(h) for pair in pairs]
    rows += [grid[f].mean(dim=(0, 1)) for f in range(t)]  # fast: 1 x 1
    return torch.stack(rows), [(h, len(pairs))] * len(slow) + [(1, 1)] * t


@pytest.mark.parametrize("mode", [ModeSettings("pooled", pool=(2, 1, 2)),
                                  ModeSettings("slowfast", slow_frames=2, fast_grid=1)], ids=["pooled", "slowfast"])
def test_pooled_and_slowfast_pool_deepstack_alike_and_place_each_block(qwen_dirs, clip, mode):
    """Each mode pools the tokens and the DeepStack features with the same formula; the language model, called
    directly with the test's own positions and DeepStack injection, gives vqa's first logits."""
    from dataclasses import replace

    base = engine_for(qwen_dirs["qwen3-vl"])
    engine = base.with_settings(replace(base.settings, mode=mode))
    prepared = engine.prepare_clip(clip, 6)
    frames = engine.encode(prepared.pixels)
    anyres = engine.aggregate(frames, ModeSettings())
    expected, blocks = _pooled_by_hand(anyres.reshape(3, SIZE[1] // 32, SIZE[0] // 32, -1), mode)
    features = engine.visual_tokens(prepared.clip, QUESTION, frames=frames)
    assert torch.allclose(features, expected, atol=1e-6)
    ids, inputs = engine.prompt_inputs(QUESTION, prepared.clip, features)
    row, pad = ids[0].tolist(), engine.model.config.video_token_id
    positions, s, i, b = [], 0, 0, 0
    while i < len(row):
        if row[i] != pad:
            positions.append((s, s, s))
            s, i = s + 1, i + 1
            continue
        h, w = blocks[b]
        positions += [(s, s + r, s + c) for r in range(h) for c in range(w)]
        s, i, b = s + max(h, w), i + h * w, b + 1
    assert b == len(blocks)
    pos = torch.cat([torch.arange(len(row))[None], torch.tensor(positions).T])[:, None]
    assert torch.equal(inputs["position_ids"], pos)
    hidden = engine.model.config.text_config.hidden_size
    tokens, *deepstack = expected.split(hidden, dim=-1)
    model = engine.model
    with torch.inference_mode():
        mask = ids == pad
        embeds = model.get_input_embeddings()(ids).masked_scatter(mask[..., None], tokens)
        out = model.model.language_model(inputs_embeds=embeds, position_ids=pos, visual_pos_masks=mask,
                                         deepstack_visual_embeds=list(deepstack))
        direct = model.lm_head(out.last_hidden_state)[0, -1]
    gen = generate(model, engine.checkpoint.tokenizer, ids, inputs, max_new_tokens=1, logits=True)
    assert torch.allclose(gen.first_logits, direct, atol=1e-4), (gen.first_logits - direct).abs().max()


def test_ask_in_4bit_through_the_command_line(qwen_dirs, clip, capsys):
    from vqa_cli.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["ask", clip, QUESTION, "--model", qwen_dirs["qwen3-vl-moe"], "--quant", "4bit", "--max-new-tokens", "4",
              "--json"])
    assert exit_.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "qwen-vl" and out["quant"] == "4bit" and out["answer"]
    assert out["frames"] == 6 and out["visual_tokens"] == 3 * (SIZE[1] // 32) * (SIZE[0] // 32)


def test_max_pixels_lowers_the_clip_size_within_the_budget(qwen_dirs, clip, capsys):
    import math

    from vqa_cli.cli import main

    budget = 12288
    with pytest.raises(SystemExit) as exit_:
        main(["ask", clip, QUESTION, "--model", qwen_dirs["qwen3-vl"], "--max-pixels", str(budget),
              "--max-new-tokens", "2", "--json"])
    assert exit_.value.code == 0
    out = json.loads(capsys.readouterr().out)
    # Qwen's smart_resize: 6 frames x 64 x 96 is over the budget, so both sides shrink by the same factor.
    beta = math.sqrt(6 * SIZE[0] * SIZE[1] / budget)
    h, w = (max(32, math.floor(side / beta / 32) * 32) for side in (SIZE[1], SIZE[0]))
    assert out["mode_settings"]["max_pixels"] == budget
    assert out["pathways"][0]["grid"] == [h // 32, w // 32]
    assert out["visual_tokens"] == 3 * (h // 32) * (w // 32) < 3 * (SIZE[1] // 32) * (SIZE[0] // 32)


def test_max_pixels_is_refused_for_a_family_without_a_pixel_budget(tiny_dir):
    from vqa_cli.errors import UsageError

    settings = RunSettings(model=str(tiny_dir), dtype="float32", mode=ModeSettings(max_pixels=65536))
    with pytest.raises(UsageError, match="--max-pixels is for native-resolution families"):
        open_model(settings, [QUESTION])


def test_qwen2_5_vl_logits_equal_the_models_own_forward_with_real_group_intervals(qwen_dirs, vfr):
    """Qwen2.5-VL: one run of tokens, no timestamps; its time axis takes the mean real interval between temporal
    groups (from PyAV's presentation times; not temporal patch / fps), given to the model's own forward here as
    second_per_grid_ts."""
    from dataclasses import replace

    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    base = engine_for(qwen_dirs["qwen2.5-vl"])
    engine = base.with_settings(replace(base.settings, frames=4))  # 4 frames over 3.6 s: groups ~1.8 s apart
    prepared, ids, inputs = vqa_inputs(engine, vfr)
    times = [pyav_decode_all(vfr)[1][i] for i in prepared.clip.indices]
    assert len(times) == 4
    groups = [(times[g] + times[g + 1]) / 2 for g in range(0, len(times), 2)]
    interval = (groups[-1] - groups[0]) / (len(groups) - 1)
    gen = generate(engine.model, engine.checkpoint.tokenizer, ids, inputs, max_new_tokens=1, logits=True)
    values, *grid = Qwen3VLVideoProcessor.patchify(None, prepared.pixels[None], 14, 2, 2)
    types = (ids == engine.model.config.video_token_id).long() * 2
    with torch.inference_mode():
        engine.model.model.rope_deltas = None
        ref = engine.model(input_ids=ids, pixel_values_videos=values[0], video_grid_thw=torch.tensor([grid]),
                           mm_token_type_ids=types, second_per_grid_ts=torch.tensor([interval])).logits[0, -1]
        engine.model.model.rope_deltas = None
        wrong = engine.model(input_ids=ids, pixel_values_videos=values[0], video_grid_thw=torch.tensor([grid]),
                             mm_token_type_ids=types, second_per_grid_ts=torch.tensor([interval * 2])).logits[0, -1]
    row = ids[0].tolist()
    assert row.count(engine.model.config.vision_start_token_id) == 1  # one run, no timestamps
    assert int(types.sum()) // 2 == grid[0] * grid[1] * grid[2] // 4
    assert not torch.allclose(wrong, ref, atol=1e-4)  # the interval matters
    assert torch.allclose(gen.first_logits, ref, atol=1e-4), (gen.first_logits - ref).abs().max()


@pytest.mark.parametrize("mode", [ModeSettings("pooled", pool=(2, 1, 2)),
                                  ModeSettings("slowfast", slow_frames=2, fast_grid=1)], ids=["pooled", "slowfast"])
def test_qwen2_5_pooled_and_slowfast_are_one_run_per_pathway_at_the_real_interval(qwen_dirs, vfr, mode):
    """Qwen2.5-VL: the mode pools the merged tokens by the papers' formula; each pathway is one untimed run whose
    time axis steps by the mean real interval of its steps (PyAV's presentation times of a variable-rate clip);
    the language model, called directly with the test's own positions, gives vqa's first logits."""
    from dataclasses import replace

    from tests.test_qwen_geometry import _qwen2_5_positions_by_formula

    base = engine_for(qwen_dirs["qwen2.5-vl"])
    engine = base.with_settings(replace(base.settings, mode=mode))
    prepared = engine.prepare_clip(vfr, engine.checkpoint.frames_for(engine.settings))
    times = [pyav_decode_all(vfr)[1][i] for i in prepared.clip.indices]
    times += times[-1:] * (len(times) % 2)
    groups = [(times[g] + times[g + 1]) / 2 for g in range(0, len(times), 2)]
    t, h, w = len(groups), prepared.pixels.shape[2] // 28, prepared.pixels.shape[3] // 28
    assert t == 4 and (h, w) == (10, 14)  # the per-frame least budget (128 x 28 x 28) scales 96 x 64 up
    frames = engine.encode(prepared.pixels)
    anyres = engine.aggregate(frames, ModeSettings())
    expected, blocks = _pooled_by_hand(anyres.reshape(t, h, w, -1), mode)
    features = engine.visual_tokens(prepared.clip, QUESTION, frames=frames)
    assert torch.allclose(features, expected, atol=1e-6)
    if mode.name == "pooled":  # windows [0, 1] and [2, 3] of the 4 groups
        runs = [(*blocks[0], [(groups[0] + groups[1]) / 2, (groups[2] + groups[3]) / 2])]
    else:  # slow groups 0 and 2 at full size, then every group at 1 x 1
        runs = [(*blocks[0], [groups[0], groups[2]]), (1, 1, groups)]
    ids, inputs = engine.prompt_inputs(QUESTION, prepared.clip, features)
    row, pad = ids[0].tolist(), engine.model.config.video_token_id
    assert row.count(engine.model.config.vision_start_token_id) == len(runs)
    types = [2 if tok == pad else 0 for tok in row]
    pos = torch.cat([torch.arange(len(row))[None], _qwen2_5_positions_by_formula(types, runs)])[:, None]
    assert torch.equal(inputs["position_ids"], pos)
    model = engine.model
    with torch.inference_mode():
        mask = ids == pad
        embeds = model.get_input_embeddings()(ids).masked_scatter(mask[..., None], expected)
        out = model.model.language_model(inputs_embeds=embeds, position_ids=pos)
        direct = model.lm_head(out.last_hidden_state)[0, -1]
    gen = generate(model, engine.checkpoint.tokenizer, ids, inputs, max_new_tokens=1, logits=True)
    assert torch.allclose(gen.first_logits, direct, atol=1e-4), (gen.first_logits - direct).abs().max()
