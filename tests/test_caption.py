"""`vqa caption`: folders, stdin, broken files, resume without duplicates, exit codes."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.clips import make_clip
from vqa_cli.cli import main
from vqa_cli.jobs.inputs import expand_inputs
from vqa_cli.output.records import settings_id
from vqa_cli.output.writer import resume


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    make_clip(str(root / "b.mp4"), 20, fps=10.0)
    make_clip(str(root / "sub" / "a.avi"), 15, fps=10.0, fourcc="MJPG")
    (root / "broken.mp4").write_bytes(os.urandom(4096))
    (root / "notes.txt").write_text("not a video")
    return root


def _caption(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        import io

        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", *argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folders_are_searched_recursively_sorted_and_filtered(folder):
    found = expand_inputs([str(folder)]).videos
    assert found == sorted(found) and len(found) == 3
    assert not any(p.endswith(".txt") for p in found)


def test_a_folder_with_a_broken_file_gives_one_record_each_and_exit_1(folder, tiny_dir, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    args = [str(folder), "--out", str(out), "--model", str(tiny_dir), "--frames", "4", "--max-new-tokens", "4"]
    code, stdout, err = _caption(args, capsys)
    assert code == 1 and stdout == ""
    records = _records(out)
    assert len(records) == 3
    by_video = {r["video"]: r for r in records}
    broken = by_video[str(folder / "broken.mp4")]
    assert broken["caption"] is None and "cannot decode" in broken["error"] and "\n" not in broken["error"]
    good = by_video[str(folder / "b.mp4")]
    assert good["error"] is None and good["caption"] and good["frames"] == 4 and good["visual_tokens"] == 576
    for key in ("video", "caption", "model", "mode", "frames", "timestamps", "duration", "visual_tokens", "timings",
                "error"):
        assert key in good

    # Re-run: done videos are skipped, the broken one is retried, still one record per video.
    code, _, err = _caption(args, capsys)
    assert code == 1
    records = _records(out)
    assert sorted(r["video"] for r in records) == sorted(by_video)
    assert [r for r in records if r["video"] == good["video"]] == [good]

    # Fix the broken file: the re-run captions it and exits 0, no duplicates.
    make_clip(str(folder / "broken.mp4"), 12, fps=10.0)
    code, _, err = _caption(args, capsys)
    assert code == 0, err
    records = _records(out)
    assert len(records) == 3 and all(r["error"] is None for r in records)

    # Everything done: nothing to do, exit 0.
    code, _, err = _caption(args, capsys)
    assert code == 0 and "nothing to do" in err and len(_records(out)) == 3


def test_other_settings_are_captioned_again(folder, tiny_dir, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    video = str(folder / "b.mp4")
    base = [video, "--out", str(out), "--model", str(tiny_dir), "--max-new-tokens", "3"]
    assert _caption(base + ["--frames", "2"], capsys)[0] == 0
    assert _caption(base + ["--frames", "2"], capsys)[0] == 0
    assert len(_records(out)) == 1
    assert _caption(base + ["--frames", "3"], capsys)[0] == 0
    assert [r["frames"] for r in _records(out)] == [2, 3]


def test_paths_from_stdin_and_output_to_stdout(folder, tiny_dir, capsys, monkeypatch):
    paths = f"{folder / 'b.mp4'}\n\n{folder / 'sub' / 'a.avi'}\n"
    code, out, err = _caption(["-", "--out", "-", "--model", str(tiny_dir), "--frames", "2", "--max-new-tokens", "3"],
                              capsys, stdin=paths, monkeypatch=monkeypatch)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["video"] for r in records] == [str(folder / "b.mp4"), str(folder / "sub" / "a.avi")]


def test_a_partial_last_line_from_a_killed_run_is_repaired(folder, tmp_path):
    out = tmp_path / "c.jsonl"
    sid = settings_id({"x": 1}, "p")
    done = {"video": "a.mp4", "caption": "ok", "error": None, "settings_id": sid}
    out.write_text(json.dumps(done) + "\n" + '{"video": "b.mp4", "capt')
    todo, repaired = resume(str(out), ["a.mp4", "b.mp4"], sid)
    assert todo == ["b.mp4"] and repaired.dropped_lines == 1 and not repaired.newline_added
    assert _records(out) == [done]


def test_the_prompt_is_part_of_the_settings():
    assert settings_id({"frames": 4}, "short") != settings_id({"frames": 4}, "long")
    assert settings_id({"frames": 4}, "short") == settings_id({"frames": 4}, "short")
