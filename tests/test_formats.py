"""`--format`: SRT, WebVTT, text, CSV and ffmpeg chapters, read back by real parsers; `--out-dir` sidecars."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from datetime import timedelta

import pytest
import srt
import webvtt

from tests.clips import ffmpeg_exe, make_clip
from vqa_cli.cli import main
from vqa_cli.output.writer._formats import WRITERS, cues, format_writer

RECORD = {"video": "/v/clip.mp4", "caption": "a\nb", "duration": 3725.5, "segments": [
    {"start": 0.0, "end": 2.3, "caption": "A red room.\n\nA cat --> sits."},
    {"start": 2.3, "end": 61.25, "caption": "Green, \"quoted\"; title=x #1"},
    {"start": 61.25, "end": 3725.5, "caption": "An hour later"}]}


def test_srt_reads_back_with_the_srt_package():
    subs = list(srt.parse(format_writer("srt").text(RECORD)))
    assert [(s.start, s.end) for s in subs] == [
        (timedelta(0), timedelta(seconds=2.3)), (timedelta(seconds=2.3), timedelta(seconds=61.25)),
        (timedelta(seconds=61.25), timedelta(seconds=3725.5))]
    assert subs[0].content == "A red room.\nA cat -> sits." and subs[2].content == "An hour later"


def test_vtt_reads_back_with_webvtt_py():
    captions = webvtt.from_buffer(io.StringIO(format_writer("vtt").text(RECORD)))
    assert [(c.start, c.end) for c in captions] == [("00:00:00.000", "00:00:02.300"),
                                                    ("00:00:02.300", "00:01:01.250"),
                                                    ("00:01:01.250", "01:02:05.500")]
    assert captions[1].text == 'Green, "quoted"; title=x #1'


def test_a_record_without_segments_is_one_cue_over_the_video():
    record = {"video": "v.mp4", "caption": " whole ", "duration": 4.0, "segments": None}
    assert cues(record) == [(0.0, 4.0, "whole")]
    assert [(s.start, s.end) for s in srt.parse(format_writer("srt").text(record))] == [
        (timedelta(0), timedelta(seconds=4))]


def test_txt_and_csv():
    assert format_writer("txt").text(RECORD).splitlines() == ["A red room. A cat --> sits.",
                                                              'Green, "quoted"; title=x #1', "An hour later"]
    rows = list(csv.DictReader(io.StringIO(format_writer("csv").text(RECORD))))
    assert [(r["start"], r["end"]) for r in rows] == [("0.000", "2.300"), ("2.300", "61.250"), ("61.250", "3725.500")]
    assert rows[0]["caption"] == "A red room.\n\nA cat --> sits." and rows[0]["video"] == "/v/clip.mp4"


def test_chapters_are_read_by_ffmpeg(tmp_path):
    video = make_clip(str(tmp_path / "v.mp4"), 30, fps=10.0)
    record = {"video": video, "segments": [{"start": 0.0, "end": 1.2, "caption": "one = first; #"},
                                           {"start": 1.2, "end": 3.0, "caption": "two"}]}
    meta = tmp_path / "v.chapters"
    meta.write_text(format_writer("chapters").text(record))
    out = tmp_path / "with.mkv"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", video, "-i", str(meta), "-map_metadata", "1",
                    "-map_chapters", "1", "-c", "copy", str(out)], check=True)
    probe = subprocess.run([ffmpeg_exe(), "-i", str(out), "-f", "ffmetadata", "-"], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert "START=0" in probe.stdout and "END=1200" in probe.stdout and "END=3000" in probe.stdout
    assert "title=one \\= first\\; \\#" in probe.stdout and "title=two" in probe.stdout


def test_every_format_has_a_writer():
    from vqa_cli.jobs.transcribe import TRANSCRIBE_FORMATS
    from vqa_cli.output.writer._formats import OUTPUT_FORMATS

    assert set(WRITERS) == (set(OUTPUT_FORMATS) - {"jsonl"}) | set(TRANSCRIBE_FORMATS)  # caption's and transcribe's


def _run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["caption", *argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_srt_to_stdout_and_sidecars_in_an_out_dir(tmp_path, tiny_dir, capsys):
    video = make_clip(str(tmp_path / "clip.mp4"), 50, fps=10.0)
    args = ["--model", str(tiny_dir), "--dtype", "float32", "--frames", "1", "--max-new-tokens", "2",
            "--segments", "fixed:2"]
    code, out, _ = _run([video, "--format", "srt", *args], capsys)
    assert code == 0
    assert [(s.start.total_seconds(), s.end.total_seconds()) for s in srt.parse(out)] == [(0, 2), (2, 4), (4, 5)]
    folder = tmp_path / "subs"
    code, out, _ = _run([video, "--format", "vtt", "--out-dir", str(folder), *args], capsys)
    assert code == 0 and out == ""
    index = [json.loads(x) for x in (folder / "index.jsonl").read_text().splitlines()]
    assert index[0]["output"] == str(folder / "clip.vtt") and len(index[0]["segments"]) == 3
    assert len(webvtt.read(str(folder / "clip.vtt"))) == 3
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    code, _, err = _run([video, "--format", "vtt", "--out-dir", str(folder), *args], capsys)
    assert code == 0 and "nothing to do" in err


def test_csv_of_several_videos_has_one_header(tmp_path, tiny_dir, capsys):
    a, b = make_clip(str(tmp_path / "a.mp4"), 20, fps=10.0), make_clip(str(tmp_path / "b.mp4"), 30, fps=10.0)
    code, out, _ = _run([a, b, "--format", "csv", "--model", str(tiny_dir), "--dtype", "float32", "--frames", "1",
                         "--max-new-tokens", "2", "--segments", "fixed:1.5"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["video"], r["start"], r["end"]) for r in rows] == [
        (a, "0.000", "1.500"), (a, "1.500", "2.000"), (b, "0.000", "1.500"), (b, "1.500", "3.000")]
