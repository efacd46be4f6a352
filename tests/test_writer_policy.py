"""One output policy for every file vqa writes, as a hostile user tries it: `--out-dir` beside the videos, chat's
`/save`, an eval output onto a caption output (and back), two names of one file, a full disk mid `--out-dir`.

Each test keeps the bytes a user owns before the run and compares them, byte for byte, after it."""

from __future__ import annotations

import errno
import io
import json
import os
import sys
from pathlib import Path

import pytest

from tests.clips import make_clip
from vqa_cli.cli import main
from vqa_cli.output import writer

HAND_MADE_SRT = b"1\r\n00:00:00,000 --> 00:00:01,000\r\nMy own subtitle, typed by hand.\r\n\r\n"


def _run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _caption_args(tiny_dir, *extra):
    return ["--model", str(tiny_dir), "--dtype", "float32", "--frames", "1", "--max-new-tokens", "2", *extra]


def _srt_of(caption: str, duration: float) -> str:
    """The SRT file of one caption over the whole video, written from the SubRip format's definition (a counter, a
    `HH:MM:SS,mmm --> HH:MM:SS,mmm` line, the text, a blank line), not by vqa's writer."""
    ms = round(duration * 1000)
    end = f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
    return f"1\n00:00:00,000 --> {end}\n{' '.join(caption.split()) or '...'}\n\n"


@pytest.fixture()
def video(tmp_path):
    return make_clip(str(tmp_path / "clip.mp4"), 10, fps=10.0)


# ---- --out-dir beside the videos: a hand-made clip.srt --------------------------------------------------------


def test_out_dir_onto_a_hand_made_srt_beside_the_video_is_refused_and_force_replaces_it(video, tmp_path, tiny_dir,
                                                                                       capsys):
    mine = tmp_path / "clip.srt"
    mine.write_bytes(HAND_MADE_SRT)
    index = tmp_path / "index.jsonl"
    argv = ["caption", video, "--format", "srt", "--out-dir", str(tmp_path), "--out", str(index), "--subtitles", "off"]
    code, out, err = _run([*argv, "--model", "/no/such/model"], capsys)
    line = _one_line(err)
    assert code == 2 and str(mine) in line and "was not written by vqa" in line and "--force" in line
    assert mine.read_bytes() == HAND_MADE_SRT and not index.exists() and out == ""
    code, _, err = _run([*argv, *_caption_args(tiny_dir)], capsys)  # the model changes nothing: still refused
    assert code == 2 and mine.read_bytes() == HAND_MADE_SRT
    code, _, err = _run([*argv, *_caption_args(tiny_dir), "--force"], capsys)
    assert code == 0, err
    rec = json.loads(index.read_text())
    assert rec["output"] == str(mine) and mine.read_text() == _srt_of(rec["caption"], rec["duration"])


def test_a_clip_srt_vqa_wrote_earlier_is_replaced_without_force_and_one_the_user_edited_is_not(video, tmp_path,
                                                                                               tiny_dir, capsys):
    srt, index = tmp_path / "clip.srt", tmp_path / "index.jsonl"
    argv = ["caption", video, "--format", "srt", "--out-dir", str(tmp_path), "--out", str(index),
            *_caption_args(tiny_dir)]
    code, _, err = _run([*argv, "--prompt", "Describe."], capsys)
    assert code == 0, err
    first = json.loads(index.read_text().splitlines()[0])
    assert srt.read_text() == _srt_of(first["caption"], first["duration"])
    code, _, err = _run([*argv, "--prompt", "Describe it again."], capsys)  # other settings: captioned again
    assert code == 0, err
    second = json.loads(index.read_text().splitlines()[-1])
    assert second["settings_id"] != first["settings_id"]
    assert srt.read_text() == _srt_of(second["caption"], second["duration"])  # vqa's own file: replaced
    edited = srt.read_bytes().replace(b"\n\n", b" (corrected by me)\n\n")
    srt.write_bytes(edited)  # edited since: the user's file now
    code, _, err = _run([*argv, "--prompt", "A third prompt."], capsys)
    assert code == 2 and "was not written by vqa" in _one_line(err) and srt.read_bytes() == edited


# ---- chat /save ----------------------------------------------------------------------------------------------


def test_chat_save_onto_an_existing_user_file_is_refused_and_the_chat_goes_on(clip_path, tiny_dir, tmp_path, capsys,
                                                                              monkeypatch):
    notes = tmp_path / "notes.json"
    notes.write_bytes(b'{"my": "notes"}\n')
    mine = notes.read_bytes()
    saved = tmp_path / "chat.json"
    script = f"/save {notes}\nWhat happens?\n/save {saved}\nAnd then?\n/save {saved}\n/quit\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    code, out, err = _run(["chat", clip_path, "--model", str(tiny_dir), "--dtype", "float32", "--frames", "2",
                           "--max-new-tokens", "3"], capsys)
    assert code == 0, err
    assert notes.read_bytes() == mine  # untouched
    refused = [line for line in err.splitlines() if str(notes) in line]
    assert len(refused) == 1 and "was not written by vqa" in refused[0] and "another file name" in refused[0]
    assert len(out.splitlines()) == 2  # both questions after the refusal were answered
    turns = json.loads(saved.read_text())["turns"]  # the second /save replaced vqa's own first save
    assert [t["question"] for t in turns] == ["What happens?", "And then?"]


# ---- one file, one kind of record ------------------------------------------------------------------------------

# caption records as `vqa caption` writes them, and eval records as `vqa eval` writes them (the fields each
# command's docs list; values of our own)
CAPTION_LINE = {"video": "/data/clip.mp4", "caption": "a dog runs", "error": None, "error_kind": None,
                "settings_id": "0123456789abcdef", "segments": None}
