"""``--reduce`` wired between the mode and the language model (vqa_cli/model/reduction.py) on tiny checkpoints.

Oracles: the mode's own unreduced tokens (each adapter's native path: LLaVA-OneVision's newline, Video-LLaVA's CLS
per frame), EVS's formula written here (cosine to the same place in the previous frame, the first frame first, the
earlier place on a tie, ``floor(total x keep)`` kept, one frame at least), the model's own ``get_rope_index`` on the
full prompt with the processor's grid, the language model called directly, and a fresh computation for the cached
tokens. The methods' own formulas are tests/test_reduce.py's.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from tests.clips import make_clip
from vqa_cli.errors import UsageError
from vqa_cli.model import reduce as methods
from vqa_cli.model.generate import generate
from vqa_cli.model.session import open_model
from vqa_cli.output import records
from vqa_cli.settings import ModeSettings, RunSettings, build

QUESTION = "What happens in the video?"
SIZE = (96, 64)  # Qwen3-VL keeps it: 2 x 3 merged tokens per temporal group


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> str:
    """3 s at 10 fps, frames carrying their index: Qwen3-VL's 2 fps gives 6 frames, 3 temporal groups."""
    return make_clip(str(tmp_path_factory.mktemp("rclip") / "clip.mp4"), 30, fps=10.0, size=SIZE)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> str:
    from vqa_cli.testing import tiny_checkpoint

    return str(tiny_checkpoint(tmp_path_factory.mktemp("rqwen") / "qwen3-vl", family="qwen3-vl"))


@pytest.fixture(scope="module")
def qwen2_5_dir(tmp_path_factory) -> str:
    from vqa_cli.testing import tiny_checkpoint

    return str(tiny_checkpoint(tmp_path_factory.mktemp("rqwen25") / "qwen2.5-vl", family="qwen2.5-vl"))


_ENGINES: dict[str, object] = {}


def engine_for(model_dir: str, **mode: object):
    if model_dir not in _ENGINES:
        _ENGINES[model_dir] = open_model(RunSettings(model=str(model_dir), dtype="float32", max_new_tokens=4),
                                         [QUESTION]).engine
    base = _ENGINES[model_dir]
    return base.with_settings(replace(base.settings, mode=ModeSettings(**mode)))


def evs_mask(grid: torch.Tensor, keep: float) -> torch.Tensor:
    """EVS written out: [T, h, w, D] -> the kept places, bool [T, h, w] (never fewer than one frame's)."""
    t, h, w, _ = grid.shape
    x = grid.float()
    scores = [math.inf] * (h * w) + (1 - F.cosine_similarity(x[1:], x[:-1], dim=-1)).flatten().tolist()
    order = sorted(range(t * h * w), key=lambda i: (-scores[i], i))
    mask = torch.zeros(t * h * w, dtype=torch.bool)
    mask[order[:max(h * w, math.floor(t * h * w * keep + 1e-9))]] = True
    return mask.reshape(t, h, w)


def kept_places(method: str, grid: torch.Tensor, keep: float) -> torch.Tensor:
    """The places ``method`` keeps: EVS by the formula above; VidCom2 by ``reduce.reduce_grid`` on the grid alone
    (its formula is tests/test_reduce.py's; here only the wiring around it is tested)."""
    return evs_mask(grid, keep) if method == "evs" else methods.reduce_grid(method, grid, keep).mask


def first_logits(engine, clip, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, object]:
    ids, inputs = engine.prompt_inputs(QUESTION, clip, features)
    gen = generate(engine.model, engine.checkpoint.tokenizer, ids, inputs, max_new_tokens=1, logits=True)
    return gen.first_logits, ids, inputs


@pytest.mark.parametrize(("family", "method"), [("llava-onevision", "evs"), ("llava-onevision", "vidcom2"),
                                                ("video-llava", "evs"), ("qwen3-vl", "evs"), ("qwen3-vl", "vidcom2"),
                                                ("qwen2.5-vl", "evs")])
def test_keep_one_gives_the_unreduced_logits_exactly(family, method, family_dirs, qwen_dir, qwen2_5_dir, clip_file):
    model_dir = {"qwen3-vl": qwen_dir, "qwen2.5-vl": qwen2_5_dir}.get(family) or family_dirs[family]
    plain, kept = engine_for(model_dir), engine_for(model_dir, reduce=method, keep=1.0)
    prepared = plain.prepare_clip(clip_file, 6)
    frames = plain.encode(prepared.pixels)
    a = first_logits(plain, prepared.clip, plain.visual_tokens(prepared.clip, frames=frames))
    b = first_logits(kept, prepared.clip, kept.visual_tokens(prepared.clip, frames=frames))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])


