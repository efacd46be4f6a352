"""vqa eval on benchmark files in the shapes their authors publish them (../shared/published/FORMATS.md).

Each fixture is written here, by the test, in the published structure (field names, nesting, CSV header,
answer encoding, folder layout, JSON indent style) with values of its own. The oracles are the fixtures
themselves: the number of questions the test wrote, the answer letter its published encoding means, and the
path the benchmark's layout puts each video at (decoys with the same file name elsewhere must not be taken).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.cli_run import run
from tests.clips import frame_image, frame_number, make_clip

LETTERS = "ABCDE"


def _clip(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_clip(str(path), 8, fps=4.0)


def _frames(folder: Path, count: int) -> None:
    """A folder of numbered jpg frames as MVBench's tvqa ones (00001.jpg, ...), each showing its own number."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, count + 1):
        cv2.imwrite(str(folder / f"{k:05d}.jpg"), cv2.cvtColor(frame_image(k, (64, 48)), cv2.COLOR_RGB2BGR))


def _json(path: Path, data, indent: int | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent))  # indent=4 files end without a newline, as published
    return str(path)


def _eval(capsys, tiny_dir, tmp_path, annotations, videos, *extra: str) -> tuple[int, dict, list[dict], str]:
    out = tmp_path / "records.jsonl"
    code, stdout, stderr = run(["eval", str(annotations), "--videos", str(videos), "--model", str(tiny_dir),
                                "--frames", "2", "--dtype", "float32", "--max-new-tokens", "2", "--out", str(out),
                                "--json", *extra], capsys)
    summary = json.loads(stdout) if code in (0, 1) and stdout.strip() else {}
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return code, summary, records, stderr


def _by_qid(records: list[dict]) -> dict[str, dict]:
    return {r["qid"]: r for r in records}


# ---- NExT-QA: val.csv + map_vid_vidorID.json, videos NExTVideo/<dir>/<video>.mp4 -------------------------

NEXTQA_HEADER = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                 "a0", "a1", "a2", "a3", "a4"]