EVAL_LINE = {"video": "/data/v1.mp4", "qid": "action_count/0", "question": "What moves?", "options": ["a", "b"],
             "answer": "B", "prediction": "B", "correct": True, "error": None, "error_kind": None,
             "settings_id": "fedcba9876543210"}


def _bench(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "videos").mkdir()
    make_clip(str(tmp_path / "videos" / "v1.mp4"), 10, fps=10.0)
    ann = tmp_path / "mvb" / "action_count.json"  # MVBench's shape: a list of {video, question, candidates, answer}
    ann.parent.mkdir()
    ann.write_text(json.dumps([{"video": "v1.mp4", "question": "What moves?", "candidates": ["a box", "a ball"],
                                "answer": "a ball"}]))
    return str(ann), str(tmp_path / "videos")


def test_eval_onto_a_caption_output_is_refused_untouched(tmp_path, capsys):
    ann, videos = _bench(tmp_path)
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps(CAPTION_LINE) + "\n")
    before = captions.read_bytes()
    code, _, err = _run(["eval", ann, "--format", "mvbench", "--videos", videos, "--out", str(captions),
                         "--model", "/no/such/model"], capsys)
    line = _one_line(err)
    assert code == 2 and "holds caption records" in line and "writes eval records" in line
    assert captions.read_bytes() == before


def test_caption_onto_an_eval_output_is_refused_untouched(video, tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(EVAL_LINE) + "\n" + json.dumps({**EVAL_LINE, "qid": "action_count/1"}) + "\n")
    before = results.read_bytes()
    code, _, err = _run(["caption", video, "--out", str(results), "--model", "/no/such/model"], capsys)
    line = _one_line(err)
    assert code == 2 and "holds eval records" in line and "writes caption records" in line
    assert results.read_bytes() == before


# ---- two names of one file -------------------------------------------------------------------------------------


def test_a_second_writer_on_a_hard_link_of_a_locked_output_is_refused(video, tmp_path, capsys):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps(CAPTION_LINE) + "\n")
    os.link(first, second)
    before = first.read_bytes()
    with writer.OutputLock(str(first)):  # the first writer, holding its output
        code, _, err = _run(["caption", video, "--out", str(second), "--model", "/no/such/model"], capsys)
        line = _one_line(err)
        assert code == 2 and str(second) in line and "is being written by another vqa process" in line
    assert first.read_bytes() == second.read_bytes() == before and os.path.samefile(first, second)
    assert not writer.lock_path(second).exists()  # the refused writer left no lock file behind
    code, _, err = _run(["caption", video, "--out", str(second), "--summary", str(first), "--model", "/no/such"],
                        capsys)
    assert code == 2 and "--summary and --out name the same file" in _one_line(err)


# ---- a full disk while --out-dir writes -------------------------------------------------------------------------


def test_a_full_disk_while_out_dir_writes_is_one_line_leaves_no_temporary_file_and_resumes(tmp_path, tiny_dir,
                                                                                          capsys, monkeypatch):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("a.mp4", "b.mp4"):
        make_clip(str(clips / name), 10, fps=10.0)
    out_dir, index = tmp_path / "subs", tmp_path / "subs" / "index.jsonl"
    argv = ["caption", str(clips), "--format", "vtt", "--out-dir", str(out_dir), "--batch-size", "1",
            *_caption_args(tiny_dir)]
    real_fdopen = os.fdopen

    class FullDisk(io.TextIOWrapper):
        def writelines(self, lines):  # the disk fills after the file's first bytes
            super().write("WEBVTT\n")
            super().flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd, *args, **kwargs):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".b.vtt."):  # b.vtt's temporary file
            return FullDisk(real_fdopen(fd, "wb"), encoding="utf-8")
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
    code, _, err = _run(argv, capsys)
    line = _one_line(err)
    assert code == 1 and "No space left on device" in line and "b.vtt" in line
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.vtt", "index.jsonl"]  # no temporary file left
    assert [Path(json.loads(x)["video"]).name for x in index.read_text().splitlines()] == ["a.mp4"]
    a_vtt = (out_dir / "a.vtt").read_bytes()
    monkeypatch.setattr(os, "fdopen", real_fdopen)  # room again: the rerun does what is left
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    recs = [json.loads(x) for x in index.read_text().splitlines()]
    assert sorted(Path(r["video"]).name for r in recs) == ["a.mp4", "b.mp4"]
    assert (out_dir / "a.vtt").read_bytes() == a_vtt and (out_dir / "b.vtt").read_text().startswith("WEBVTT\n\n")
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]


# ---- frames --sheet -------------------------------------------------------------------------------------------


def test_a_sheet_onto_a_user_image_is_refused_and_a_sheet_vqa_wrote_is_replaced(clip_path, tmp_path, capsys):
    import cv2
    import numpy as np

    photo = tmp_path / "holiday.png"
    cv2.imwrite(str(photo), np.full((30, 40, 3), 200, np.uint8))
    before = photo.read_bytes()
    code, _, err = _run(["frames", clip_path, "--frames", "2", "--sheet", str(photo)], capsys)
    assert code == 2 and "was not written by vqa" in _one_line(err) and photo.read_bytes() == before
    sheet = tmp_path / "sheet.png"
    for frames in ("2", "3"):  # the second run replaces the first run's sheet
        code, _, err = _run(["frames", clip_path, "--frames", frames, "--sheet", str(sheet)], capsys)
        assert code == 0, err
        image = cv2.imread(str(sheet))
        assert image is not None and image.shape[0] > 0  # a whole PNG that decodes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
