"""Captioning at scale: batching, kill safety, shards, accelerate processes, OOM back-off, summary."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.clips import make_clip
from vqa_cli.errors import UsageError
from vqa_cli.jobs import harness, segments
from vqa_cli.jobs.captioner import Captioner
from vqa_cli.jobs.inputs import in_shard, parse_shard
from vqa_cli.output import writer
from vqa_cli.video import sample_frames

VQA = [sys.executable, "-m", "vqa_cli"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    for i in range(6):
        make_clip(str(root / f"v{i}.mp4"), 12 + 3 * i, fps=10.0)
    (root / "bad.mp4").write_bytes(os.urandom(3000))
    return root


def _records(path):
    return [json.loads(line) for line in open(path)]


def test_batched_captions_equal_one_at_a_time(engine_factory, folder):
    engine = engine_factory(frames=4, max_new_tokens=8)
    clips = [sample_frames(str(folder / f"v{i}.mp4"), 4) for i in range(4)]
    single = [engine.answer(c, "Describe the video.").text for c in clips]
    batched = [a.text for a in engine.answer_batch(clips, "Describe the video.")]
    assert batched == single


def test_batched_prompts_of_different_lengths_are_left_padded(engine_factory, folder, tmp_path):
    import cv2
    import numpy as np

    still = tmp_path / "s.png"
    cv2.imwrite(str(still), np.full((90, 120, 3), 70, np.uint8))
    engine = engine_factory(frames=4, max_new_tokens=8)
    clips = [sample_frames(str(still), 4), sample_frames(str(folder / "v0.mp4"), 4)]  # 1 frame vs 4 frames
    assert [a.text for a in engine.answer_batch(clips, "What?")] == [engine.answer(c, "What?").text for c in clips]


def test_shards_are_a_disjoint_complete_cover():
    videos = [f"/data/clip{i:04d}.mp4" for i in range(500)]
    shards = [[v for v in videos if in_shard(v, i, 7)] for i in range(7)]
    assert sorted(v for s in shards for v in s) == sorted(videos)
    assert sum(len(s) for s in shards) == len(videos)
    assert all(40 < len(s) < 100 for s in shards)  # roughly even
    assert [v for v in reversed(videos) if in_shard(v, 3, 7)] == list(reversed(shards[3]))  # order-free


@pytest.mark.parametrize("text", ["3/3", "-1/2", "a/b", "1", "0/0"])
def test_bad_shard_specs_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_shard(text)


def test_out_of_memory_splits_the_batch_and_records_it(engine_factory, folder, tmp_path, monkeypatch):
    engine = engine_factory(frames=4, max_new_tokens=4)
    real = engine.answer_batch
    calls = []

    def limited(clips, question, timings=None, pixels=None, features=None):
        calls.append(len(clips))
        if len(clips) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return real(clips, question, timings, pixels, features)

    monkeypatch.setattr(engine, "answer_batch", limited)
    run = Captioner(engine, engine.settings, "Describe.", "sid", batch_size=4, workers=1, frames=4)
    videos = [str(folder / f"v{i}.mp4") for i in range(5)]
    from vqa_cli.output.writer import JsonlWriter

    with JsonlWriter(str(tmp_path / "o.jsonl")) as sink:
        summary = run.run(videos, sink)
    records = _records(tmp_path / "o.jsonl")
    assert [r["video"] for r in records] == videos and all(r["error"] is None for r in records)
    assert summary.oom_backoffs >= 1 and run.batch_size == 1
    assert calls[0] == 4 and max(calls[1:]) <= 2


def test_summary_file_counts_errors_by_kind(folder, tiny_dir, tmp_path, capsys):
    from vqa_cli.cli import main

    out, summary = tmp_path / "c.jsonl", tmp_path / "summary.json"
    with pytest.raises(SystemExit) as code:
        main(["caption", str(folder), "--out", str(out), "--model", str(tiny_dir), "--frames", "3",
              "--max-new-tokens", "3", "--batch-size", "3", "--summary", str(summary)])
    assert code.value.code == 1
    s = json.loads(summary.read_text())
    assert s["videos"] == 7 and s["ok"] == 6 and s["errors"] == {"video": 1}
    assert s["frames_decoded"] == 18 and s["tokens_generated"] > 0 and s["videos_per_second"] > 0
    assert set(s["seconds"]) >= {"load", "wall", "decode", "preprocess", "encode"}
    assert "6 captioned, 1 failed" in capsys.readouterr().err


def _caption_cmd(folder, out, tiny_dir):
    return VQA + ["caption", str(folder), "--out", str(out), "--model", str(tiny_dir), "--frames", "3",
                  "--max-new-tokens", "3", "--batch-size", "2"]


def test_sigkill_at_random_moments_then_resume_gives_one_complete_record_each(folder, tiny_dir, tmp_path):
    out = tmp_path / "killed.jsonl"
    rng = random.Random(1234)
    for _ in range(3):
        proc = subprocess.Popen(_caption_cmd(folder, out, tiny_dir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with open(out, "a") as f:  # and a kill in the middle of a write
        f.write('{"video": "half a rec')
    done = subprocess.run(_caption_cmd(folder, out, tiny_dir), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the broken video still fails
    records = _records(out)  # every line parses
    videos = sorted(r["video"] for r in records)
    assert videos == sorted({str(p) for p in folder.iterdir()}) and len(records) == 7


def test_ctrl_c_stops_after_the_current_batch_with_a_summary(folder, tiny_dir, tmp_path):
    out = tmp_path / "int.jsonl"
    proc = subprocess.Popen(_caption_cmd(folder, out, tiny_dir) + ["--batch-size", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.stat().st_size == 0):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before Ctrl-C arrived")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    records = _records(out)
    assert 1 <= len(records) < 7


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not installed")
def test_two_accelerate_processes_split_the_work_and_merge(folder, tiny_dir, tmp_path):
    out = tmp_path / "acc.jsonl"
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 1000),
           "-m", "vqa_cli", "caption", str(folder), "--out", str(out), "--model", str(tiny_dir), "--frames", "3",
           "--max-new-tokens", "3"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    records = _records(out)
    assert sorted(r["video"] for r in records) == sorted(str(p) for p in folder.iterdir()), proc.stderr[-2000:]
    assert not list(tmp_path.glob("acc.jsonl.part*"))
    assert proc.returncode != 0  # the broken video fails in one process


def test_merge_prefers_a_caption_over_an_error(tmp_path):
    out, part = tmp_path / "o.jsonl", tmp_path / "o.jsonl.part0of2"
    out.write_text(json.dumps({"video": "a", "settings_id": "s", "error": "x"}) + "\n")
    part.write_text(json.dumps({"video": "a", "settings_id": "s", "error": None, "caption": "c"}) + "\n")
    writer.merge_parts(str(out), [str(part)])
    assert _records(out) == [{"video": "a", "settings_id": "s", "error": None, "caption": "c"}] and not part.exists()


def test_accelerate_processes_split_a_shard_evenly_again():
    videos = [f"/data/clip{i:04d}.mp4" for i in range(1000)]
    shard = [v for v in videos if in_shard(v, 0, 2)]
    procs = [[v for v in shard if in_shard(v, i, 2, salt="process:")] for i in range(2)]
    assert sorted(procs[0] + procs[1]) == sorted(shard)
    assert all(0.4 * len(shard) < len(p) < 0.6 * len(shard) for p in procs)


def test_batch_encoded_together_from_worker_pixels_equals_one_at_a_time(engine_factory, folder):
    engine = engine_factory(frames=4, max_new_tokens=8)
    clips = [sample_frames(str(folder / f"v{i}.mp4"), 4) for i in range(3)]
    single = [engine.answer(c, "Describe the video.").text for c in clips]
    together = engine.answer_batch(clips, "Describe the video.", pixels=[engine.pixels(c) for c in clips])
    assert [a.text for a in together] == single


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_decode_workers_run_at_a_lower_priority_than_the_model():
    import threading

    seen: dict[str, int] = {}

    def worker() -> None:
        harness.lower_priority()
        seen["worker"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["worker"] == min(19, before + harness.WORKER_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # the model's thread keeps its own


def test_a_model_on_the_cpu_leaves_one_core_to_the_decoders(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(harness, "cpu_cores", lambda: 4)
    previous = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with harness.model_threads(SimpleNamespace(input_device=torch.device("cpu"))):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 4
        with harness.model_threads(SimpleNamespace(input_device=torch.device("cuda", 0))):
            assert torch.get_num_threads() == 4  # a GPU model keeps torch's setting
    finally:
        torch.set_num_threads(previous)


def test_each_caption_worker_decodes_with_its_share_of_the_cores(monkeypatch, engine_factory):
    from types import SimpleNamespace

    from vqa_cli.model import engine

    seen = []

    def sample(path, settings, frames, timeout=None, *, options=None, **kw):
        seen.append(options)
        raise engine.UsageError("stop here")

    monkeypatch.setattr(engine, "sample_clip", sample)
    with pytest.raises(engine.UsageError):
        segments.decode("v.mp4", SimpleNamespace(), 4, engine_factory(frames=4), 3)
    assert seen[0].cores == 3 and seen[0].decoder_threads == 3
