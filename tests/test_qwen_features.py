"""Everything the other families do, for the qwen-vl family (Qwen3-VL dense and MoE; Qwen2.5-VL's chat, batches
and 4-bit) on tiny checkpoints.

Oracles: the model's own forward from pixels (transformers' ``model(input_ids, pixel_values_videos, video_grid_thw,
mm_token_type_ids)`` with its own positions, the pixels patchified by transformers' own video processor; for
Qwen2.5-VL with ``second_per_grid_ts`` from PyAV's presentation times), the published geometry formulas written out
here, and the module list of the quantized model itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.clips import make_clip, pyav_decode_all
from vqa_cli.model.session import open_model
from vqa_cli.settings import RunSettings

QUESTIONS = ["What happens in the video?", "What colour is it?"]
SIZE = (96, 64)  # width, height: kept as is by the budget: 2 x 3 merged tokens a temporal group
RECIPES = ["qwen3-vl", "qwen3-vl-moe"]
QWEN2_5 = "qwen2.5-vl"


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory) -> dict[str, str]:
    from vqa_cli.testing import tiny_checkpoint

    root = tmp_path_factory.mktemp("qwenf")
    return {r: str(tiny_checkpoint(root / r, family=r)) for r in [*RECIPES, QWEN2_5]}


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


def own_forward_logits(engine, pixels: torch.Tensor, ids: torch.Tensor, prepared=None) -> torch.Tensor:
    """The oracle: the model's own forward of ``ids`` from the pixels, its own patch layout and positions (Qwen2.5-VL:
    its time axis from the mean interval between temporal groups, at PyAV's presentation times of ``prepared``'s
    frames)."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    config = engine.model.config
    values, *grid = Qwen3VLVideoProcessor.patchify(None, pixels[None], config.vision_config.patch_size, 2, 2)
    types = (ids == config.video_token_id).long() * 2
    extra = {}
    if config.model_type == "qwen2_5_vl":
        times = [pyav_decode_all(prepared.clip.path)[1][i] for i in prepared.clip.indices]
        times += times[-1:] * (len(times) % 2)  # an odd count: the last group repeats its frame
        groups = [(times[g] + times[g + 1]) / 2 for g in range(0, len(times), 2)]
        extra["second_per_grid_ts"] = torch.tensor([(groups[-1] - groups[0]) / (len(groups) - 1)])
    with torch.inference_mode():
        engine.model.model.rope_deltas = None
        return engine.model(input_ids=ids, pixel_values_videos=values[0], video_grid_thw=torch.tensor([grid]),
                            mm_token_type_ids=types, **extra).logits[0, -1]


# ---- chat: the KV cache reused across turns ----------------------------------------------------------------------
@pytest.mark.parametrize("recipe", [*RECIPES, QWEN2_5])
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
    full = own_forward_logits(engine, prepared.pixels, ids, prepared)
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


# ---- batches: left padding, positions with the attention mask ----------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES)
def test_a_left_padded_batch_gives_each_rows_own_forward(qwen_dirs, clips, recipe):
    from vqa_cli.model.generate import left_pad_inputs, pad_id

    engine = engine_for(qwen_dirs[recipe])
    prepared = [engine.prepare_clip(c, engine.checkpoint.frames_for(engine.settings)) for c in clips]
    rows = [engine.prompt_inputs(q, p.clip, engine.visual_tokens(p.clip, q))
            for p, q in zip(prepared, QUESTIONS, strict=True)]
    assert rows[0][0].shape[1] != rows[1][0].shape[1]  # the shorter prompt is padded
    ids, inputs, mask = left_pad_inputs(rows, pad_id(engine.checkpoint.tokenizer))
    with torch.inference_mode():
        batched = engine.model(input_ids=ids, attention_mask=mask, **inputs).logits[:, -1]
    for b, (p, (row_ids, _)) in enumerate(zip(prepared, rows, strict=True)):
        alone = own_forward_logits(engine, p.pixels, row_ids)
        assert (batched[b] - alone).abs().max().item() <= 1e-4


