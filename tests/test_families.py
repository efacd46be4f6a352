"""Video-LLaVA and LLaVA-OneVision: each family's native path against its model's own forward (the oracle),
every mode end to end through the CLI, and the token counts of the real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vqa_cli.model import modes
from vqa_cli.model.checkpoint import Checkpoint
from vqa_cli.model.engine import Engine
from vqa_cli.model.families.base import FrameFeatures
from vqa_cli.model.families.registry import CHECKPOINTS, FAMILIES, adapter_for, family_for_model_type, resolve_alias
from vqa_cli.model.session import open_model
from vqa_cli.settings import RunSettings
from vqa_cli.video import sample_frames
from vqa_cli.video.preprocess import ProcessorConfig

NEW_FAMILIES = ("video-llava", "llava-onevision")
QUESTION = "What happens in the video?"


def _engine(model_dir: Path, **kw) -> Engine:
    settings = RunSettings(model=str(model_dir), **{"dtype": "float32", "max_new_tokens": 4, **kw})
    return open_model(settings, [QUESTION]).engine


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    from vqa_cli.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# ---- the native path is the model's own ---------------------------------------------------------


@pytest.mark.parametrize(("family", "frames"), [("video-llava", 18), ("llava-onevision", 17)])
def test_native_logits_equal_the_model_forward_with_pixel_values_videos(family_dirs, clip_path, family, frames):
    # More frames than one vision chunk (16), so per-chunk features (and Video-LLaVA's CLS) are joined.
    engine = _engine(family_dirs[family], frames=frames)
    clip = sample_frames(clip_path, frames)
    pixels = engine.pixels(clip)
    features = engine.aggregate(engine.encode(pixels), engine.settings.mode)
    ids, embeds = engine.prompt_inputs(QUESTION, clip, features)
    assert features.shape[0] == engine.checkpoint.plan(engine.settings, frames).total
    with torch.no_grad():
        mask = torch.ones_like(ids)
        ours = engine.model(inputs_embeds=embeds, attention_mask=mask).logits
        oracle = engine.model(input_ids=ids, pixel_values_videos=pixels[None], attention_mask=mask).logits
    assert ours.shape == oracle.shape
    assert (ours - oracle).abs().max().item() <= 1e-4


def test_video_llava_keeps_each_frames_cls_token_first(family_dirs, clip_path):
    engine = _engine(family_dirs["video-llava"], frames=2)
    pixels = engine.pixels(sample_frames(clip_path, 2))
    with torch.no_grad():
        frames = engine.adapter.encode_frames(engine.model, pixels)
        tokens = engine.adapter.native_tokens(engine.model, frames)
        cls = engine.adapter.project(engine.model, frames.prefix[:, 0])
    assert frames.grid.shape[:3] == (2, 16, 16) and frames.prefix.shape[:2] == (2, 1)
    assert tokens.shape[0] == 2 * 257
    torch.testing.assert_close(tokens[0], cls[0])
    torch.testing.assert_close(tokens[257], cls[1])


def test_onevision_appends_the_newline_embedding_once_after_all_frames(family_dirs, clip_path):
    engine = _engine(family_dirs["llava-onevision"], frames=3)
    pixels = engine.pixels(sample_frames(clip_path, 3))
    with torch.no_grad():
        tokens = engine.aggregate(engine.encode(pixels), engine.settings.mode)
    assert tokens.shape[0] == 3 * 14 * 14 + 1
    torch.testing.assert_close(tokens[-1], engine.model.model.image_newline)


def test_frame_features_join_chunks_in_order():
    parts = [FrameFeatures(torch.full((n, 2, 2, 3), float(i)), torch.full((n, 1, 3), float(i))) for i, n in
             enumerate((16, 3))]
    joined = FrameFeatures.cat(parts)
    assert len(joined) == 19 and joined.prefix.shape == (19, 1, 3)
    assert joined.grid[15].max() == 0 and joined.grid[16].min() == 1 and joined.prefix[16].min() == 1
    assert FrameFeatures.cat([FrameFeatures(torch.zeros(1, 2, 2, 3))]).prefix is None


# ---- every mode, end to end -----------------------------------------------------------------------

MODE_FRAMES = {"anyres": 4, "slowfast": 12, "pooled": 6}


@pytest.mark.parametrize("mode", list(MODE_FRAMES))
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_every_mode_end_to_end_through_the_cli(family_dirs, clip_path, capsys, family, mode):
    frames = MODE_FRAMES[mode]
    code, out, err = _run(["ask", clip_path, "What happens?", "--model", str(family_dirs[family]), "--mode", mode,
                           "--frames", str(frames), "--max-new-tokens", "2", "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    checkpoint = Checkpoint(str(family_dirs[family]))
    expected = checkpoint.plan(RunSettings(model="x", mode=modes.ModeSettings(mode)), frames)
    assert (record["family"], record["mode"], record["frames"]) == (family, mode, frames)
    assert record["visual_tokens"] == expected.total > 0


@pytest.mark.parametrize(("family", "frames", "tokens"), [
    ("video-llava", 8, 8 * 257),  # 2056: 16x16 patches + CLS per frame, no pooling
    ("llava-onevision", 32, 32 * 196 + 1),  # 6273: 27x27 -> bilinear 14x14 per frame, one newline per video
])
def test_default_anyres_request_has_the_real_checkpoints_token_count(family_dirs, clip_path, capsys, family, frames,
                                                                     tokens):
    code, out, err = _run(["ask", clip_path, "q", "--model", str(family_dirs[family]), "--max-new-tokens", "1",
                           "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert (record["frames"], record["visual_tokens"], record["rope_factor"]) == (frames, tokens, 1.0)


def test_token_plans_from_the_geometry(family_dirs):
    vl = Checkpoint(str(family_dirs["video-llava"]))
    ov = Checkpoint(str(family_dirs["llava-onevision"]))
    assert (vl.geometry.image_size, vl.geometry.grid, vl.geometry.trained_context) == (224, (16, 16), 4096)
    assert (ov.geometry.image_size, ov.geometry.grid, ov.geometry.trained_context) == (384, (27, 27), 32768)
    settings = RunSettings(model="x")
    assert vl.plan(settings, 8).total == 2056
    plan = ov.plan(settings, 32)
    assert plan.total == 6273 and [p.name for p in plan.pathways] == ["frames", "suffix"]
    assert ov.plan(RunSettings(model="x", mode=modes.ModeSettings("pooled")), 32).total == 16 * 14 * 14
    assert vl.plan(RunSettings(model="x", mode=modes.ModeSettings("pooled")), 32).total == 16 * 8 * 8
    assert vl.plan(RunSettings(model="x", mode=modes.ModeSettings("anyres", stride=2)), 8).total == 8 * (1 + 64)


def test_a_video_llava_request_past_4096_positions_gets_rope_scaling(family_dirs):
    checkpoint = Checkpoint(str(family_dirs["video-llava"]))
    budget = checkpoint.budget(RunSettings(model="x", frames=16), [QUESTION])
    assert budget.plan.total == 16 * 257 and budget.rope_factor == 2.0


# ---- checkpoint files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "side", "mean", "prompt"), [
    ("video-llava", 224, 0.48145466, "USER: <video>\nq ASSISTANT:"),
    ("llava-onevision", 384, 0.5, "<|im_start|>user\n<video>\nq<|im_end|>\n<|im_start|>assistant\n"),
])
def test_processor_config_and_chat_template_match_the_hub_layout(family_dirs, family, side, mean, prompt):
    from vqa_cli.model import prompt as prompts

    cfg = ProcessorConfig.from_dir(family_dirs[family])
    assert cfg.output_hw == (side, side) and cfg.mean[0] == pytest.approx(mean)
    checkpoint = Checkpoint(str(family_dirs[family]))
    assert prompts.render(checkpoint.tokenizer, checkpoint.template, "q") == prompt


def test_onevision_tokenizer_has_qwens_special_tokens(family_dirs):
    tok = Checkpoint(str(family_dirs["llava-onevision"])).tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert tok.convert_tokens_to_ids("<|im_start|>") != tok.unk_token_id


@pytest.mark.parametrize("family", ["llava-next-video", *NEW_FAMILIES])
def test_quant_skip_modules_name_real_modules_and_the_head(family_dirs, family):
    import transformers

    adapter = adapter_for(Checkpoint(str(family_dirs[family])).config)
    with torch.device("meta"):
        model = getattr(transformers, adapter.model_class)(adapter.config)
    names = [n for n, _ in model.named_modules()]
    skip = adapter.quant_skip_modules()
    assert "lm_head" in skip
    for prefix in skip:
        assert any(n.startswith(prefix) for n in names), prefix
    tower = adapter.vision_tower(model)
    assert any(tower is m for n, m in model.named_modules() if n.startswith(tuple(skip)))


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_4bit_loading_keeps_the_towers_and_projector_unquantized(family_dirs, clip_path, family):
    engine = _engine(family_dirs[family], frames=2, quant="4bit")
    skip = tuple(engine.adapter.quant_skip_modules())
    linear = {n: type(m).__name__ for n, m in engine.model.named_modules()
              if type(m).__name__ in ("Linear", "Linear4bit")}
    assert {t for n, t in linear.items() if n.startswith(skip)} == {"Linear"}
    assert {t for n, t in linear.items() if n.startswith("model.language_model")} == {"Linear4bit"}
    assert engine.answer(sample_frames(clip_path, 2), "What happens?").tokens > 0


# ---- registry ---------------------------------------------------------------------------------------------


def test_registry_finds_each_family_and_every_alias_names_a_family():
    names = {f.name for f in FAMILIES}
    assert names == {"llava-next-video", "video-llava", "llava-onevision", "qwen-vl"}
    assert family_for_model_type("video_llava").name == "video-llava"
    assert family_for_model_type("qwen3_vl").name == family_for_model_type("qwen3_vl_moe").name == "qwen-vl"
    assert resolve_alias("qwen3-vl-2b") == "Qwen/Qwen3-VL-2B-Instruct"
    assert resolve_alias("qwen3-vl-30b-a3b") == "Qwen/Qwen3-VL-30B-A3B-Instruct"
    assert family_for_model_type("llava_onevision").name == "llava-onevision"
    assert all(c.family in names for c in CHECKPOINTS)
    assert resolve_alias("video-llava-7b") == "LanguageBind/Video-LLaVA-7B-hf"
    assert resolve_alias("llava-onevision-0.5b") == "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
    assert resolve_alias("llava-onevision-7b") == "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    assert resolve_alias("llava-video-7b") == "llava-hf/LLaVA-Video-7B-Qwen2-hf"
    assert {c.alias: c.nominal_parameters for c in CHECKPOINTS}["llava-onevision-0.5b"] == 500_000_000


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_tiny_checkpoint_command_writes_a_loadable_checkpoint(tmp_path, capsys, family):
    from vqa_cli.testing import main

    assert main(["tiny-checkpoint", str(tmp_path / "ckpt"), "--family", family]) == 0
    assert Path(capsys.readouterr().out.strip()) == tmp_path / "ckpt"
    assert Checkpoint(str(tmp_path / "ckpt")).adapter.name == family
