"""vqa eval: annotation readers, prompts, letter extraction, scoring, the clustered interval, the pipeline."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from vqa_cli.jobs.eval import (
    Evaluator,
    build,
    by_generation,
    clustered_ci,
    extract,
    group_items,
    guess,
    letter_ids,
    read_benchmark,
    read_items,
    run_eval,
)
from vqa_cli.jobs.eval._prompts import answer_prefix
from vqa_cli.jobs.eval._run import eval_sid

# ---- fixtures: a few items per format, as each benchmark publishes them -----------------------------

MVBENCH = [{"video": "v1.mp4", "question": "What moves?", "candidates": ["a box", "a ball", "a cat"],
            "answer": "a ball"},
           {"video": "v1.mp4", "question": "What colour?", "candidates": ["red", "blue"], "answer": "red",
            "start": 0.5, "end": 2.0},
           {"video": "v2.mp4", "question": "How many?", "candidates": ["one", "two", "three"], "answer": "three"}]
VIDEOMME = [{"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy",
             "question_id": "001-1", "task_type": "Counting Problem", "videoID": "v1", "question": "How many stars?",
             "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."], "answer": "C"},
            {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy",
             "question_id": "001-2", "task_type": "OCR Problems", "videoID": "v1", "question": "What is written?",
             "options": ["A. Sun.", "B. Moon.", "C. Mars.", "D. Venus."], "answer": "A"}]
EGOSCHEMA = [{"video_idx": "v2", "question_idx": "q1", "question": "What is c doing?",
              "option": ["A. cooking", "B. reading", "C. cleaning", "D. sleeping", "E. running"], "answer": "2"}]
NEXTQA = [{"video": 4010069381, "frame_count": 369, "width": 640, "height": 480, "question": "why did the boy run",
           "answer": 1, "qid": 6, "type": "CW", "a0": "to hide", "a1": "to play", "a2": "to eat", "a3": "to sleep",
           "a4": "to swim"}]
PERCEPTION = [{"video_name": "video_10", "question_id": "p1", "question": "What is on the table?",
               "options": ["a cup", "a pen", "a book"], "answer_id": 2, "area": "memory", "reasoning": "descriptive"}]
LONGVIDEO = [{"video_path": "lv1.mp4", "subtitle_path": "lv1_en.json", "question": "What happens first?",
              "option0": "x", "option1": "y", "option2": "z", "option3": "w", "option4": "N/A", "correct_choice": 3,
              "duration_group": 600, "id": "lv-1", "question_category": "TOS"}]
MLVU = [{"video": "m1.mp4", "duration": 400, "question": "What is the main topic?",
         "candidates": ["cars", "food", "music", "sport"], "answer": "music", "question_type": "topic_reasoning"}]
# The same question as sy1998/MLVU_dev holds it (lmms-eval's MLVU dataset): options inside, the answer a letter.
MLVU_HF = [{"video_name": "m1.mp4", "duration": 400, "question": "What is the main topic?\n(A) cars\n(B) food\n"
            "(C) music\n(D) sport\n", "candidates": ["cars", "food", "music", "sport"], "answer": "C",
            "task_type": "topic_reasoning", "question_id": "Q0"}]
TEMPCOMPASS = {"t1": {"direction": [{"question": "What is the direction?\nA. left\nB. right\nC. up",
                                     "answer": "B. right"}]}}
# A question whose stem ends in a space: the prompt keeps the text as published.
TEMPCOMPASS_SPACED = {"t2": {"speed": [{"question": "What is the direction? \nA. left\nB. right\nC. up",
                                        "answer": "B. right"}]}}
GENERIC = [{"id": "g1", "video": "v1.mp4", "question": "Is it day?", "options": ["yes", "no"], "answer": "A",
            "category": "time", "start": 0.0, "end": 1.5}]


def _write(path: Path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return str(path)


def test_readers_every_format(tmp_path):
    mv = read_items(_write(tmp_path / "mvb" / "action_count.json", MVBENCH), "mvbench")
    assert [(it.qid, it.answer, it.category) for it in mv] == [
        ("action_count/0", 1, "action_count"), ("action_count/1", 0, "action_count"), ("action_count/2", 2,
                                                                                        "action_count")]
    assert (mv[1].start, mv[1].end) == (0.5, 2.0) and mv[0].start is None
    vm = read_items(_write(tmp_path / "vm.json", VIDEOMME), "videomme")
    assert vm[0].options == ("One.", "Two.", "Three.", "Four.") and vm[0].answer == 2 and vm[0].duration == "short"
    eg = read_items(_write(tmp_path / "eg.json", EGOSCHEMA), "egoschema")
    assert eg[0].options[2] == "cleaning" and eg[0].answer == 2 and eg[0].video == "v2"
    nq = read_items(_write(tmp_path / "nq.json", NEXTQA), "nextqa")
    assert nq[0].video == "4010069381" and nq[0].answer == 1 and len(nq[0].options) == 5 and nq[0].category == "CW"
    pt = read_items(_write(tmp_path / "pt.json", PERCEPTION), "perceptiontest")
    assert pt[0].answer == 2 and pt[0].category == "memory"
    lv = read_items(_write(tmp_path / "lv.json", LONGVIDEO), "longvideobench")
    assert lv[0].options == ("x", "y", "z", "w") and lv[0].answer == 3
    ml = read_items(_write(tmp_path / "ml.json", MLVU), "mlvu")
    assert ml[0].answer == 2 and ml[0].category == "topic_reasoning"
    tc = read_items(_write(tmp_path / "tc.json", TEMPCOMPASS), "tempcompass")
    assert tc[0].question == "What is the direction?" and tc[0].options == ("left", "right", "up") and tc[0].answer == 1
    # lmms-lab/TempCompass's multi-choice rows exported to JSON Lines: the same question
    rows = [{"video_id": "t1", "question": TEMPCOMPASS["t1"]["direction"][0]["question"], "answer": "B. right",
             "dim": "direction"}]
    tc_hf = read_items(_write(tmp_path / "tc.jsonl", rows), "tempcompass")[0]
    assert (tc_hf.video, tc_hf.question, tc_hf.options, tc_hf.answer, tc_hf.category) == (
        "t1", tc[0].question, tc[0].options, 1, "direction")
    gj = read_items(_write(tmp_path / "g.jsonl", GENERIC), "jsonl")
    assert gj[0].answer == 0 and (gj[0].start, gj[0].end) == (0.0, 1.5) and gj[0].category == "time"


def test_reader_errors(tmp_path):
    from vqa_cli.errors import InputNotFoundError, UsageError

    with pytest.raises(InputNotFoundError):
        read_items(str(tmp_path / "missing.json"), "mvbench")
    with pytest.raises(UsageError, match="no field 'candidates'"):
        read_items(_write(tmp_path / "x.json", VIDEOMME), "mvbench")
    # An answer that is not among the candidates: that question is left out and counted (MLVU's 2_needle has two),
    # not the whole file; a file with nothing else to score is a usage error naming it.
    bad = [dict(MVBENCH[0], answer="a dog")]
    with pytest.raises(UsageError, match=r"no question to score in .*y\.json .*1 question whose answer is not"):
        read_items(_write(tmp_path / "y.json", bad), "mvbench")
    bench = read_benchmark(_write(tmp_path / "z.json", bad + MVBENCH[1:]), "mvbench")
    assert len(bench.items) == 2 and bench.left_out == {"answer_not_in_options": 1}


def test_groups_share_clip_and_honour_bounds(tmp_path):
    items = read_items(_write(tmp_path / "a.json", MVBENCH), "mvbench")
    groups = group_items(items, "/videos")
    assert [(Path(g.path).name, g.start, g.end, len(g.items)) for g in groups] == [
        ("v1.mp4", None, None, 1), ("v1.mp4", 0.5, 2.0, 1), ("v2.mp4", None, None, 1)]
    vm = read_items(_write(tmp_path / "vm.json", VIDEOMME), "videomme")
    assert [len(g.items) for g in group_items(vm, "/videos", 1.0, 3.0)] == [2]


# ---- prompts: the exact strings ------------------------------------------------------------------------


def test_prompts_exact(tmp_path):
    mv = read_items(_write(tmp_path / "action_count.json", MVBENCH), "mvbench")[0]
    assert build(mv, "mvbench", "official") == (
        "Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement "
        "of objects, and the action and pose of persons. Based on your observations, select the best option that "
        "accurately addresses the question.\nQuestion: What moves?\nOptions:\n(A) a box\n(B) a ball\n(C) a cat\n"
        "Only give the best option.")
    assert build(mv, "mvbench", "lmms-eval") == (
        "Question:What moves?\nOption:\n(A) a box\n(B) a ball\n(C) a cat\n"
        "Answer with the option's letter from the given choices directly.")
    vm = read_items(_write(tmp_path / "vm.json", VIDEOMME), "videomme")[0]
    assert build(vm, "videomme", "official") == (
        "Select the best answer to the following multiple-choice question based on the video. Respond with only "
        "the letter (A, B, C, or D) of the correct option.\nHow many stars?\nA. One.\nB. Two.\nC. Three.\nD. Four.\n"
        "The best answer is:")
    assert build(vm, "videomme", "lmms-eval").startswith(
        "Select the best answer to the following multiple-choice question based on the video and the subtitles.")
    # MLVU: its own evaluation (videochat2/choice_bench.py: the system prompt first here, qa_template, then
    # "\nOnly give the best option."; the answer prefilled with "Best option:(") and lmms-eval's mlvu_dev
    # (doc["question"] + post_prompt "\nOnly give the best option.\nBest option: (" in the user turn).
    ml = read_items(_write(tmp_path / "ml.json", MLVU), "mlvu")[0]
    assert build(ml, "mlvu", "official") == (
        "Carefully watch this video and pay attention to every detail. Based on your observations, select the best "
        "option that accurately addresses the question.\nQuestion: What is the main topic?\nOptions:\n(A) cars\n"
        "(B) food\n(C) music\n(D) sport\nOnly give the best option.")
    assert answer_prefix("mlvu", "official") == "Best option:("
    # lmms-eval sends the `question` field of sy1998/MLVU_dev, which holds the question and "(A) x\n" lines.
    lmms = ("What is the main topic?\n(A) cars\n(B) food\n(C) music\n(D) sport\n\nOnly give the best option.\n"
            "Best option: (")
    assert build(ml, "mlvu", "lmms-eval") == lmms
    assert answer_prefix("mlvu", "lmms-eval") == ""
    # The same question as exported from sy1998/MLVU_dev: read alike, and its question text sent as given.
    hf = read_items(_write(tmp_path / "ml.jsonl", MLVU_HF), "mlvu")[0]
    assert (hf.question, hf.options, hf.answer, hf.video, hf.qid) == (
        ml.question, ml.options, ml.answer, "m1.mp4", "Q0")
    assert build(hf, "mlvu", "lmms-eval") == lmms and build(hf, "mlvu", "official") == build(ml, "mlvu", "official")
    # TempCompass: the question as published (options inside) + "\nPlease directly give the best option:", both.
    tc = read_items(_write(tmp_path / "tc.json", TEMPCOMPASS_SPACED), "tempcompass")[0]
    for protocol in ("official", "lmms-eval"):
        assert build(tc, "tempcompass", protocol) == (
            "What is the direction? \nA. left\nB. right\nC. up\nPlease directly give the best option:")
        assert answer_prefix("tempcompass", protocol) == ""
    eg = read_items(_write(tmp_path / "eg.json", EGOSCHEMA), "egoschema")[0]
    assert build(eg, "egoschema", "lmms-eval") == (
        "What is c doing?\nA. cooking\nB. reading\nC. cleaning\nD. sleeping\nE. running\n"
        "Answer with the option's letter from the given choices directly.")


# ---- letter extraction by each protocol's rules ----------------------------------------------------------

OPTS4 = ("one", "two", "three", "four")


@pytest.mark.parametrize(("fmt", "protocol", "text", "letter"), [
    ("videomme", "official", "C", "C"),
    ("videomme", "official", "The best answer is B.", "B"),
    ("videomme", "official", "The answer is (D) four", "D"),
    ("videomme", "official", "there are many words in this answer and none of them is an option letter at all", None),
    ("videomme", "official", "no idea", None),
    ("mvbench", "lmms-eval", "B. a ball", "B"),
    ("mvbench", "lmms-eval", "(C) a cat", "C"),
    ("mvbench", "lmms-eval", "a ball", "A"),  # lower-cased first: the article reads as A, as in lmms-eval
    ("mvbench", "lmms-eval", "the ball", None),
    ("mvbench", "official", "(B) a ball", "B"),
    ("mvbench", "official", "A.", "A"),
    ("mvbench", "official", "The ball", None),
    ("mvbench", "official", "(", None),  # an empty answer after the prefix: not "(a)"
    ("egoschema", "lmms-eval", "C", "C"),
    ("egoschema", "lmms-eval", "C. three.", "C"),
    ("egoschema", "lmms-eval", "The answer is C", None),
    ("longvideobench", "lmms-eval", "d. four", "D"),
    ("longvideobench", "lmms-eval", "The answer is D", None),
    ("mlvu", "official", "(C) music", "C"),  # "(" from the prefix + "C) music"
    ("mlvu", "official", "(C", "C"),
    ("mlvu", "official", "(C. music", None),  # check_ans: the text before ")" must be the letter alone
    ("mlvu", "official", "(c) music", None),
    ("mlvu", "official", "(", None),
    ("mlvu", "lmms-eval", "C) music", "C"),
    ("mlvu", "lmms-eval", "(B) two", "B"),
    ("mlvu", "lmms-eval", "A", "A"),
    ("mlvu", "lmms-eval", "A. one", None),  # no ")": the whole answer is compared with the letter
    ("mlvu", "lmms-eval", ") A", None),
    ("tempcompass", "lmms-eval", "B", "B"),
    ("tempcompass", "official", "B. two", "B"),
    ("tempcompass", "official", "D) four", "D"),
    ("tempcompass", "official", "The answer is B", None),  # the sources ask an LLM judge here
    ("tempcompass", "lmms-eval", "b. two", None),
    ("nextqa", "official", "The answer is B", "B"),
    ("nextqa", "official", "E", None),  # not among four options
])
def test_extract(fmt, protocol, text, letter):
    assert extract(text, fmt, protocol, OPTS4) == letter


def test_unparsed_counting(tmp_path):
    vm = read_items(_write(tmp_path / "vm.json", VIDEOMME), "videomme")[0]
    official = by_generation("no idea", vm, "videomme", "official")
    lmms = by_generation("no idea", vm, "videomme", "lmms-eval")
    assert official.unparsed and not official.counted and official.prediction is None
    assert lmms.unparsed and lmms.counted and lmms.prediction is None
    lv = read_items(_write(tmp_path / "lv.json", LONGVIDEO), "longvideobench")[0]
    g = by_generation("hmm", lv, "longvideobench", "official")
    assert g.guessed and g.counted and g.prediction == guess("lv-1", 4) == guess("lv-1", 4)
    mv = read_items(_write(tmp_path / "action_count.json", MVBENCH), "mvbench")[0]
    assert not by_generation("", mv, "mvbench", "lmms-eval").counted
    assert by_generation("the ball", mv, "mvbench", "lmms-eval").counted


# ---- the clustered interval against an independent computation ------------------------------------------


def test_clustered_ci_matches_sandwich_estimator():
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(3)
    clusters = [f"v{i // 3}" for i in range(60)] + ["w0"] * 5
    y = rng.integers(0, 2, len(clusters)).astype(float)
    # OLS of y on a constant with the cluster-robust (CR1-style G/(G-1)) sandwich variance.
    x = np.ones((len(y), 1))
    bread = np.linalg.inv(x.T @ x)
    beta = bread @ x.T @ y
    u = y - x @ beta
    names = sorted(set(clusters))
    meat = np.zeros((1, 1))
    for g in names:
        idx = [i for i, c in enumerate(clusters) if c == g]
        s = x[idx].T @ u[idx]
        meat += np.outer(s, s)
    groups = len(names)
    var = groups / (groups - 1) * (bread @ meat @ bread)[0, 0]
    half = 1.959963984540054 * math.sqrt(var)
    low, high = clustered_ci(list(y), clusters)
    assert low == pytest.approx(max(0, beta[0] - half)) and high == pytest.approx(min(1, beta[0] + half))
    # Clustering widens the interval when questions of a video agree.
    same = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0] * 5
    by_video = [f"v{i // 3}" for i in range(30)]
    lo_c, hi_c = clustered_ci(same, by_video)
    lo_i, hi_i = clustered_ci(same, [str(i) for i in range(30)])
    assert hi_c - lo_c > hi_i - lo_i
    assert clustered_ci([1.0, 0.0], ["a", "a"]) == (0.0, 1.0)


# ---- the pipeline on the tiny checkpoint ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from tests.clips import make_clip

    root = tmp_path_factory.mktemp("evalbench")
    for name in ("v1", "v2"):
        make_clip(str(root / "videos" / f"{name}.mp4") if (root / "videos").mkdir(exist_ok=True) is None else "",
                  30, fps=10.0)
    rows = MVBENCH + [{"video": "v2.mp4", "question": "Which way?", "candidates": ["left", "right"],
                       "answer": "left"}]
    return root, _write(root / "mvb" / "action_count.json", rows)


def _settings(tiny_dir, mode="anyres", **kw):
    from vqa_cli.settings import ModeSettings, RunSettings

    return RunSettings(model=str(tiny_dir), mode=ModeSettings(mode), frames=4, dtype="float32", max_new_tokens=6,
                       **kw)


def _evaluate(engine, settings, groups, score="generate", protocol="official"):
    sids = [eval_sid(s, "mvbench", protocol, score) for s in settings]
    out = []

    class Sink:
        def write(self, rec):
            out.append(rec)

    Evaluator(engine, settings, "mvbench", protocol, score, sids).run(groups, Sink())
    return out


def test_likelihood_matches_direct_logits(tiny_dir, engine_factory, bench):
    import torch

    from vqa_cli.model import prompt
    from vqa_cli.model.engine import sample_clip

    root, ann = bench
    engine = engine_factory(frames=4)
    items = read_items(ann, "mvbench")
    groups = group_items(items, str(root / "videos"))
    recs = _evaluate(engine, [_settings(tiny_dir)], groups, score="likelihood")
    assert len(recs) == len(items) and all(r["error"] is None for r in recs)
    ids = letter_ids(engine.checkpoint.tokenizer, 3)
    for rec, group in zip(recs, [g for g in groups for _ in g.items], strict=True):
        item = next(it for it in group.items if it.qid == rec["qid"])
        clip, _ = sample_clip(group.path, replace(engine.settings, start=group.start, end=group.end), 4)
        _, features = engine.budgeted_tokens(clip, "", {})
        ids_t, _ = engine.prompt_inputs(build(item, "mvbench", "official"), clip, features)
        prefix = engine.checkpoint.tokenizer.encode("Best option:(", add_special_tokens=False)
        ids_t = torch.cat([ids_t, torch.tensor([prefix])], dim=1)  # the official answer prefix, prefilled
        with torch.inference_mode():
            embeds = prompt.embed(engine.model, ids_t, features, engine.placeholder_id(clip))
            logits = engine.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids_t)).logits[0, -1]
        logp = torch.log_softmax(logits.float(), -1)
        direct = {"ABC"[k]: max(float(logp[i]) for i in ids[k]) for k in range(len(item.options))}
        assert rec["letter_logprobs"] == pytest.approx(direct, abs=1e-3)
        assert rec["prediction"] == max(direct, key=direct.get)


def test_shared_encode_equals_one_question_at_a_time(tiny_dir, engine_factory, bench):
    root, ann = bench
    engine = engine_factory(frames=4)
    items = read_items(ann, "mvbench")
    shared = _evaluate(engine, [_settings(tiny_dir)], group_items(items, str(root / "videos")), protocol="lmms-eval")
    alone = []
    for it in items:
        alone += _evaluate(engine, [_settings(tiny_dir)], group_items([it], str(root / "videos")),
                           protocol="lmms-eval")
    key = lambda r: (r["qid"], r["raw_answer"], r["prediction"])  # noqa: E731
    assert sorted(map(key, shared)) == sorted(map(key, alone))
    # And the same as a plain `vqa ask` of the same prompt (no cache at all).
    from vqa_cli.model.engine import sample_clip

    first = next(r for r in shared if r["qid"] == items[0].qid)
    clip, _ = sample_clip(first["video"], engine.settings, 4)
    plain = engine.with_settings(replace(engine.settings, max_new_tokens=6)).answer(
        clip, build(items[0], "mvbench", "lmms-eval"))
    assert plain.text.strip() == first["raw_answer"]


def test_multi_mode_equals_separate_runs(tiny_dir, engine_factory, bench, monkeypatch):
    from vqa_cli.jobs.eval import _evaluate as answering
    from vqa_cli.model.engine import Engine

    root, ann = bench
    engine = engine_factory(frames=4)
    groups = group_items(read_items(ann, "mvbench"), str(root / "videos"))
    modes = [_settings(tiny_dir, "anyres"), _settings(tiny_dir, "slowfast")]
    calls = {"decode": 0, "encode": 0}

    def counted(name, fn):
        def wrapper(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapper

    with monkeypatch.context() as patch:
        patch.setattr(answering, "_decode", counted("decode", answering._decode))
        patch.setattr(Engine, "encode", counted("encode", Engine.encode))
        combined = _evaluate(engine, modes, groups)
    assert calls == {"decode": len(groups), "encode": len(groups)}  # once per clip for both modes
    separate = _evaluate(engine, modes[:1], groups) + _evaluate(engine, modes[1:], groups)
    key = lambda r: (r["mode"], r["qid"], r["raw_answer"], r["settings_id"])  # noqa: E731
    assert sorted(map(key, combined)) == sorted(map(key, separate)) and len(combined) == 8
    assert len({r["settings_id"] for r in combined}) == 2


def test_cli_json_summary_and_resume(tiny_dir, bench, tmp_path, capsys):
    from vqa_cli.cli import main

    root, ann = bench
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    argv = ["eval", ann, "--format", "mvbench", "--videos", str(root / "videos"), "--model", str(tiny_dir),
            "--frames", "4", "--dtype", "float32", "--out", str(out), "--summary", str(summary), "--json",
            "--max-new-tokens", "4"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"accuracy", "n", "unparsed", "ci95", "by_category"} <= printed.keys()
    assert printed["n"] + printed["excluded"] == 4 and printed == json.loads(summary.read_text())
    lines = out.read_text().splitlines()
    assert len(lines) == 4
    with pytest.raises(SystemExit):  # a re-run answers nothing again
        main(argv)
    assert out.read_text().splitlines() == lines
    with pytest.raises(SystemExit) as exc:
        main(argv[:-2] + ["--mode", "anyres,bogus"])
    assert exc.value.code == 2


@pytest.mark.heavy
def test_resume_after_kill_9(tiny_dir, tmp_path):
    from tests.clips import make_clip

    videos = tmp_path / "videos"
    videos.mkdir()
    rows = []
    for v in range(6):
        make_clip(str(videos / f"k{v}.mp4"), 30, fps=10.0)
        rows += [{"video": f"k{v}.mp4", "question": f"Q{q}?", "candidates": ["x", "y", "z"], "answer": "y"}
                 for q in range(3)]
    ann = _write(tmp_path / "ann" / "t.json", rows)
    argv = [sys.executable, "-m", "vqa_cli", "eval", ann, "-f", "mvbench", "--videos", str(videos), "--model",
            str(tiny_dir), "--frames", "4", "--dtype", "float32", "--max-new-tokens", "8"]
    clean = tmp_path / "clean.jsonl"
    subprocess.run([*argv, "--out", str(clean)], check=True, capture_output=True)
    out = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([*argv, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(out, "a") as f:  # a cut-off last line, as a kill mid-write leaves
        f.write('{"video": "cut')
    subprocess.run([*argv, "--out", str(out)], check=True, capture_output=True)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = [json.loads(line) for line in clean.read_text().splitlines()]
    assert sorted(r["qid"] for r in got) == sorted(r["qid"] for r in want)
    assert {r["qid"]: r["raw_answer"] for r in got} == {r["qid"]: r["raw_answer"] for r in want}


@pytest.fixture(scope="module")
def letters_dir(tiny_dir, bench, tmp_path_factory):
    """The tiny checkpoint with a shared direction added to its option letters' output rows, so that the letters
    reach the first token's 20 most likely (the most a server returns): the server's likelihood path then has
    every letter to compare. The direction is the mean of the final hidden states of a few probe questions
    (recovered from their logits); each letter keeps half of its own row, so the letters still differ and still
    depend on the input."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from vqa_cli.model import prompt
    from vqa_cli.model.engine import sample_clip
    from vqa_cli.model.session import open_model
    from vqa_cli.settings import RunSettings

    root, _ = bench
    path = tmp_path_factory.mktemp("letters") / "llava-next-video"
    shutil.copytree(tiny_dir, path)
    settings = RunSettings(model=str(path), frames=4, dtype="float32")
    engine = open_model(settings, ["?"]).engine
    head = engine.model.get_output_embeddings().weight.detach()
    states = []
    for video in ("v1", "v2"):
        clip, _ = sample_clip(str(root / "videos" / f"{video}.mp4"), settings, 4)
        _, features = engine.budgeted_tokens(clip, "", {})
        for question in ("What is it?", "Which one?\nA. this\nB. that"):
            ids, _ = engine.prompt_inputs(question, clip, features)
            with torch.inference_mode():
                embeds = prompt.embed(engine.model, ids, features, engine.placeholder_id(clip))
                logits = engine.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits[0, -1]
            state = torch.linalg.lstsq(head, logits[:, None].float()).solution[:, 0]
            states.append(state / state.norm())
    direction = torch.stack(states).mean(0)
    direction = direction / direction.norm() * head.norm(dim=1).mean() * 3
    weights = load_file(path / "model.safetensors")
    name = next(k for k in weights if k.endswith("lm_head.weight"))
    for letter in letter_ids(engine.checkpoint.tokenizer, 3):
        weights[name][letter] = direction + 0.5 * weights[name][letter]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.mark.heavy
