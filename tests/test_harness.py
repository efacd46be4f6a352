"""The batch-job harness (vqa_cli/jobs/harness.py) and the backend choice (vqa_cli/jobs/backend.py): the run-ahead
loop's order, window and failures; the out-of-memory back-off; resume across shards through ``vqa caption``; one
place in jobs/ that looks at ``--server``."""

from __future__ import annotations

import ast
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from vqa_cli.errors import UsageError
from vqa_cli.jobs import harness
from vqa_cli.jobs.backend import Here, Server, backend_for
from vqa_cli.testing import make_clip


def test_run_ahead_takes_in_input_order_with_at_most_window_ahead():
    window, workers = 3, 2
    lock = threading.Lock()
    started: list[int] = []
    taken: list[int] = []
    ahead_seen = []

    def prepare(i: int) -> int:
        with lock:
            started.append(i)
            ahead_seen.append(len(started) - len(taken))  # prepared or preparing, not yet taken
        time.sleep(0.002 * ((7 * i) % 5))  # finishing out of order
        return i * i

    got = []
    with harness.RunAhead(range(1, 21), prepare, workers=workers, window=window) as ahead:
        while ahead:
            item, value = ahead.take()
            with lock:
                taken.append(item)
            got.append((item, value))
    assert got == [(i, i * i) for i in range(1, 21)]
    assert max(ahead_seen) <= window + 1  # the window, and the one the taker has just moved past


def test_run_ahead_hands_a_failed_item_over_with_its_exception_and_goes_on():
    def prepare(i: int) -> int:
        if i == 3:
            raise ValueError("bad clip 3")
        return i

    with harness.RunAhead(range(6), prepare, workers=2, window=2) as ahead:
        got = []
        while ahead:
            got.append(ahead.take())
    assert [item for item, _ in got] == list(range(6))
    assert isinstance(got[3][1], ValueError) and str(got[3][1]) == "bad clip 3"
    assert [value for item, value in got if item != 3] == [0, 1, 2, 4, 5]


def test_leaving_the_run_ahead_early_prepares_no_more_than_its_window():
    prepared = []

    def prepare(i: int) -> int:
        prepared.append(i)
        return i

    with harness.RunAhead(range(100), prepare, workers=1, window=4) as ahead:
        assert ahead.take() == (0, 0)
        assert ahead
    time.sleep(0.05)
    assert len(prepared) <= 1 + 4 and sorted(prepared) == list(range(len(prepared)))


def test_back_off_halves_on_out_of_memory_and_finds_a_failing_item_alone():
    import torch

    sizes, smaller = [], []

    def attempt(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        if 5 in items:
            raise ValueError("item 5 is broken")
        return [10 * i for i in items]

    out = harness.back_off(list(range(8)), attempt, lambda item, exc: f"failed {item}: {exc}", smaller.append)
    assert out == [0, 10, 20, 30, 40, "failed 5: item 5 is broken", 60, 70]
    assert smaller == [4, 2, 2]  # 8 -> 4 + 4, each 4 -> 2 + 2
    assert sizes[:3] == [8, 4, 2]


def test_processes_alone_take_everything_and_write_the_output_itself(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    procs = harness.processes("out.jsonl")
    assert procs.main and procs.target == "out.jsonl" and procs.share(["a", "b"], str) == ["a", "b"]
    assert procs.summary_path("s.json") == "s.json"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="with several processes, --out must be a file"):
        harness.processes("-")


def _sha1_share(path: str, index: int, count: int) -> bool:
    """The stable split written out here: the path's SHA-1 as an integer, modulo the share count."""
    return int(hashlib.sha1(path.encode()).hexdigest(), 16) % count == index


def test_shards_resume_into_one_output_through_the_harness(tiny_dir, tmp_path, capsys):
    from vqa_cli.cli import main

    folder = tmp_path / "videos"
    folder.mkdir()
    videos = [str(make_clip(folder / f"clip{i}.mp4", 6)) for i in range(5)]
    shares = [[v for v in videos if _sha1_share(v, i, 2)] for i in range(2)]
    assert all(shares)  # both shares have work (else pick other names)
    out = tmp_path / "c.jsonl"
    args = [str(folder), "--out", str(out), "--model", str(tiny_dir), "--frames", "2", "--max-new-tokens", "2"]

    def run(*extra: str) -> int:
        with pytest.raises(SystemExit) as code:
            main(["caption", *args, *extra])
        return code.value.code

    assert run("--shard", "0/2") == 0
    assert [json.loads(x)["video"] for x in out.read_text().splitlines()] == shares[0]
    assert run("--shard", "1/2") == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["video"] for r in recs] == shares[0] + shares[1] and all(r["error"] is None for r in recs)
    capsys.readouterr()
    assert run() == 0  # the whole folder: every video already captioned under these settings
    assert f"nothing to do: all {len(videos)} videos already captioned" in capsys.readouterr().err
    assert out.read_text().count("\n") == len(videos)


def test_an_undecodable_video_is_written_before_the_captions_of_its_batch(tiny_dir, tmp_path, capsys):
    """docs/output.md's order: records follow the input batch by batch, a video that cannot be decoded first."""
    from vqa_cli.cli import main

    folder = tmp_path / "videos"
    folder.mkdir()
    good = [str(make_clip(folder / f"{name}.mp4", 6)) for name in ("a", "c")]
    (folder / "b.mp4").write_bytes(b"\0" * 2048)
    out = tmp_path / "c.jsonl"
    with pytest.raises(SystemExit) as code:
        main(["caption", str(folder), "--out", str(out), "--model", str(tiny_dir), "--frames", "2",
              "--max-new-tokens", "2", "--batch-size", "3", "--workers", "1"])
    assert code.value.code == 1
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(Path(r["video"]).name, r["error"] is None) for r in recs] == [("b.mp4", False), ("a.mp4", True),
                                                                            ("c.mp4", True)]
    assert [r["batch_size"] for r in recs[1:]] == [2, 2] and good == [r["video"] for r in recs[1:]]


def test_the_backend_is_chosen_by_one_function():
    assert isinstance(backend_for(None), Here) and isinstance(backend_for("http://127.0.0.1:9"), Server)
    Here().require_local("--plan reads the model's files here: drop --server")  # nothing to refuse here
    with pytest.raises(UsageError, match="^--plan reads the model's files here: drop --server$"):
        Server("http://127.0.0.1:9", True).require_local("--plan reads the model's files here: drop --server")


def test_no_job_looks_at_server_except_to_choose_its_backend():
    """In jobs/, the ``server`` a command was given is read in one kind of place only: as ``backend_for``'s
    argument. Any ``if server:`` (or other use) is a second place choosing between a model here and a server."""
    root = Path(__file__).resolve().parent.parent / "vqa_cli" / "jobs"
    offences = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        allowed = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "backend_for":
                allowed.update(id(arg) for arg in node.args)
            if isinstance(node, ast.FunctionDef) and node.name == "backend_for":
                allowed.update(id(n) for n in ast.walk(node))  # the one choice itself
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "server" and isinstance(node.ctx, ast.Load) \
                    and id(node) not in allowed:
                offences.append(f"{path.relative_to(root.parent.parent)}:{node.lineno}")
    assert not offences, offences
