"""Nothing a user owns is lost: refused outputs, one writer per file, safe repair and rewrite, unwritable
places, stdin names, unreadable folders and files cut short (``vqa caption``, and every file vqa writes)."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.clips import make_clip
from vqa_cli.cli import main
from vqa_cli.jobs.inputs import expand_inputs
from vqa_cli.output import writer
from vqa_cli.output.records import settings_id

VQA = [sys.executable, "-m", "vqa_cli"]
TINY = ["--frames", "2", "--max-new-tokens", "2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        make_clip(str(root / name), 12, fps=10.0)
    return root


def _caption(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", *argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _record(video: str, sid: str = "0123456789abcdef", error: str | None = None) -> dict:
    return {"video": video, "caption": None if error else "ok", "error": error,
            "error_kind": "video" if error else None, "settings_id": sid}


# ---- 1. refused outputs: exit 2, one line, the file untouched, nothing loaded -----------------------


@pytest.mark.parametrize("content", [
    b"my notes\nsecond line\n",
    b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 8,
    b'{"name": "another tool", "value": 1}\n',
    b'{"video": "a.mp4", "caption": "x", "error": null, "settings_id": "s"}\nnot json\n',
    b"[1, 2, 3]\n",
    b"no newline at all",
])
def test_an_existing_file_that_is_not_vqa_json_lines_is_refused_untouched(content, videos, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_bytes(content)
    # A model that does not exist: the output is refused before anything looks at it.
    code, stdout, err = _caption([str(videos / "a.mp4"), "--out", str(out), "--model", "/no/such/model"], capsys)
    assert code == 2 and stdout == ""
    assert "not a vqa JSON Lines file" in _one_line(err) and str(out) in err
    assert out.read_bytes() == content
    assert not list(tmp_path.glob(".notes.txt*"))  # no lock file left behind either


def test_out_naming_an_input_video_is_refused(videos, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes((videos / "a.mp4").read_bytes())
    before = clip.read_bytes()
    for out in (str(clip), str(tmp_path / "." / "clip.mp4")):
        code, _, err = _caption([str(clip), "--out", out, "--model", "/no/such/model"], capsys)
        assert code == 2 and "is one of the input videos" in _one_line(err)
    link = tmp_path / "link.jsonl"
    link.symlink_to(clip)
    code, _, err = _caption([str(tmp_path), "--out", str(link), "--model", "/no/such/model"], capsys)
    assert code == 2 and "is one of the input videos" in _one_line(err)
    assert clip.read_bytes() == before


def test_out_naming_a_folder_is_refused(videos, tmp_path, capsys):
    code, _, err = _caption([str(videos / "a.mp4"), "--out", str(tmp_path), "--model", "/no/such/model"], capsys)
    assert code == 2 and "is a folder" in _one_line(err)


def test_an_empty_file_and_a_vqa_file_are_accepted(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    writer.check_output(str(empty), [])
    ours = tmp_path / "ours.jsonl"
    ours.write_text(json.dumps(_record("a.mp4")) + "\n\n" + json.dumps(_record("b.mp4", error="x")) + "\n")
    writer.check_output(str(ours), [])
    assert [r["video"] for r in writer.read_records(ours)] == ["a.mp4", "b.mp4"]


def test_summary_and_sheet_are_checked_too(videos, tmp_path, capsys):
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "settings"}\n')
    code, _, err = _caption([str(videos / "a.mp4"), "--out", str(tmp_path / "o.jsonl"), "--summary", str(notes),
                             "--model", "/no/such/model"], capsys)
    assert code == 2 and "is not a vqa summary" in _one_line(err) and notes.read_text() == '{"my": "settings"}\n'
    out = tmp_path / "same.jsonl"
    code, _, err = _caption([str(videos / "a.mp4"), "--out", str(out), "--summary", str(out), "--model", "/no/such"],
                            capsys)
    assert code == 2 and "--summary and --out name the same file" in _one_line(err)
    image = tmp_path / "photo.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.full((40, 60, 3), 90, np.uint8))
    before = image.read_bytes()
    with pytest.raises(SystemExit) as code:
        main(["frames", str(image), "--sheet", str(image)])
    assert code.value.code == 2 and "is one of the input videos" in _one_line(capsys.readouterr().err)
    assert image.read_bytes() == before


# ---- 2. one writer per output file -------------------------------------------------------------------


def test_a_second_run_on_a_locked_output_exits_2_naming_the_output_and_the_holder(videos, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    with writer.OutputLock(str(out)):
        code, _, err = _caption([str(videos / "a.mp4"), "--out", str(out), "--model", "/no/such/model"], capsys)
    line = _one_line(err)
    assert code == 2 and str(out) in line and f"pid {os.getpid()}" in line
    assert not out.exists()
    assert not writer.lock_path(out).exists()  # released and removed


def test_lock_files_are_per_output_part_and_shard(tmp_path):
    out = tmp_path / "c.jsonl"
    with writer.OutputLock(str(out)), writer.OutputLock(f"{out}.part0of2"), writer.OutputLock(f"{out}.part1of2"):
        with pytest.raises(Exception, match="is being written by another vqa process"):
            writer.OutputLock(f"{out}.part1of2").__enter__()


def test_concurrent_runs_never_duplicate_or_lose_records_and_kill_releases_the_lock(videos, tiny_dir, tmp_path):
    out = tmp_path / "c.jsonl"
    cmd = VQA + ["caption", str(videos), "--out", str(out), "--model", str(tiny_dir), *TINY, "--batch-size", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = writer.lock_path(out)
    deadline = time.time() + 120
    while time.time() < deadline and not lock.exists():
        time.sleep(0.02)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr
    assert str(out) in second.stderr and f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    first.send_signal(signal.SIGKILL)  # the kernel releases the lock of a killed process
    first.wait()
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    records = _records(out)
    assert sorted(r["video"] for r in records) == sorted(str(p) for p in videos.iterdir())


# ---- 3. repair never deletes a complete record ---------------------------------------------------------


def _settings_args(tiny_dir):
    return ["--model", str(tiny_dir), *TINY]


def _sid(tiny_dir, capsys, videos, tmp_path) -> str:
    """The settings id of ``_settings_args`` (from a real run into a scratch file)."""
    scratch = tmp_path / "scratch.jsonl"
    assert _caption([str(videos / "c.mp4"), "--out", str(scratch), *_settings_args(tiny_dir)], capsys)[0] == 0
    return _records(scratch)[0]["settings_id"]


def test_a_complete_last_record_without_its_newline_is_kept_and_gets_it(videos, tiny_dir, tmp_path, capsys):
    sid = _sid(tiny_dir, capsys, videos, tmp_path)
    out, summary = tmp_path / "c.jsonl", tmp_path / "s.json"
    done = _record(str(videos / "a.mp4"), sid)
    out.write_text(json.dumps(done))  # killed right before the newline
    code, _, err = _caption([str(videos / "a.mp4"), str(videos / "b.mp4"), "--out", str(out), "--summary",
                             str(summary), *_settings_args(tiny_dir)], capsys)
    assert code == 0, err
    records = _records(out)
    assert records[0] == done and [r["video"] for r in records] == [str(videos / "a.mp4"), str(videos / "b.mp4")]
    repair = json.loads(summary.read_text())["output_repair"]
    assert repair == {"dropped_lines": 0, "reason": None, "newline_added": True}
    assert "added the missing newline" in err


def test_only_a_cut_unparsable_last_line_is_dropped_and_the_summary_says_so(videos, tiny_dir, tmp_path, capsys):
    sid = _sid(tiny_dir, capsys, videos, tmp_path)
    out, summary = tmp_path / "c.jsonl", tmp_path / "deep" / "er" / "s.json"  # --summary creates its folders
    done = _record(str(videos / "a.mp4"), sid)
    out.write_text(json.dumps(done) + "\n" + '{"video": "b.mp4", "capt')
    code, _, err = _caption([str(videos / "a.mp4"), "--out", str(out), "--summary", str(summary),
                             *_settings_args(tiny_dir)], capsys)
    assert code == 0, err
    assert _records(out) == [done]
    s = json.loads(summary.read_text())
    assert s["output_repair"]["dropped_lines"] == 1 and "interrupted" in s["output_repair"]["reason"]
    assert "dropped 1 cut-off last line" in err


def test_an_old_error_record_stays_until_a_new_record_replaces_it(videos, tiny_dir, tmp_path, capsys):
    sid = _sid(tiny_dir, capsys, videos, tmp_path)
    out = tmp_path / "c.jsonl"
    old = _record(str(videos / "a.mp4"), sid, error="cannot decode")
    other = _record(str(videos / "zzz.mp4"), sid, error="kept: not an input of this run")
    out.write_text(json.dumps(old) + "\n" + json.dumps(other) + "\n")
    from vqa_cli.output.writer import resume

    todo, _ = resume(str(out), [str(videos / "a.mp4")], sid)  # what a run does before loading the model
    assert todo == [str(videos / "a.mp4")] and _records(out) == [old, other]  # nothing deleted up front
    code, _, err = _caption([str(videos / "a.mp4"), "--out", str(out), *_settings_args(tiny_dir)], capsys)
    assert code == 0, err
    records = _records(out)
    assert records[0] == other and records[1]["video"] == str(videos / "a.mp4") and records[1]["error"] is None
    assert len(records) == 2


# ---- 4. the atomic rewrite ---------------------------------------------------------------------------------


def test_rewrite_never_writes_through_an_existing_temporary_name_or_symlink(tmp_path):
    out = tmp_path / "c.jsonl"
    out.write_text(json.dumps(_record("a.mp4")) + "\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (".c.jsonl.tmp", "c.jsonl.tmp", ".c.jsonl.lock.tmp"):
        (tmp_path / name).symlink_to(victim)
    writer.rewrite(out, [_record("b.mp4")])
    assert victim.read_text() == "precious"
    assert _records(out) == [_record("b.mp4")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["c.jsonl", "victim.txt", ".c.jsonl.tmp", "c.jsonl.tmp", ".c.jsonl.lock.tmp"])


def test_rewrite_of_a_symlinked_output_writes_the_target_and_keeps_the_link_and_mode(tmp_path):
    real = tmp_path / "data" / "captions.jsonl"
    real.parent.mkdir()
    real.write_text(json.dumps(_record("a.mp4")) + "\n")
    real.chmod(0o640)
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    writer.rewrite(link, [_record("b.mp4")])
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert _records(real) == [_record("b.mp4")]
    assert real.stat().st_mode & 0o777 == 0o640


def test_a_run_through_a_symlinked_out_appends_to_the_target(videos, tiny_dir, tmp_path, capsys):
    real = tmp_path / "real.jsonl"
    real.write_text("")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    code, _, err = _caption([str(videos / "a.mp4"), "--out", str(link), *_settings_args(tiny_dir)], capsys)
    assert code == 0, err
    assert link.is_symlink() and len(_records(real)) == 1


# ---- 5. unwritable outputs -----------------------------------------------------------------------------


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _drop_root_override() -> None:
    """In the child: without these capabilities root obeys permission bits like any user."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _as_user(cmd, **kw):
    return subprocess.run(cmd, preexec_fn=_drop_root_override, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture()
def read_only(tmp_path):
    """A read-only folder holding a read-only file; skips where permission bits cannot be made to bind."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "c.jsonl").write_text("")
    (folder / "c.jsonl").chmod(0o444)
    folder.chmod(0o555)
    probe = _as_user([sys.executable, "-c", f"open({str(folder / 'x')!r}, 'w')"])
    if probe.returncode == 0:
        folder.chmod(0o755)
        pytest.skip("permission bits do not bind here (root without a droppable DAC override)")
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize(("where", "flag"), [("ro/new.jsonl", "--out"), ("ro/c.jsonl", "--out"),
                                             ("ro/sub/new.jsonl", "--out"), ("ro/s.json", "--summary")])
def test_unwritable_outputs_fail_before_loading_with_one_line(where, flag, read_only, videos, tmp_path):
    target = str(tmp_path / where)
    out = target if flag == "--out" else str(tmp_path / "ok.jsonl")
    cmd = VQA + ["caption", str(videos / "a.mp4"), "--out", out, "--model", "/no/such/model"]
    if flag == "--summary":
        cmd += ["--summary", target]
    proc = _as_user(cmd)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert "cannot write" in line and flag in line and "Permission denied" in line
    assert not Path(out).exists() or Path(out).read_text() == ""


def test_a_full_disk_before_the_run_is_one_line(videos, tmp_path, capsys, monkeypatch):
    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, 0

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    code, _, err = _caption([str(videos / "a.mp4"), "--out", str(tmp_path / "c.jsonl"), "--model", "/no/such"],
                            capsys)
    assert code == 1 and "no space left" in _one_line(err)


def test_a_write_refused_mid_run_keeps_the_records_written_so_far_and_exits_1(videos, tiny_dir, tmp_path):
    out = tmp_path / "c.jsonl"
    first = subprocess.run(VQA + ["caption", str(videos / "a.mp4"), "--out", str(out), *_settings_args(tiny_dir)],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    size = out.stat().st_size
    limit = 2 * size + size // 2  # room for one more record and a half: the one after is refused half-written

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(VQA + ["caption", str(videos), "--out", str(out), *_settings_args(tiny_dir),
                                 "--batch-size", "1"], preexec_fn=limited, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cannot write to" in proc.stderr and "records written by this run before it are intact" in proc.stderr
    records = _records(out)  # every line parses: the refused record left no partial line
    assert len(records) == 2 and out.read_bytes().endswith(b"\n")


# ---- 6. stdin names, 7. unreadable folders, 8. files cut short ------------------------------------------


def test_stdin_paths_keep_their_spaces_and_skip_blank_lines(videos, tmp_path, monkeypatch):
    import io

    monkeypatch.chdir(tmp_path)
    for name in (" leading.mp4", "trailing.mp4 ", "  both  .mp4  "):
        (tmp_path / name).write_bytes((videos / "a.mp4").read_bytes())
    lines = " leading.mp4\r\n\n   \ntrailing.mp4 \n  both  .mp4  \n" + f"{videos / 'b.mp4'}\n leading.mp4"
    found = expand_inputs(["-"], io.StringIO(lines)).videos
    assert found == [" leading.mp4", "trailing.mp4 ", "  both  .mp4  ", str(videos / "b.mp4")]
    assert all(Path(p).is_file() for p in found)


def test_a_folder_that_cannot_be_read_is_an_input_error_record_and_exit_1(videos, tiny_dir, tmp_path):
    root = tmp_path / "tree"
    (root / "locked").mkdir(parents=True)
    make_clip(str(root / "ok.mp4"), 12, fps=10.0)
    make_clip(str(root / "locked" / "hidden.mp4"), 12, fps=10.0)
    (root / "locked").chmod(0)
    try:
        probe = _as_user([sys.executable, "-c", f"import os; os.listdir({str(root / 'locked')!r})"])
        if probe.returncode == 0:
            pytest.skip("permission bits do not bind here (root without a droppable DAC override)")
        out = tmp_path / "c.jsonl"
        proc = _as_user(VQA + ["caption", str(root), "--out", str(out), *_settings_args(tiny_dir)])
    finally:
        (root / "locked").chmod(0o755)
    assert proc.returncode == 1, proc.stderr
    by_video = {r["video"]: r for r in _records(out)}
    assert set(by_video) == {str(root / "ok.mp4"), str(root / "locked")}
    assert by_video[str(root / "locked")]["error_kind"] == "input"
    assert "Permission denied" in by_video[str(root / "locked")]["error"]
    assert by_video[str(root / "ok.mp4")]["error"] is None
    # Readable again: the next run walks it, captions what it holds and drops the folder's error record.
    proc = subprocess.run(VQA + ["caption", str(root), "--out", str(out), *_settings_args(tiny_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["video"] for r in _records(out)) == [str(root / "locked" / "hidden.mp4"), str(root / "ok.mp4")]


def test_a_file_cut_short_says_so_in_the_records_warnings(videos, tiny_dir, tmp_path, capsys):
    whole = make_clip(str(tmp_path / "whole.avi"), 60, fps=10.0, fourcc="MJPG")
    data = Path(whole).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "c.jsonl"
    code, _, err = _caption([whole, str(cut), "--out", str(out), *_settings_args(tiny_dir)], capsys)
    assert code == 0, err
    by_video = {r["video"]: r for r in _records(out)}
    assert by_video[whole]["warnings"] == []
    (warning,) = by_video[str(cut)]["warnings"]
    assert "header says 60 frames" in warning and "cut short" in warning


def test_settings_id_is_stable():  # guards the sid the tests above build records with
    assert settings_id({"a": 1}, "p") == settings_id({"a": 1}, "p")