def test_nextqa_csv_and_its_video_map(tiny_dir, tmp_path, capsys):
    root = tmp_path / "nextqa"
    root.mkdir()
    # "0071000003": a leading zero, which reading `video` as a number would lose (the map lookup then fails)
    rows = [["0071000003", 40, 64, 48, "what does the cat do first", 3, 0, "TN", "sleeps", "eats", "jumps", "runs",
             "sits"],
            ["0071000003", 40, 64, 48, "why is the cat on the table", 0, 4, "CW", "to rest", "to eat", "to play",
             "to hide", "to watch"],
            ["5500120044", 60, 64, 48, "how many dogs are there", 2, 1, "DC", "one", "two", "three", "four", "five"]]
    with open(root / "val.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(NEXTQA_HEADER)
        w.writerows(rows)
    vmap = {"0071000003": "0007/0071000003", "5500120044": "1203/5500120044"}
    (root / "map_vid_vidorID.json").write_text(json.dumps(vmap))  # one line, ", " and ": " separators
    for rel in vmap.values():
        _clip(root / "NExTVideo" / f"{rel}.mp4")
    _clip(root / "NExTVideo" / "0999" / "0071000003.mp4")  # same file name, another folder: the map decides
    code, summary, records, err = _eval(capsys, tiny_dir, tmp_path, root / "val.csv", root / "NExTVideo")
    assert code == 0, err
    assert "--format nextqa" in err  # auto-detected, said on stderr
    assert summary["n"] + summary["excluded"] == len(rows) == len(records)
    got = _by_qid(records)
    for r in rows:
        rec = got[f"{r[0]}-{r[6]}"]
        assert rec["answer"] == LETTERS[r[5]] and rec["options"] == r[8:13]
        assert rec["video"] == str(root / "NExTVideo" / f"{vmap[r[0]]}.mp4")


# ---- EgoSchema: questions.json (no answers) + subset_answers.json beside ------------------------------------


def _egoschema(root: Path) -> tuple[list[dict], dict]:
    uids = ["0b5c6a1e-0000-4000-8000-00000000000a", "0b5c6a1e-0000-4000-8000-00000000000b",
            "0b5c6a1e-0000-4000-8000-00000000000c"]
    questions = [{"q_uid": u, "google_drive_id": f"drive{k}", "question": f"what is c doing in part {k}?",
                  **{f"option {j}": f"c does thing {j} of {k}" for j in range(5)}} for k, u in enumerate(uids)]
    answers = {uids[0]: 4, uids[2]: 1, "0b5c6a1e-0000-4000-8000-0000000000ff": 0}  # one for an absent question
    _json(root / "questions.json", questions)
    _json(root / "subset_answers.json", answers)
    for u in [*uids, *answers]:
        _clip(root / "videos" / f"{u}.mp4")
    return questions, answers


def test_egoschema_questions_with_the_answers_beside(tiny_dir, tmp_path, capsys):
    root = tmp_path / "egoschema"
    questions, answers = _egoschema(root)
    code, summary, records, err = _eval(capsys, tiny_dir, tmp_path, root / "questions.json", root)
    assert code == 0, err
    assert "--format egoschema" in err
    answered = [q for q in questions if q["q_uid"] in answers]
    assert summary["n"] + summary["excluded"] == len(answered) == len(records) == 2
    # the question without an answer is not asked; the answer without a question is counted
    assert summary["left_out"] == {"no_answer": 1, "answers_without_question": 1}
    for q in answered:
        rec = _by_qid(records)[q["q_uid"]]
        assert rec["answer"] == LETTERS[answers[q["q_uid"]]]
        assert rec["video"] == str(root / "videos" / f"{q['q_uid']}.mp4")


def test_egoschema_answers_named_with_an_option_or_missing(tmp_path, capsys):
    from vqa_cli.errors import UsageError
    from vqa_cli.jobs.eval import read_benchmark

    root = tmp_path / "egoschema"
    questions, answers = _egoschema(root)
    elsewhere = tmp_path / "answers" / "mine.json"
    elsewhere.parent.mkdir()
    (root / "subset_answers.json").rename(elsewhere)
    with pytest.raises(UsageError, match=r"no question to score in .*questions\.json \(left out: 3 questions without "
                                         r"an answer\).*--answers"):
        read_benchmark(str(root / "questions.json"))
    bench = read_benchmark(str(root / "questions.json"), answers=str(elsewhere))
    assert [it.answer for it in bench.items] == [4, 1] and str(elsewhere) in bench.files
    # the answers file alone: told what it is, exit 2
    code, _, err = run(["eval", str(elsewhere), "--videos", str(root)], capsys)
    assert code == 2 and "holds answers" in err and "questions.json" in err


def test_answers_matching_no_question_exit_2_naming_the_files(tiny_dir, tmp_path, capsys):
    root = tmp_path / "egoschema"
    _egoschema(root)
    _json(root / "subset_answers.json", {"ffffffff-0000-4000-8000-000000000001": 2})
    code, out, err = run(["eval", str(root / "questions.json"), "--videos", str(root), "--model", str(tiny_dir)],
                         capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert str(root / "questions.json") in err and str(root / "subset_answers.json") in err
    assert "1 answer whose question is not in the file" in err


# ---- LongVideoBench: lvb_val.json (candidates, correct_choice), videos/<video_path> ----------------------------


def test_longvideobench_candidates_and_correct_choice(tiny_dir, tmp_path, capsys):
    root = tmp_path / "lvb"
    items = []
    for k, (vid, cands, right) in enumerate([("yt0000000a1", ["red", "green", "blue"], 2),
                                             ("yt0000000a1", ["one", "two", "three", "four", "five"], 4),
                                             ("yt0000000b2", ["left", "right", "up", "down"], 0)]):
        items.append({"video_id": vid, "question": f"question {k} about the clip?",
                      "question_wo_referring_query": f"question {k}?", "candidates": cands, "correct_choice": right,
                      "position": [10, 20], "topic_category": "KN-Knowledge", "question_category": "S2E",
                      "level": "L1-Perception", "id": f"{vid}_{k}", "video_path": f"{vid}.mp4",
                      "subtitle_path": f"{vid}_en.json", "duration_group": 15, "starting_timestamp_for_subtitles": 0,
                      "duration": 2.0, "view_count": 100 + k})
        _clip(root / "videos" / f"{vid}.mp4")
    _json(root / "lvb_val.json", items, indent=4)
    code, summary, records, err = _eval(capsys, tiny_dir, tmp_path, root / "lvb_val.json", root)
    assert code == 0, err
    assert "--format longvideobench" in err
    assert summary["n"] + summary["excluded"] == 3 == len(records)
    for it in items:
        rec = _by_qid(records)[it["id"]]
        assert rec["options"] == it["candidates"] and rec["answer"] == LETTERS[it["correct_choice"]]
        assert rec["video"] == str(root / "videos" / it["video_path"])


# ---- Perception Test: {video_id: {metadata, mc_question: [...]}}, videos/<video_id>.mp4 ------------------------


def test_perception_test_nested_mc_questions(tiny_dir, tmp_path, capsys):
    root = tmp_path / "perception"
    data = {}
    for v, n_q in (("video_7001", 2), ("video_7002", 1)):
        data[v] = {"metadata": {"split": "valid", "video_id": v, "frame_rate": 4, "num_frames": 8,
                                "resolution": [48, 64], "audio_samples": 0, "audio_sample_rate": 0,
                                "is_cup_game": False, "is_camera_moving": False},
                   "object_tracking": [], "point_tracking": [], "action_localisation": [],
                   "mc_question": [{"id": q, "question": f"What happens {q} in {v}?",
                                    "options": [f"a{q}", f"b{q}", f"c{q}"], "answer_id": (q + 1) % 3,
                                    "area": "memory", "reasoning": "descriptive", "tag": ["motion"]}
                                   for q in range(n_q)]}
        _clip(root / "videos" / f"{v}.mp4")
    _json(root / "mc_question_valid.json", data)
    _json(root / "cut_frame_mapping_valid.json", {"video_7002": 6})  # a cup-game video: it ends before frame 6
    code, summary, records, err = _eval(capsys, tiny_dir, tmp_path, root / "mc_question_valid.json", root)
    assert code == 0, err
    assert "--format perceptiontest" in err
    assert summary["n"] + summary["excluded"] == 3 == len(records)
    for v, entry in data.items():
        for q in entry["mc_question"]:
            rec = _by_qid(records)[f"{v}-{q['id']}"]
            assert rec["answer"] == LETTERS[q["answer_id"]] and rec["options"] == q["options"]
            assert rec["video"] == str(root / "videos" / f"{v}.mp4") and rec["category"] == "memory"
            # cut: frames 0..5 of a 4 fps video, those before 6 / 4 s
            assert rec["end"] == (6 / entry["metadata"]["frame_rate"] if v == "video_7002" else None)


# ---- Video-MME: the parquet, videos data/<videoID>.mp4 ---------------------------------------------------------


def _videomme_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("video_id", pa.string()), ("duration", pa.string()), ("domain", pa.string()),
                        ("sub_category", pa.string()), ("url", pa.string()), ("videoID", pa.string()),
                        ("question_id", pa.string()), ("task_type", pa.string()), ("question", pa.string()),
                        ("options", pa.list_(pa.string())), ("answer", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def test_videomme_parquet(tiny_dir, tmp_path, capsys):
    root = tmp_path / "videomme"
    rows = []
    for v, yt in (("001", "yTubeId0001"), ("002", "yTubeId0002")):
        for q in (1, 2):
            rows.append({"video_id": v, "duration": "short", "domain": "Sports", "sub_category": "Football",
                         "url": f"https://www.youtube.com/watch?v={yt}", "videoID": yt, "question_id": f"{v}-{q}",
                         "task_type": "Counting Problem", "question": f"How many players in part {q}?",
                         "options": [f"A. {q}", f"B. {q + 1}", f"C. {q + 2}", f"D. {q + 3}"], "answer": "ABCD"[q]})
        _clip(root / "data" / f"{yt}.mp4")
    _videomme_parquet(root / "videomme" / "test-00000-of-00001.parquet", rows)
    code, summary, records, err = _eval(capsys, tiny_dir, tmp_path,
                                        root / "videomme" / "test-00000-of-00001.parquet", root)
    assert code == 0, err
    assert "--format videomme" in err
    assert summary["n"] + summary["excluded"] == 4 == len(records)
    for r in rows:
        rec = _by_qid(records)[r["question_id"]]
        assert rec["answer"] == r["answer"] and rec["video"] == str(root / "data" / f"{r['videoID']}.mp4")


def test_parquet_without_pyarrow_names_the_extra(tiny_dir, tmp_path, capsys, monkeypatch):
    import sys

    path = tmp_path / "test-00000-of-00001.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    code, _, err = run(["eval", str(path), "--videos", str(tmp_path), "--model", str(tiny_dir)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pip install 'vqa-cli[parquet]'" in err and str(path) in err


# ---- MVBench: json/<task>.json, videos video/<data_list prefix>/<video>; episodic_reasoning frame folders -------


def test_mvbench_folder_with_prefixes_and_frame_folders(tiny_dir, tmp_path, capsys):
    root = tmp_path / "mvbench"
    video = root / "video"
    tasks = {
        # the same file name under two tasks' prefixes (perception/videos/, clevrer/video_validation/)
        "action_count": [{"video": "video_4242.mp4", "question": "How many times?", "candidates": ["2", "3", "4"],
                          "answer": "4"}],
        "object_existence": [{"video": "video_4242.mp4", "question": "Is there a cube?",
                              "candidates": ["yes", "no", "not sure"], "answer": "no"},
                             {"video": "video_4243.mp4", "question": "Is there a ball?", "candidates": ["yes"],
                              "answer": "yes"}],  # counterfactual_inference-style: a single candidate
        "action_sequence": [{"video": "AB12C.mp4", "question": "What did the person do first?",
                             "candidates": ["sat", "stood", "ran", "ate"], "answer": "stood", "start": 0.25,
                             "end": 1.75}],
        "episodic_reasoning": [{"video": "show_s01e01_seg01_clip_01", "question": "Why did she leave?",
                                "candidates": ["tired", "late", "bored", "sick", "angry"], "answer": "late",
                                "subtitle": "(A:)bye\n", "show_name": "Show", "start": 1.0, "end": 3.0, "fps": 3}],
    }
    for name, rows in tasks.items():
        _json(root / "json" / f"{name}.json", rows, indent=4 if name == "action_count" else None)
    _clip(video / "perception" / "videos" / "video_4242.mp4")
    _clip(video / "clevrer" / "video_validation" / "video_4242.mp4")
    _clip(video / "clevrer" / "video_validation" / "video_4243.mp4")
    _clip(video / "star" / "Charades_v1_480" / "AB12C.mp4")
    _frames(video / "tvqa" / "frames_fps3_hq" / "show_s01e01_seg01_clip_01", 12)
    code, summary, records, err = _eval(capsys, tiny_dir, tmp_path, root / "json", video)
    assert code == 0, err
    assert "--format mvbench" in err
    assert summary["n"] + summary["excluded"] == 5 == len(records)
    got = _by_qid(records)
    prefix = {"action_count": "perception/videos", "object_existence": "clevrer/video_validation",
              "action_sequence": "star/Charades_v1_480", "episodic_reasoning": "tvqa/frames_fps3_hq"}
    for name, rows in tasks.items():
        for i, row in enumerate(rows):
            rec = got[f"{name}/{i}"]
            assert rec["video"] == str(video / prefix[name] / row["video"])
            assert rec["answer"] == LETTERS[row["candidates"].index(row["answer"])] and rec["task"] == name
    episodic = got["episodic_reasoning/0"]
    assert (episodic["start"], episodic["end"], episodic["frames"]) == (1.0, 3.0, 2)


def test_frame_folder_sampled_by_number_at_its_rate(tmp_path):
    from vqa_cli.video._frames_dir import sample_frame_folder

    folder = tmp_path / "clip"
    _frames(folder, 12)  # 00001.jpg .. 00012.jpg at 3 fps: file k+1 is shown at k / 3 s
    (folder / "notes.txt").write_text("not a frame")
    clip = sample_frame_folder(str(folder), 4, 1.0, 3.0, rate=3.0)
    in_window = [k for k in range(12) if 1.0 <= k / 3 < 3.0]  # files 4..9
    want = [in_window[(2 * j + 1) * len(in_window) // 8] for j in range(4)]  # the middles of 4 equal parts
    assert clip.indices == want
    assert clip.timestamps == [round(k / 3, 3) for k in want]
    assert [frame_number(f) for f in clip.frames] == [k + 1 for k in want]  # the images of those files
    assert clip.fps == 3.0 and clip.frames_from_content == 12


# ---- MLVU: MLVU/json/<n>_<task>.json, videos MLVU/video/<n>_<task>/<video>; open-ended 8/9 left out ------------


def test_mlvu_folder_leaves_out_open_ended_tasks(tiny_dir, tmp_path, capsys):
    root = tmp_path / "MLVU"
    plot = [{"video": "film_1.mp4", "duration": 2, "question": "What colour is the car?",
             "candidates": ["red", "blue", "green", "black"], "answer": "green", "question_type": "plotQA"},
            {"video": "film_2.mp4", "duration": 2, "question": "Who drives?",
             "candidates": ["a man", "a woman", "a dog", "nobody"], "answer": "a dog", "question_type": "plotQA"}]
    needle = [{"video": "film_1.mp4", "duration": 2, "question": "What is inserted?",
               "candidates": ["a cup", "a hat", "a key", "a pen"], "answer": "a key", "question_type": "needle"},
              {"video": "film_3.mp4", "duration": 2, "question": "What is caught?",
               "candidates": ["a ball", "a drone", "a bird", "a fish"], "answer": "a flying drone",
               "question_type": "needle"}]  # an answer that is not among the candidates, as 2 of 355 published
    sub_scene = [{"video": "film_4.mp4", "duration": 2, "question": "Describe the scene.", "answer": "A long text.",
                  "question_type": "subPlot", "scoring_points": ["one", "two"]}]
    summary_task = [{"video": "film_5.mp4", "duration": 2, "question": "Summarize.", "answer": "Text.",
                     "question_type": "summary"}]
    for name, rows in (("1_plotQA", plot), ("2_needle", needle), ("8_sub_scene", sub_scene),
                       ("9_summary", summary_task)):
        _json(root / "json" / f"{name}.json", rows, indent=4)
        for row in rows:
            _clip(root / "video" / name / row["video"])  # film_1.mp4 is in two task folders
    code, summary, records, err = _eval(capsys, tiny_dir, tmp_path, root / "json", root / "video")
    assert code == 0, err
    assert "--format mlvu" in err
    assert summary["n"] + summary["excluded"] == 3 == len(records)
    assert summary["left_out"] == {"answer_not_in_options": 1, "open_ended": 2}
    for name, rows in (("1_plotQA", plot), ("2_needle", needle[:1])):
        for i, row in enumerate(rows):
            rec = _by_qid(records)[f"{name}/{i}"]
            assert rec["video"] == str(root / "video" / name / row["video"])
            assert rec["answer"] == LETTERS[row["candidates"].index(row["answer"])]


# ---- TempCompass: questions/<task>.json {video: {dim: [{question, answer}]}}, videos/<video>.mp4 --------------


def test_tempcompass_questions_folder(tiny_dir, tmp_path, capsys):
    root = tmp_path / "tempcompass"
    mc = {"2000111": {"direction": [{"question": "Which way does the car go?\nA. left\nB. right\nC. nowhere",
                                     "answer": "B. right"}],
                      "speed": [{"question": "How fast is it?\nA. slow\nB. fast\nC. still\nD. varying",
                                 "answer": "D. varying"}]},
          "2000111_reverse": {"direction": [{"question": "Which way does the car go?\nA. left\nB. right\nC. nowhere",
                                             "answer": "A. left"}]}}
    yes_no = {"2000111": {"direction": [{"question": "Does the car go right?", "answer": "yes"},
                                        {"question": "Does the car go left?", "answer": "no"}]}}
    matching = {"2000111": {"direction": [{"question": "Which caption fits?\nOption 1: a car going left.\n"
                                                       "Option 2: a car going right.",
                                           "answer": "Option 2: a car going right."}]}}
    for name, data in (("multi-choice", mc), ("yes_no", yes_no), ("caption_matching", matching)):
        _json(root / "questions" / f"{name}.json", data, indent=4)
    for v in mc:
        _clip(root / "videos" / f"{v}.mp4")
    code, summary, records, err = _eval(capsys, tiny_dir, tmp_path, root / "questions", root)
    assert code == 0, err
    assert "--format tempcompass" in err
    assert summary["n"] + summary["excluded"] == 3 == len(records)
    assert summary["left_out"] == {"not_multiple_choice": 3}
    assert sorted((Path(r["video"]).name, r["category"], r["answer"]) for r in records) == [
        ("2000111.mp4", "direction", "B"), ("2000111.mp4", "speed", "D"), ("2000111_reverse.mp4", "direction", "A")]


# ---- --videos searched recursively; nothing to score ------------------------------------------------------------


def test_a_name_found_twice_under_videos_is_a_usage_error(tiny_dir, tmp_path, capsys):
    rows = [{"video": "clip_9.mp4", "question": "What?", "candidates": ["x", "y"], "answer": "x"}]
    ann = _json(tmp_path / "my_task.json", rows)
    first, second = tmp_path / "v" / "a" / "clip_9.mp4", tmp_path / "v" / "b" / "deeper" / "clip_9.mp4"
    _clip(first)
    _clip(second)
    code, out, err = run(["eval", ann, "--format", "mvbench", "--videos", str(tmp_path / "v"), "--model",
                          str(tiny_dir)], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert str(first) in err and str(second) in err
    from vqa_cli.jobs.eval import group_items, read_items

    second.unlink()  # found once, two folders down: taken
    assert [g.path for g in group_items(read_items(ann, "mvbench"), str(tmp_path / "v"))] == [str(first)]


def test_zero_questions_exit_2_naming_the_files(tiny_dir, tmp_path, capsys):
    ann = _json(tmp_path / "empty.json", [])
    code, out, err = run(["eval", ann, "--format", "mvbench", "--videos", str(tmp_path), "--model", str(tiny_dir)],
                         capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and ann in err
    folder = tmp_path / "MLVU" / "json"
    _json(folder / "9_summary.json", [{"video": "a.mp4", "duration": 1, "question": "Summarize.", "answer": "x",
                                       "question_type": "summary"}], indent=4)
    code, out, err = run(["eval", str(folder), "--videos", str(tmp_path)], capsys)
    assert code == 2 and str(folder / "9_summary.json") in err and "1 open-ended question" in err