def test_server_gives_the_local_records(letters_dir, bench, tmp_path):
    from tests.serve_helpers import start
    from vqa_cli.errors import UsageError

    tiny_dir = letters_dir
    root, ann = bench
    compared = full = 0
    # Started with the run's frames and length, so that it loads with the same RoPE factor as a local run.
    srv = start(["--model", str(tiny_dir), "--dtype", "float32", "--media-root", str(root), "--frames", "4",
                 "--max-new-tokens", "6"])
    try:
        for score in ("generate", "likelihood"):
            local, remote = tmp_path / f"local-{score}.jsonl", tmp_path / f"remote-{score}.jsonl"
            run_eval([_settings(tiny_dir)], ann, "mvbench", str(root / "videos"), out=str(local), score=score,
                     protocol="lmms-eval")
            settings = replace(_settings(tiny_dir), dtype=None)
            run_eval([settings], ann, "mvbench", str(root / "videos"), out=str(remote), score=score,
                     protocol="lmms-eval", server=srv.url, model_given=False)
            here = {r["qid"]: r for r in map(json.loads, local.read_text().splitlines())}
            there = {r["qid"]: r for r in map(json.loads, remote.read_text().splitlines())}
            assert here.keys() == there.keys() and all(r["error"] is None for r in there.values())
            for qid, r in there.items():
                if score == "generate":
                    assert r["raw_answer"] == here[qid]["raw_answer"] and r["settings_id"] == here[qid]["settings_id"]
                else:  # the letters the server returned carry the local log-probabilities
                    assert r["unparsed"] == (r["letter_logprobs"] == {}) and r["unparsed"] == (r["prediction"] is None)
                    if r["letter_logprobs"] and len(r["letter_logprobs"]) == len(r["options"]):
                        full += 1
                        assert r["prediction"] == here[qid]["prediction"]
                    for letter, value in r["letter_logprobs"].items():
                        compared += 1
                        assert value == pytest.approx(here[qid]["letter_logprobs"][letter], abs=1e-3)
        with pytest.raises(UsageError, match="cannot prefill"):  # official MVBench prefills the answer
            run_eval([settings], ann, "mvbench", str(root / "videos"), out=str(tmp_path / "x.jsonl"), server=srv.url,
                     model_given=False)
    finally:
        srv.stop()
    assert compared and full, (compared, full)  # the letters' rows were moved so that it happens