@pytest.mark.parametrize("method", ["evs", "vidcom2"])
@pytest.mark.parametrize("family", ["llava-onevision", "video-llava", "llava-next-video"])
def test_llava_layout_tokens_stay_in_place_and_the_grid_is_reduced_by_the_formula(family, method, family_dirs,
                                                                                   clip_file):
    plain, reduced = engine_for(family_dirs[family]), engine_for(family_dirs[family], reduce=method, keep=0.3)
    prepared = plain.prepare_clip(clip_file, 6)
    frames = plain.encode(prepared.pixels)
    with torch.inference_mode():
        native = plain.adapter.native_tokens(plain.model, frames)  # the checkpoint's own path, unreduced
    assert torch.equal(plain.visual_tokens(prepared.clip, frames=frames), native)
    g = plain.checkpoint.geometry
    side = -(-g.grid[0] // g.native_stride) if g.native_ceil else g.grid[0] // g.native_stride
    t, prefix, per = 6, g.frame_prefix_tokens, g.frame_prefix_tokens + side * side
    steps = native[:t * per].reshape(t, per, -1)
    mask = kept_places(method, steps[:, prefix:].reshape(t, side, side, -1), 0.3)
    expected = [torch.cat([steps[f, :prefix], steps[f, prefix:][mask[f].flatten()]]) for f in range(t)]
    expected = torch.cat([*expected, native[t * per:]])
    got = reduced.visual_tokens(prepared.clip, frames=frames)
    assert torch.equal(got, expected)
    if family == "llava-onevision":  # the learned newline, once, after the video
        assert torch.equal(got[-1], plain.model.model.image_newline) and native.shape[0] == t * per + 1
    if family == "video-llava":  # each frame's CLS token before its kept grid tokens
        assert prefix == 1 and torch.equal(got[0], native[0])
    budget, _ = reduced.budgeted_tokens(prepared.clip, QUESTION, {}, known=got)
    suffix = native.shape[0] - t * per
    assert budget.plan.total == got.shape[0] == t * prefix + math.floor(t * side * side * 0.3) + suffix


@pytest.mark.parametrize(("method", "keep"), [("evs", 0.5), ("evs", 0.1), ("vidcom2", 0.2)])
def test_qwen_kept_tokens_keep_their_full_layout_positions(qwen_dir, clip_file, method, keep):
    plain, reduced = engine_for(qwen_dir), engine_for(qwen_dir, reduce=method, keep=keep)
    model = plain.model
    pad = model.config.video_token_id
    prepared = plain.prepare_clip(clip_file, 6)
    frames = plain.encode(prepared.pixels)
    full = plain.visual_tokens(prepared.clip, frames=frames)  # [18, D x (1 + k)]: DeepStack packed on the channels
    full_ids, _ = plain.prompt_inputs(QUESTION, prepared.clip, full)
    # The full prompt's positions from the model's own get_rope_index with the processor's grid (3 groups, 4 x 6).
    types = (full_ids == pad).long() * 2
    with torch.inference_mode():
        model.model.rope_deltas = None
        full_pos, _ = model.model.get_rope_index(full_ids, types, video_grid_thw=torch.tensor([[3, 4, 6]]))
    hidden = model.config.text_config.hidden_size
    mask = kept_places(method, full[:, :hidden].reshape(3, 2, 3, -1), keep).flatten()  # scored on the tokens
    assert int(mask.sum()) == max(6 if method == "evs" else 3, math.floor(18 * keep))
    columns = full_ids[0] != pad
    columns[(full_ids[0] == pad).nonzero().squeeze(1)[mask]] = True
    features = reduced.visual_tokens(prepared.clip, frames=frames)
    logits, ids, inputs = first_logits(reduced, prepared.clip, features)
    assert torch.equal(ids, full_ids[:, columns])
    assert torch.equal(inputs["position_ids"][1:], full_pos[..., columns])
    assert torch.equal(inputs["position_ids"][0, 0], torch.arange(ids.shape[1]))
    start = model.config.vision_start_token_id
    assert int((ids == start).sum()) == 3  # a block left without tokens (EVS at 0.1) keeps its timestamp, wrapper
    tokens, *deepstack = full[mask].split(hidden, dim=-1)  # DeepStack kept at the same places
    with torch.inference_mode():
        visual = ids == pad
        embeds = model.get_input_embeddings()(ids).masked_scatter(visual[..., None], tokens)
        out = model.model.language_model(inputs_embeds=embeds, position_ids=inputs["position_ids"],
                                         visual_pos_masks=visual, deepstack_visual_embeds=list(deepstack))
        direct = model.lm_head(out.last_hidden_state)[0, -1]
    assert torch.allclose(logits, direct, atol=1e-4), (logits - direct).abs().max()


def test_cached_reduced_tokens_are_reused_without_reducing_again(qwen_dir, clip_file, tmp_path, monkeypatch):
    from vqa_cli.model.features import FeatureCache, file_identity, key_for

    calls = []
    monkeypatch.setattr(methods, "reduce_grid", lambda *a, **k: calls.append(1) or _reduce_grid(*a, **k))
    engine = engine_for(qwen_dir, reduce="evs", keep=0.5)
    prepared = engine.prepare_clip(clip_file, 6)
    key = key_for(engine, file_identity(clip_file), engine.settings, 6)
    cache = FeatureCache(2**26, tmp_path)
    _, first = engine.budgeted_tokens(prepared.clip, QUESTION, {})
    cache.put(key, prepared.clip, first)
    cache.flush()
    assert len(calls) == 1
    entry = FeatureCache(2**26, tmp_path).get(key)  # another process: from the disk
    assert entry is not None and entry.where == "disk"
    cached_clip, cached = entry.clip, entry.features
    second = engine.answer(cached_clip, "And then?", features=cached)  # a second question
    assert len(calls) == 1 and second.features is cached
    fresh = engine.visual_tokens(prepared.clip)
    assert len(calls) == 2
    assert torch.equal(first_logits(engine, cached_clip, cached)[0], first_logits(engine, prepared.clip, fresh)[0])
    assert key != key_for(engine_for(qwen_dir, reduce="evs", keep=0.25), file_identity(clip_file),
                          replace(engine.settings, mode=ModeSettings(reduce="evs", keep=0.25)), 6)


_reduce_grid = methods.reduce_grid


def test_a_chat_and_several_questions_reduce_once(family_dirs, clip_file, monkeypatch, capsys):
    from vqa_cli.cli import main

    calls = []
    monkeypatch.setattr(methods, "reduce_grid", lambda *a, **k: calls.append(1) or _reduce_grid(*a, **k))
    with pytest.raises(SystemExit) as exc:
        main(["ask", clip_file, "One?", "Two?", "--model", str(family_dirs["llava-onevision"]), "--frames", "4",
              "--dtype", "float32", "--max-new-tokens", "2", "--reduce", "evs", "--keep", "0.5", "--json"])
    assert exc.value.code == 0 and len(calls) == 1
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert answers and all(a["mode_settings"]["reduce"] == "evs" and a["mode_settings"]["keep"] == 0.5
                           for a in answers)


def test_plan_shows_the_tokens_before_and_after(family_dirs, clip_file, capsys):
    from vqa_cli.cli import main

    model_dir = str(family_dirs["llava-onevision"])
    v = json.loads((family_dirs["llava-onevision"] / "config.json").read_text())["vision_config"]
    side = math.ceil(v["image_size"] // v["patch_size"] / 2)
    grid = 8 * side * side
    base = ["ask", clip_file, QUESTION, "--model", model_dir, "--frames", "8", "--plan", "--json"]
    for extra, after in ((["--reduce", "evs", "--keep", "0.25"], math.floor(grid * 0.25) + 1),
                         (["--reduce", "evs", "--max-visual-tokens", "300"], 300),
                         (["--reduce", "evs", "--max-visual-tokens", str(10 * grid)], grid + 1)):
        with pytest.raises(SystemExit):
            main(base + extra)
        plan = json.loads(capsys.readouterr().out)
        assert (plan["visual_tokens_before"], plan["visual_tokens"], plan["reduce"]) == (grid + 1, after, "evs")
        assert plan["pathways"][0]["tokens_before"] == grid and plan["pathways"][1]["tokens"] == 1
    with pytest.raises(SystemExit):
        main(base[:-1] + ["--reduce", "evs"])  # the default ratio, in text
    out = capsys.readouterr().out
    assert f"evs, keep 0.25: {grid + 1} -> {math.floor(grid * 0.25) + 1} visual tokens" in out
    with pytest.raises(SystemExit):
        main(base)
    assert "reduce" not in json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit) as exc:  # under EVS's least (the first frame's tokens): refused, not exceeded
        main(base + ["--reduce", "evs", "--max-visual-tokens", str(side * side)])
    assert exc.value.code == 2 and f"keeps at least {side * side + 1} of {grid + 1}" in capsys.readouterr().err


def test_the_settings_choices_are_the_methods():
    from vqa_cli.settings import REDUCE_METHODS

    assert REDUCE_METHODS == methods.METHODS


def test_settings_ids_stay_the_same_without_a_reduction():
    plain = build(model="m")
    assert plain.identity()["mode"] == {"name": "anyres"} == build(model="m", reduce="none").identity()["mode"]
    sid = records.settings_id(plain.identity(), "p")
    assert sid == records.settings_id(build(model="m", reduce="none").identity(), "p")
    reduced = build(model="m", reduce="evs", keep=0.5).identity()["mode"]
    assert reduced == {"name": "anyres", "reduce": "evs", "keep": 0.5}
    assert build(model="m", reduce="evs").mode.keep == 0.25  # the default ratio is written into the id
    assert build(model="m", reduce="evs", keep=1).identity() == build(model="m", reduce="evs", keep=1.0).identity()


@pytest.mark.parametrize("argv", [["--keep", "0.5"], ["--max-visual-tokens", "9"], ["--reduce", "none", "--keep", "1"],
                                  ["--reduce", "evs", "--keep", "0.5", "--max-visual-tokens", "9"],
                                  ["--reduce", "evs", "--keep", "0"], ["--reduce", "evs", "--keep", "1.5"],
                                  ["--reduce", "fastest"]])
def test_a_ratio_without_a_method_or_out_of_range_is_one_line(argv, tiny_dir, clip_file, capsys):
    from vqa_cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["ask", clip_file, QUESTION, "--model", str(tiny_dir), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err


def test_eval_runs_each_reduction_side_by_side(tiny_dir, tmp_path, capsys, monkeypatch):
    from vqa_cli.cli import main
    from vqa_cli.model.engine import Engine

    videos = tmp_path / "videos"
    videos.mkdir()
    make_clip(str(videos / "a.mp4"), 20, fps=10.0)
    rows = [{"video": "a.mp4", "question": f"How many {thing}?", "candidates": ["one", "two"], "answer": "one"}
            for thing in ("cats", "dogs")]
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "action_count.json").write_text(json.dumps(rows))
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    encodes = []
    original = Engine.encode
    monkeypatch.setattr(Engine, "encode", lambda self, px: encodes.append(1) or original(self, px))
    argv = ["eval", str(tmp_path / "json" / "action_count.json"), "--format", "mvbench", "--videos", str(videos),
            "--model", str(tiny_dir), "--frames", "4", "--dtype", "float32", "--max-new-tokens", "2",
            "--out", str(out), "--summary", str(summary), "--reduce", "none,evs", "--keep", "0.25"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and len(encodes) == 1  # one clip, encoded once for both settings
    printed = capsys.readouterr()
    assert "anyres evs 0.25" in printed.out + printed.err
    s = json.loads(summary.read_text())
    assert list(s["modes"]) == ["anyres", "anyres evs 0.25"]
    assert s["modes"]["anyres"]["reduction"] is None
    assert s["modes"]["anyres evs 0.25"]["reduction"] == {"reduce": "evs", "keep": 0.25}
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 4 and len({r["settings_id"] for r in recs}) == 2
    assert sorted(str(r["reduction"]) for r in recs) == ["None", "None"] + [str({"reduce": "evs", "keep": 0.25})] * 2


def test_the_benchmark_table_states_ratios_against_none():
    from benchmarks import reduce as bench

    row = {"model": "m", "reduce": "none", "keep": 1.0, "visual_tokens": 400, "prompt_tokens": 420, "encode_s": 6.0,
           "reduce_s": 1.0, "prefill_s": 9.0, "prefill_cpu_s": 16.0, "kv_bytes": 4 * 2**20}
    fast = dict(row, reduce="evs", keep=0.25, visual_tokens=100, reduce_s=0.5, prefill_s=2.0, prefill_cpu_s=4.0,
                kv_bytes=2**20)
    line = bench.table([row, fast]).splitlines()[-1]
    # TTFT 10 / 2.5 = 4x; CPU 16 / 4 = 4x; from pixels 16 / 8.5; KV 1/4
    assert "| 2.50 | 4.00x | 4.00 | 4.00x | 8.50 | 1.88x | 1.0 | 0.250 |" in line


@pytest.mark.heavy
def test_the_benchmark_runs_end_to_end_at_the_tiny_geometry(tmp_path, capsys):
    from benchmarks import reduce as bench

    assert bench.main(["--geometry", "tiny", "--frames", "8", "--repeats", "1", "--workdir", str(tmp_path),
                       "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["reduce"] for r in rows] == ["none", "evs", "vidcom2"]
    assert rows[1]["visual_tokens"] == math.floor((rows[0]["visual_tokens"] - 1) * 0.25) + 1
    assert all(r["kv_bytes"] * rows[0]["prompt_tokens"] == rows[0]["kv_bytes"] * r["prompt_tokens"] for r in rows)


def test_a_caption_rerun_reads_the_reduced_tokens_and_answers_as_a_fresh_run(qwen_dir, clip_file, tmp_path, capsys,
                                                                             monkeypatch):
    """``caption --feature-cache``: the second prompt reduces nothing and answers as a run without the cache does
    (Qwen3-VL: the kept tokens' places come back from the disk with them)."""
    from tests.cli_run import run

    calls = []
    monkeypatch.setattr(methods, "reduce_grid", lambda *a, **k: calls.append(1) or _reduce_grid(*a, **k))
    base = ["caption", clip_file, "--model", qwen_dir, "--max-new-tokens", "5", "--dtype", "float32",
            "--reduce", "evs", "--keep", "0.5", "--prompt", "List the objects."]
    code, _, err = run(base + ["--feature-cache", str(tmp_path / "f"), "--prompt", "Describe it.",
                               "--out", str(tmp_path / "one.jsonl")], capsys)
    assert code == 0 and len(calls) == 1, err
    code, _, err = run(base + ["--feature-cache", str(tmp_path / "f"), "--out", str(tmp_path / "two.jsonl")], capsys)
    assert code == 0 and len(calls) == 1, err
    code, _, err = run(base + ["--out", str(tmp_path / "fresh.jsonl")], capsys)
    assert code == 0 and len(calls) == 2, err
    cached, fresh = (json.loads((tmp_path / f"{n}.jsonl").read_text()) for n in ("two", "fresh"))
    assert cached["caption"] == fresh["caption"] and cached["visual_tokens"] == fresh["visual_tokens"] == 9
    assert "encode" not in cached["timings"] and cached["settings_id"] == fresh["settings_id"]


def test_a_servers_reduction_holds_for_every_mode_and_a_request_replaces_it():
    from vqa_cli.wire import apply_fields

    served = build(model="m", reduce="evs", keep=0.5)
    assert apply_fields(served, {"mode": "slowfast"}).mode.to_dict() == {"name": "slowfast", "reduce": "evs",
                                                                         "keep": 0.5}
    assert apply_fields(served, {"max_visual_tokens": 900}).mode.to_dict() == {
        "name": "anyres", "reduce": "evs", "max_visual_tokens": 900}
    assert apply_fields(served, {"reduce": "none"}).mode.to_dict() == {"name": "anyres"}
    assert apply_fields(served, {"reduce": "vidcom2"}).mode.keep == 0.25  # a method named: its default ratio
    for bad in ({"keep": 0}, {"keep": 1.5}, {"reduce": "fastv"}, {"max_visual_tokens": 0}, {"keep": "half"}):
        with pytest.raises(UsageError):
            apply_fields(served, bad)
    with pytest.raises(UsageError, match="--keep sets a reduction"):
        apply_fields(build(model="m"), {"keep": 0.5})


@pytest.mark.heavy  # a server starts (about 15 s)
def test_a_served_video_is_reduced_once_and_a_request_may_ask_for_none(tiny_dir, clip_file, tmp_path):
    """``vqa serve --reduce evs --keep 0.5``: a second question about the video takes the reduced tokens from the
    feature cache (no decode, no tower); a request's ``"reduce": "none"`` is another key: the unreduced tokens."""
    import shutil

    from tests.serve_helpers import start

    shutil.copy(clip_file, tmp_path / "a.mp4")
    srv = start(["--model", str(tiny_dir), "--media-root", str(tmp_path), "--frames", "4", "--max-new-tokens", "2",
                 "--dtype", "float32", "--reduce", "evs", "--keep", "0.5"])

    def ask(question: str, **fields: object) -> dict:
        status, reply = srv.post("/v1/chat/completions", {"model": str(tiny_dir), **fields, "messages": [
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "a.mp4"}},
                                         {"type": "text", "text": question}]}]})
        assert status == 200, reply
        return reply["vqa"]

    try:
        first, second, plain = ask("What is it?"), ask("And then?"), ask("What is it?", reduce="none")
    finally:
        srv.stop()
    assert first["mode_settings"]["reduce"] == "evs" and first["visual_tokens"] * 2 == plain["visual_tokens"]
    assert second["cache"]["features"] == "memory" and not {"decode", "encode"} & set(second["timings"])
    assert plain["cache"]["features"] != "memory" and "reduce" not in plain["mode_settings"]