@pytest.mark.parametrize("recipe", ["qwen3-vl-moe", QWEN2_5])
def test_answer_batch_equals_one_at_a_time(qwen_dirs, clips, monkeypatch, recipe):
    import vqa_cli.model.generate as gen_module

    engine = engine_for(qwen_dirs[recipe])
    prepared = [engine.prepare_clip(c, engine.checkpoint.frames_for(engine.settings)) for c in clips]
    alone = [engine.answer(p.clip, q).text for p, q in zip(prepared, QUESTIONS, strict=True)]
    calls = []
    real = gen_module._run
    monkeypatch.setattr(gen_module, "_run", lambda model, ids, *a, **k: calls.append(ids.shape) or real(model, ids, *a,
                                                                                                          **k))
    batch = engine.answer_batch([p.clip for p in prepared], QUESTIONS)
    assert [a.text for a in batch] == alone
    assert len(calls) == 1 and calls[0][0] == 2  # one generate call over both rows


# ---- serve: a chat completion through a real server, the feature and KV caches on a second request -------------
def test_a_cached_clip_keeps_the_layout_of_its_tokens(qwen_dirs, clips):
    """A feature-cache hit has no pixels; its clip must still lay the tokens out as the decoded clip did."""
    from vqa_cli.model.features import clip_from_meta, clip_meta

    engine = engine_for(qwen_dirs["qwen3-vl"])
    for path in clips:
        clip = engine.prepare_clip(path, engine.checkpoint.frames_for(engine.settings)).clip
        cached = clip_from_meta(json.loads(json.dumps(clip_meta(clip))))  # as the disk cache stores it
        assert cached.frames.shape == clip.frames.shape
        plan = engine.adapter.clip_plan(cached, engine.checkpoint.dir, engine.settings.mode)
        assert plan == engine.adapter.clip_plan(clip, engine.checkpoint.dir, engine.settings.mode)


@pytest.mark.heavy
def test_serve_answers_as_vqa_ask_and_reuses_the_video_on_a_second_request(qwen_dirs, clips, capsys):
    from tests.cli_run import run
    from vqa_cli.testing import start

    model, folder = qwen_dirs["qwen3-vl"], str(Path(clips[0]).parent)
    settings = ["--max-new-tokens", "4"]
    code, out, err = run(["ask", clips[0], QUESTIONS[0], "--model", model, *settings, "--json"], capsys)
    assert code == 0, err
    local = json.loads(out)
    server = start(["--model", model, "--media-root", folder, *settings], cwd=folder)
    try:
        def ask(question: str) -> dict:
            content = [{"type": "video_url", "video_url": {"url": "a.mp4"}}, {"type": "text", "text": question}]
            status, body = server.post("/v1/chat/completions",
                                       {"model": model, "messages": [{"role": "user", "content": content}]})
            assert status == 200, (body, "".join(server.stderr))
            return body

        first, second = ask(QUESTIONS[0]), ask(QUESTIONS[1])
    finally:
        server.stop()
    assert first["choices"][0]["message"]["content"] == local["answer"]
    assert first["vqa"]["visual_tokens"] == local["visual_tokens"] == 3 * 2 * 3
    assert first["vqa"]["cache"]["features"] == "miss" and "encode" in first["vqa"]["timings"]
    assert second["vqa"]["cache"]["features"] == "memory" and "encode" not in second["vqa"]["timings"]
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= local["visual_tokens"]


# ---- --plan before loading: the token budget per mode from the published formula -----------------------------------
def published_grid(frames: int, height: int, width: int, max_pixels: int, min_pixels: int = 4096,
                   factor: int = 32) -> tuple[int, int, int]:
    """Qwen3-VL's video smart resize, its budget over the whole clip (frames rounded to the temporal patch of 2), as
    the processor publishes it: -> (temporal groups, patch rows, patch columns) at patch 16."""
    t = round(frames / 2) * 2
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if t * h * w > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h, w = max(factor, math.floor(height / beta / factor) * factor), max(factor, math.floor(width / beta / factor)
                                                                             * factor)
    elif t * h * w < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return math.ceil(frames / 2), h // 16, w // 16