def test_likelihood_from_a_servers_top_logprobs(tmp_path):
    from vqa_cli.jobs.eval._remote import likelihood_from_top

    top = [{"token": "\u2581B", "logprob": -1.0}, {"token": "A", "logprob": -2.0}, {"token": "B", "logprob": -0.5}]
    item = read_items(_write(tmp_path / "action_count.json", MVBENCH), "mvbench")[0]
    scored = likelihood_from_top(top, item)
    assert scored.prediction == "B" and scored.logprobs == {"A": -2.0, "B": -0.5}
    assert likelihood_from_top([{"token": "x", "logprob": 0.0}, {"token": " ", "logprob": 0.0}], item).unparsed


def test_merge_keeps_one_record_per_question(tmp_path):
    from vqa_cli.jobs.eval._run import question_key
    from vqa_cli.output.writer import merge_parts

    out, part = tmp_path / "o.jsonl", tmp_path / "o.jsonl.part0of2"
    rec = {"video": "v", "settings_id": "s", "error": None}
    out.write_text(json.dumps({**rec, "qid": "q1", "error": "boom"}) + "\n")
    part.write_text("".join(json.dumps({**rec, "qid": q}) + "\n" for q in ("q1", "q2", "q3")))
    merge_parts(str(out), [str(part)], question_key)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["qid"], r["error"]) for r in got] == [("q1", None), ("q2", None), ("q3", None)]
    assert not part.exists()


