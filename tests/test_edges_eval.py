"""Edges of eval's resume bookkeeping (vqa_cli/jobs/eval/_run.py): a question is done under a settings id when the
output holds a record of it without an error; an error record is asked again (and its retry's record then
counts); a re-run with nothing changed answers nothing (the model is not even loaded); a changed mode, frame
count, protocol or score is another settings id, so every question is asked again. Oracles: the records on
disk before and after, and a model loader that fails if called (a re-run that should skip must not load)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.clips import make_clip
from vqa_cli.jobs.eval import run_eval
from vqa_cli.jobs.eval._run import eval_sid
from vqa_cli.settings import ModeSettings, RunSettings

ROWS = [{"video": "one.mp4", "question": "Which shape?", "candidates": ["a square", "a circle"], "answer": "a circle"},
        {"video": "one.mp4", "question": "Which side?", "candidates": ["top", "bottom", "middle"], "answer": "top"},
        {"video": "two.mp4", "question": "How fast?", "candidates": ["slow", "fast"], "answer": "slow"}]


class Loaded(Exception):
    """The model loader was called."""


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("resume")
    (root / "videos").mkdir()
    for name in ("one", "two"):
        make_clip(str(root / "videos" / f"{name}.mp4"), 20, fps=10.0)
    ann = root / "mvb" / "object_shuffle.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(ROWS))
    return root, str(ann)


def _settings(tiny_dir, **kw) -> RunSettings:
    return RunSettings(model=str(tiny_dir), mode=ModeSettings("anyres"), frames=4, dtype="float32",
                       max_new_tokens=2, **kw)


def _run(bench, settings: RunSettings, out: Path, **kw) -> int:
    root, ann = bench
    return run_eval([settings], ann, "mvbench", str(root / "videos"), out=str(out), **kw)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def _no_loading(monkeypatch) -> None:
    def loader(*args, **kwargs):
        raise Loaded()

    monkeypatch.setattr("vqa_cli.model.session.open_model", loader)


@pytest.fixture(scope="module")
def finished(bench, tiny_dir, tmp_path_factory) -> bytes:
    """The output of a finished run of ``_settings``."""
    out = tmp_path_factory.mktemp("finished") / "r.jsonl"
    assert _run(bench, _settings(tiny_dir), out) == 0
    return out.read_bytes()


def test_error_records_are_asked_again_and_done_ones_are_not(bench, tiny_dir, finished, tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    out.write_bytes(finished)
    settings = _settings(tiny_dir)
    first = _records(out)
    sid = eval_sid(settings, "mvbench", "official", "generate")
    assert len(first) == 3 and {r["settings_id"] for r in first} == {sid}
    assert all(r["error"] is None for r in first)

    # nothing changed: nothing to ask, the model is not loaded, the file is the same bytes
    before = out.read_bytes()
    _no_loading(monkeypatch)
    assert _run(bench, settings, out) == 0
    assert out.read_bytes() == before
    monkeypatch.undo()

    # one question's record is an error now: only that question is asked again
    failed = {**first[1], "error": "the decoder gave up", "error_kind": "video", "answer": None}
    out.write_text("".join(json.dumps(r) + "\n" for r in (first[0], failed, first[2])))
    asked = []
    from vqa_cli.jobs.eval import _evaluate as answering

    real_todo = answering.Evaluator.todo

    def todo(self, group, m):
        items = real_todo(self, group, m)
        asked.extend(it.qid for it in items)
        return items

    monkeypatch.setattr(answering.Evaluator, "todo", todo)
    assert _run(bench, settings, out) == 0
    assert set(asked) == {failed["qid"]}
    latest = {}
    for r in _records(out):
        latest[r["qid"]] = r
    assert sorted(latest) == sorted(r["qid"] for r in first)
    assert all(r["error"] is None for r in latest.values())
    assert latest[failed["qid"]]["answer"] == first[1]["answer"]  # the same greedy answer as the first time

    # and that retried record now counts as done
    monkeypatch.undo()
    _no_loading(monkeypatch)
    assert _run(bench, settings, out) == 0


@pytest.mark.parametrize("change", ["mode", "frames", "protocol", "score", "max_new_tokens", "start"])
def test_a_changed_setting_asks_every_question_again(bench, tiny_dir, finished, tmp_path, monkeypatch, change):
    settings = _settings(tiny_dir)
    sid = eval_sid(settings, "mvbench", "official", "generate")
    out = tmp_path / "r.jsonl"
    out.write_bytes(finished)
    _no_loading(monkeypatch)
    assert _run(bench, settings, out) == 0  # the same settings: done

    kw: dict = {}
    other = settings
    if change == "mode":
        other = replace(settings, mode=ModeSettings("slowfast"))
    elif change == "frames":
        other = replace(settings, frames=6)
    elif change == "max_new_tokens":
        other = replace(settings, max_new_tokens=3)
    elif change == "start":
        other = replace(settings, start=0.5)
    elif change == "protocol":
        kw["protocol"] = "lmms-eval"
    else:
        kw["score"] = "likelihood"
    assert eval_sid(other, "mvbench", kw.get("protocol", "official"), kw.get("score", "generate")) != sid
    with pytest.raises(Loaded):
        _run(bench, other, out, **kw)