@pytest.mark.parametrize(("mode", "frames", "max_pixels"), [
    ("anyres", 64, None), ("anyres", 64, 64 * 448 * 448 // 4), ("anyres", 10, 10 * 300 * 300), ("pooled", 32, None),
    ("pooled", 20, None)])
def test_plan_counts_the_published_formula_before_loading(qwen_dirs, clips, tmp_path, capsys, mode, frames,
                                                          max_pixels):
    import shutil

    from tests.cli_run import run

    configs_only = tmp_path / "configs"  # no weights: --plan reads configs only
    shutil.copytree(qwen_dirs["qwen3-vl-moe"], configs_only, ignore=shutil.ignore_patterns("*.safetensors"))
    argv = ["ask", clips[0], "q", "--model", str(configs_only), "--plan", "--json", "--mode", mode]
    argv += ["--frames", str(frames)] + (["--max-pixels", str(max_pixels)] if max_pixels else [])
    code, out, err = run(argv, capsys)
    assert code == 0, err
    plan = json.loads(out)
    gt, gh, gw = published_grid(frames, 448, 448, max_pixels or 25165824)  # before the clip: a nominal 448 x 448
    if mode == "anyres":
        assert plan["visual_tokens"] == gt * gh * gw // 4
    else:  # the groups pooled to --pool's default T of 16, each merged grid (h/2) 2x2 average-pooled, rounded up
        assert plan["visual_tokens"] == 16 * math.ceil(gh / 2 / 2) * math.ceil(gw / 2 / 2)
    assert plan["frames"] == frames and plan["memory"]["parameters"] > 0


# ---- 4-bit and 8-bit: the skip list, MoE experts, pre-quantized copies, the memory estimate ------------------------
@pytest.mark.parametrize(("recipe", "quant"), [(r, q) for r in RECIPES for q in ("4bit", "8bit")] + [(QWEN2_5, "4bit")])
def test_quantized_loads_keep_the_tower_and_head_and_copies_give_the_same_model(qwen_dirs, tmp_path, monkeypatch,
                                                                                recipe, quant):
    from vqa_cli.model import loading, memory
    from vqa_cli.model.weights import loader

    monkeypatch.setenv("VQA_CACHE", str(tmp_path / "vqa"))
    monkeypatch.delenv("VQA_QUANT_CACHE", raising=False)
    model_dir = Path(qwen_dirs[recipe])
    config, adapter = loading.read_checkpoint_config(model_dir)
    on_load = loader.load_model(model_dir, config, device="cpu", dtype=torch.float32, quant=quant)
    from_copy = loader.load_model(model_dir, loading.read_checkpoint_config(model_dir)[0], device="cpu",
                                  dtype=torch.float32, quant=quant)
    assert not on_load.prequantized and from_copy.prequantized
    assert len(list((tmp_path / "vqa" / "quantized").iterdir())) == 1
    kind = "Linear4bit" if quant == "4bit" else "Linear8bitLt"
    quantized = 0
    for name, module in from_copy.model.named_modules():
        if name.startswith(("model.visual", "lm_head")):
            assert type(module).__name__ not in {"Linear4bit", "Linear8bitLt"}, name  # the skip list
        elif isinstance(module, torch.nn.Linear):
            assert type(module).__name__ == kind, name
            quantized += module.in_features * module.out_features
    experts = [p for n, p in from_copy.model.named_parameters() if ".experts." in n]
    assert (recipe == "qwen3-vl-moe") == bool(experts)
    assert all(p.dtype == torch.float32 and p.dim() == 3 for p in experts)  # experts: 3-D parameters, not quantized
    a, b = on_load.model.state_dict(), from_copy.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The memory estimate counts as quantized exactly what bitsandbytes quantized (experts stay 16-bit).
    est = memory.estimate_memory(adapter, quant, 2, 0)
    assert est.quantized_parameters == quantized
    total = sum(p.numel() for p in on_load.model.parameters() if p.dtype != torch.uint8 and p.dtype != torch.int8)
    assert est.parameters > total > 0


# ---- eval: both protocols, the letters' log-probabilities against the model's own forward -------------------------
@pytest.mark.parametrize("protocol", ["official", "lmms-eval"])
def test_eval_scores_like_the_models_own_forward(qwen_dirs, clips, tmp_path, capsys, protocol):
    from tests.cli_run import run
    from vqa_cli.jobs.eval import build, letter_ids, read_items
    from vqa_cli.jobs.eval._prompts import answer_prefix

    model = qwen_dirs["qwen3-vl"]
    rows = [{"video": "a.mp4", "question": "What is shown?", "candidates": ["a square", "a circle", "a line"],
             "answer": "a circle"},
            {"video": "b.mp4", "question": "Which way does it go?", "candidates": ["up", "down"], "answer": "up"}]
    ann = tmp_path / "mvb" / "object_shuffle.json"  # MVBench's layout: one JSON list per task
    ann.parent.mkdir()
    ann.write_text(json.dumps(rows))
    out = tmp_path / "r.jsonl"
    code, printed, err = run(["eval", str(ann), "--format", "mvbench", "--videos", str(Path(clips[0]).parent),
                              "--model", model, "--dtype", "float32", "--protocol", protocol, "--score", "likelihood",
                              "--out", str(out), "--json"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert json.loads(printed)["n"] == len(records) == 2 and all(r["error"] is None for r in records)
    engine = engine_for(model)
    tokenizer = engine.checkpoint.tokenizer
    for item in read_items(str(ann), "mvbench"):
        record = next(r for r in records if r["qid"] == item.qid)
        prepared = engine.prepare_clip(str(Path(clips[0]).parent / item.video), engine.checkpoint.frames_for(
            engine.settings))
        ids, _ = engine.prompt_inputs(build(item, "mvbench", protocol), prepared.clip,
                                      engine.visual_tokens(prepared.clip, ""))
        prefix = tokenizer.encode(answer_prefix("mvbench", protocol), add_special_tokens=False)
        ids = torch.cat([ids, torch.tensor([prefix], dtype=ids.dtype)], dim=1)  # official: "Best option:(" prefilled
        logp = torch.log_softmax(own_forward_logits(engine, prepared.pixels, ids).float(), -1)
        letters = letter_ids(tokenizer, len(item.options))
        direct = {"ABC"[k]: max(float(logp[i]) for i in letters[k]) for k in range(len(item.options))}
        assert record["letter_logprobs"] == pytest.approx(direct, abs=1e-3)
        assert record["protocol"] == protocol


# ---- caption (plain and --segments) and vqa ask --json records -----------------------------------------------------
def test_caption_records_plain_batched_and_in_segments(qwen_dirs, clips, tmp_path, capsys):
    from tests.cli_run import run

    model, folder = qwen_dirs["qwen3-vl"], Path(clips[0]).parent
    common = ["--model", model, "--dtype", "float32", "--max-new-tokens", "4", "--prompt", QUESTIONS[0]]
    code, _, err = run(["caption", str(folder), "--batch-size", "2", "--out", str(tmp_path / "c.jsonl"), *common],
                       capsys)
    assert code == 0, err
    plain = {Path(r["video"]).name: r for r in map(json.loads, (tmp_path / "c.jsonl").read_text().splitlines())}
    engine = engine_for(model)
    for name, groups, hw in (("a.mp4", 3, 2 * 3), ("b.mp4", 2, 3 * 2)):  # 2 fps: 6 and 4 frames; 96x64 and 64x96
        prepared = engine.prepare_clip(str(folder / name), engine.checkpoint.frames_for(engine.settings))
        assert plain[name]["caption"] == engine.answer(prepared.clip, QUESTIONS[0]).text  # batched == one at a time
        assert plain[name]["visual_tokens"] == groups * hw and plain[name]["frames"] == 2 * groups
    code, _, err = run(["caption", str(folder), "--segments", "fixed:1", "--out", str(tmp_path / "s.jsonl"), *common],
                       capsys)
    assert code == 0, err
    segmented = {Path(r["video"]).name: r for r in map(json.loads, (tmp_path / "s.jsonl").read_text().splitlines())}
    for name, seconds in (("a.mp4", 3), ("b.mp4", 2)):
        spans = [(s["start"], s["end"]) for s in segmented[name]["segments"]]
        assert spans == [(float(i), float(i + 1)) for i in range(seconds)]
        assert all(s["caption"] for s in segmented[name]["segments"])


def test_ask_json_record(qwen_dirs, clips, capsys):
    from tests.cli_run import run
    from tests.clips import pyav_decode_all

    code, out, err = run(["ask", clips[0], *QUESTIONS, "--model", qwen_dirs["qwen3-vl-moe"], "--dtype", "float32",
                          "--max-new-tokens", "3", "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert [a["question"] for a in record["answers"]] == QUESTIONS and all(a["answer"] for a in record["answers"])
    assert record["family"] == "qwen-vl" and record["visual_tokens"] == 3 * 2 * 3
    times = pyav_decode_all(clips[0])[1]
    assert record["timestamps"] == [round(times[i], 3) for i in record["frame_indices"]]


# ---- --fit and the memory check ------------------------------------------------------------------------------------
def test_fit_picks_the_frames_that_fit_and_the_check_refuses_before_the_weights(qwen_dirs, clips, capsys, monkeypatch):
    from dataclasses import replace

    from tests.cli_run import run
    from vqa_cli.errors import MemoryFitError
    from vqa_cli.model import fit, machine
    from vqa_cli.model.checkpoint import Checkpoint
    from vqa_cli.model.weights import loader

    model = qwen_dirs["qwen3-vl-moe"]
    settings = RunSettings(model=model, dtype="float32", max_new_tokens=3, frames=16)
    checkpoint = Checkpoint(model)
    budget = checkpoint.budget(settings, [QUESTIONS[0]])
    room = fit.measure(checkpoint, settings, budget, lambda device: 10**13).estimate.peak_bytes
    monkeypatch.setattr(machine, "probe_memory", lambda device: room if device == "cpu" else None)
    code, out, err = run(["ask", clips[0], QUESTIONS[0], "--model", model, "--dtype", "float32", "--max-new-tokens",
                          "3", "--frames", "64", "--fit", "--plan", "--json"], capsys)
    assert code == 0, err
    plan = json.loads(out)
    frames = plan["fit"]["frames"]
    assert 16 <= frames < 64 and plan["frames"] == frames and plan["memory"]["fits"] is True
    gt, gh, gw = published_grid(frames, 448, 448, 25165824)
    assert plan["visual_tokens"] == gt * gh * gw // 4

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(loader, "load", never)
    with pytest.raises(MemoryFitError) as refused:
        open_model(replace(settings, frames=64), [QUESTIONS[0]], probe=lambda device: room // 2)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("mode", ["pooled", "slowfast"])
def test_qwen2_5_answers_in_the_pooled_modes_and_a_mode_a_family_lacks_is_one_line(qwen_dirs, clips, capsys,
                                                                                   monkeypatch, mode):
    """Qwen2.5-VL answers in every mode; a family that lacks a mode says so with its model type: a usage error
    (exit 2), one line, no traceback."""
    from tests.cli_run import run
    from vqa_cli.model.families.qwen_vl import QwenVLAdapter

    args = ["ask", clips[0], QUESTIONS[0], "--model", qwen_dirs[QWEN2_5], "--mode", mode, "--json"]
    code, out, err = run(args, capsys)
    assert code == 0 and json.loads(out)["mode"] == mode, err
    monkeypatch.setattr(QwenVLAdapter, "modes", ("anyres",))
    code, out, err = run(args, capsys)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert f"--mode {mode} is not available for qwen-vl (qwen2_5_vl; available: anyres)" in err