@pytest.mark.heavy
def test_two_accelerate_processes_split_and_merge(tiny_dir, bench, tmp_path):
    import shutil

    if shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not installed")
    root, ann = bench
    out = tmp_path / "acc.jsonl"
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29600 + os.getpid() % 1000),
           "-m", "vqa_cli", "eval", ann, "-f", "mvbench", "--videos", str(root / "videos"), "--out", str(out),
           "--model", str(tiny_dir), "--frames", "4", "--max-new-tokens", "6", "--dtype", "float32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ,
                                                                               "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = tmp_path / "single.jsonl"
    run_eval([_settings(tiny_dir)], ann, "mvbench", str(root / "videos"), out=str(single))
    got = {r["qid"]: r["raw_answer"] for r in map(json.loads, out.read_text().splitlines())}
    want = {r["qid"]: r["raw_answer"] for r in map(json.loads, single.read_text().splitlines())}
    assert got == want and not list(tmp_path.glob("acc.jsonl.part*"))


def test_summary_counts_and_published_figure():
    from vqa_cli.jobs.eval._run import build_summary
    from vqa_cli.settings import RunSettings

    def rec(qid, video, correct, counted=True, unparsed=False, error=None, category="c1"):
        return {"video": video, "qid": qid, "correct": correct, "counted": counted, "unparsed": unparsed,
                "error": error, "settings_id": "s", "category": category, "task": "", "duration": "short"}

    recs = [rec("1", "a", True), rec("2", "a", False, category="c2"), rec("3", "b", False, counted=False,
                                                                          unparsed=True),
            rec("4", "b", False, error="boom"), rec("4", "b", True)]  # a retried error: its later record counts
    summary = build_summary(recs, [RunSettings(model="llava-video-7b")], ["s"], "videomme", "official", "generate", 1)
    assert (summary["accuracy"], summary["n"], summary["unparsed"], summary["excluded"]) == (round(2 / 3, 6), 3, 1, 1)
    assert summary["by_category"] == {"c1": {"accuracy": 1.0, "n": 2}, "c2": {"accuracy": 0.0, "n": 1}}
    assert summary["by_duration"] == {"short": {"accuracy": round(2 / 3, 6), "n": 3}}
    assert summary["category_mean"] == 0.5  # (c1: 2 of 2, c2: 0 of 1) / 2 categories, not 2 of 3 questions
    assert summary["published"]["accuracy"] == 63.3 and summary["errors"] == 0
    assert build_summary(recs, [RunSettings(model="other")], ["s"], "videomme", "official", "generate",
                         1)["published"] is None
    mlvu = build_summary(recs, [RunSettings(model="video-llava-7b")], ["s"], "mlvu", "official", "generate", 1)
    assert (mlvu["published"]["accuracy"], mlvu["published"]["frames"], mlvu["published"]["metric"]) == (
        47.3, 8, "category_mean")
    subs = build_summary(recs, [RunSettings(model="llava-video-7b", subtitles="auto")], ["s"], "videomme",
                         "official", "generate", 1)
    assert subs["published"]["subtitles"] and subs["published"]["accuracy"] != summary["published"]["accuracy"]
    assert build_summary(recs, [RunSettings(model="video-llava-7b")], ["s"], "nextqa", "official", "generate",
                         1)["published"] is None


def test_official_mvbench_prefills_the_answer_prefix(engine_factory, bench):
    from vqa_cli.jobs.eval._evaluate import prefixed_conversation
    from vqa_cli.model.engine import sample_clip

    root, _ = bench
    engine = engine_factory(frames=4)
    clip, _ = sample_clip(str(root / "videos" / "v1.mp4"), engine.settings, 4)
    features = engine.budgeted_tokens(clip, "", {})[1]
    messages = [{"role": "user", "text": "Q?"}]
    plain = prefixed_conversation(engine, clip, features, "").ids_for(messages)
    prefixed = prefixed_conversation(engine, clip, features, "Best option:(").ids_for(messages)
    extra = engine.checkpoint.tokenizer.encode("Best option:(", add_special_tokens=False)
    assert prefixed == plain + extra and extra
    # The answer is read after the prefix's "(": "A) a box" reads as "(A) a box".
    assert extract("(" + "B) a ball", "mvbench", "official", OPTS4) == "B"


def test_a_missing_video_gives_error_records(tiny_dir, engine_factory, bench):
    root, ann = bench
    engine = engine_factory(frames=4)
    items = read_items(ann, "mvbench")
    groups = group_items(items, str(root / "no-such-folder"))
    recs = _evaluate(engine, [_settings(tiny_dir)], groups)
    assert len(recs) == len(items) and all(r["error"] and r["prediction"] is None for r in recs)
    assert {r["error_kind"] for r in recs} == {"video"} and "no such file" in recs[0]["error"]


@pytest.mark.heavy
def test_every_family_answers_and_scores(family_dirs, bench):
    from vqa_cli.model.session import open_model
    from vqa_cli.settings import RunSettings

    root, ann = bench
    items = read_items(ann, "mvbench")[:1]
    groups = group_items(items, str(root / "videos"))
    for family, path in family_dirs.items():
        settings = RunSettings(model=str(path), frames=4, dtype="float32", max_new_tokens=4)
        engine = open_model(settings, ["?"]).engine
        for score in ("generate", "likelihood"):
            recs = _evaluate(engine, [settings], groups, score=score)
            assert len(recs) == 1 and recs[0]["error"] is None, (family, score, recs[0]["error"])
            if score == "likelihood":
                assert set(recs[0]["letter_logprobs"]) == {"A", "B", "C"}, family


def test_videomme_with_subtitles_gives_the_cues_at_the_sampled_frames(tiny_dir, tmp_path, capsys, monkeypatch):
    """Video-MME's with-subtitles setting: only the cues on screen at the sampled frames, under its header."""
    from tests.clips import make_clip
    from vqa_cli.cli import main
    from vqa_cli.model.conversation import Conversation
    from vqa_cli.video import sample_frames

    videos, subs = tmp_path / "videos", tmp_path / "subs"
    videos.mkdir(), subs.mkdir()
    video = make_clip(str(videos / "v1.mp4"), 90, fps=30.0, size=(160, 120))
    cues = [(i * 0.4, i * 0.4 + 0.3, f"line {i}") for i in range(8)]  # gaps: not every cue is on a sampled frame
    (subs / "v1.srt").write_text("".join(
        f"{i + 1}\n00:00:{a:06.3f} --> 00:00:{b:06.3f}\n{text}\n\n".replace(".", ",")
        for i, (a, b, text) in enumerate(cues)))
    times = sample_frames(video, 4).timestamps
    wanted = [text for a, b, text in cues if any(a <= t < b for t in times)]
    asked = []
    real = Conversation.ask

    def spy(self, question, **kw):
        asked.append(question)
        return real(self, question, **kw)

    monkeypatch.setattr(Conversation, "ask", spy)
    argv = ["eval", _write(tmp_path / "vm.json", VIDEOMME), "--format", "videomme", "--videos", str(videos),
            "--model", str(tiny_dir), "--frames", "4", "--max-new-tokens", "2", "--subtitles", str(subs),
            "--out", str(tmp_path / "r.jsonl")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0, capsys.readouterr().err
    head = "This video's subtitles are listed below:\n" + "\n".join(wanted) + "\n"
    assert wanted and len(asked) == 2 and all(q.startswith(head) for q in asked)
    assert "based on the video and the subtitles" in asked[0]
    with pytest.raises(SystemExit) as exc:  # subtitles change the answers: another settings_id, answered again
        main(argv[:-4] + ["--out", str(tmp_path / "r.jsonl")])
    plain = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len({r["settings_id"] for r in plain}) == 2 and len(asked) == 4
    assert not asked[2].startswith("This video's subtitles")
