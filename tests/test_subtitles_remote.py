"""Subtitles beside a clip with ``--feature-cache`` and ``--server``: the same records as a run of the model here
without them (the feature cache holds visual tokens only; the server gets the cues and gives those on screen at
the frames it samples, as a local run does)."""

from __future__ import annotations

import json

from tests.cli_run import run
from tests.clips import make_clip
from tests.serve_helpers import start
from vqa_cli.cli.options import run_settings
from vqa_cli.model.features import feature_key
from vqa_cli.settings import ModeSettings

SETTINGS = ["--frames", "2", "--max-new-tokens", "4"]
# frames 10 and 30 of a 4 s clip at 10 fps: 1.0 s and 3.0 s (with fixed:2, 0.5 s and 2.5 s)
SRT = ("1\n00:00:00,400 --> 00:00:01,200\nA cue at the first frame.\n\n"
       "2\n00:00:01,500 --> 00:00:02,000\nBetween the frames.\n\n"
       "3\n00:00:02,400 --> 00:00:03,100\nA cue at the second frame.\n")
RUN_DETAILS = ("timings", "tokens_per_second", "batch_size")


def _records(path):
    return [{k: v for k, v in json.loads(line).items() if k not in RUN_DETAILS}
            for line in path.read_text().splitlines()]


def _folder(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_clip(str(videos / "clip.mp4"), 40, fps=10.0)
    (videos / "clip.srt").write_text(SRT)
    return videos


def test_feature_cache_with_subtitles_and_segments_answers_as_without_it(tiny_dir, tmp_path, capsys):
    videos = _folder(tmp_path)
    cache = tmp_path / "features"
    for extra in ([], ["--segments", "fixed:2"]):
        name = "seg" if extra else "one"
        base = ["caption", str(videos / "clip.mp4"), "--model", str(tiny_dir), *SETTINGS, *extra]
        code, _, err = run([*base, "--out", str(tmp_path / f"{name}-plain.jsonl")], capsys)
        assert code == 0, err
        plain = _records(tmp_path / f"{name}-plain.jsonl")
        assert plain[0]["subtitle_tokens"] > 0
        for attempt in ("kept", "reused"):
            out = tmp_path / f"{name}-{attempt}.jsonl"
            code, _, err = run([*base, "--feature-cache", str(cache), "--out", str(out)], capsys)
            assert code == 0, err
            timings = [json.loads(line)["timings"] for line in out.read_text().splitlines()]
            assert ("encode" in timings[0]) == (attempt == "kept")  # the second run reads the cache
            assert _records(out) == plain
    assert len(list(cache.glob("*.safetensors"))) == 1 + 2  # the whole clip, and each of its two segments


def test_subtitles_do_not_change_the_feature_key_unless_the_guide_reads_them():
    def key(guide: bool, context: str) -> str:
        settings = run_settings(model="m")
        settings = type(settings)(**{**settings.__dict__, "mode": ModeSettings("pooled", guide=guide)})
        return feature_key({"path": "v"}, settings, 8, {"dir": "m"}, dtype="float32", device="cpu",
                           question="Describe.", context=context)

    assert key(False, "digest") == key(False, "")  # visual tokens: the subtitles change nothing
    assert key(True, "digest") != key(True, "") != key(True, "other")  # the guide's question holds them


def test_server_gives_the_subtitles_a_local_run_gives(tiny_dir, tmp_path, capsys, monkeypatch):
    videos = _folder(tmp_path)
    clip = str(videos / "clip.mp4")
    local_out, remote_out = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    code, _, err = run(["caption", clip, "--model", str(tiny_dir), *SETTINGS, "--out", str(local_out)], capsys)
    assert code == 0, err
    off_ask = json.loads(run(["ask", clip, "What?", "--model", str(tiny_dir), *SETTINGS, "--json", "--subtitles",
                              "off"], capsys)[1])
    local_ask = json.loads(run(["ask", clip, "What?", "--model", str(tiny_dir), *SETTINGS, "--json"], capsys)[1])
    srv = start(["--model", str(tiny_dir), "--media-root", str(videos), *SETTINGS])
    try:
        code, _, err = run(["caption", clip, "--server", srv.url, *SETTINGS, "--out", str(remote_out)], capsys)
        assert code == 0, err
        code, out, err = run(["ask", clip, "What?", "--server", srv.url, *SETTINGS, "--json"], capsys)
        assert code == 0, err
        remote_ask = json.loads(out)
        code, _, err = run(["ask", clip, "What?", "--server", srv.url, "--segments", "fixed:2"], capsys)
        assert code == 2 and "--segments" in err
    finally:
        srv.stop()
    local, remote = _records(local_out), _records(remote_out)
    assert local[0]["subtitle_tokens"] > 0 and len(remote) == len(local) == 1
    differ = {k: (v, remote[0].get(k)) for k, v in local[0].items() if remote[0].get(k) != v}
    assert differ == {} and list(remote[0]) == list(local[0])  # settings_id, caption and subtitle_tokens included
    # the cues on screen at 1.0 s and 3.0 s under docs/segments.md's header, counted by the model's own tokenizer
    from transformers import AutoTokenizer

    given = "This video's subtitles:\nA cue at the first frame.\nA cue at the second frame."
    tokens = len(AutoTokenizer.from_pretrained(str(tiny_dir))(given, add_special_tokens=False)["input_ids"])
    assert local_ask["subtitle_tokens"] == local[0]["subtitle_tokens"] == tokens
    assert local_ask["prompt_tokens"] >= off_ask["prompt_tokens"] + tokens
    strip = lambda r: {k: v for k, v in r.items() if k not in RUN_DETAILS}  # noqa: E731
    assert list(remote_ask) == list(local_ask) and strip(remote_ask) == strip(local_ask)


def test_a_request_carries_the_cues_and_a_malformed_field_is_a_400():
    import pytest

    from vqa_cli.output import subtitles
    from vqa_cli.serve._body import ApiError
    from vqa_cli.serve._requests import parse_chat
    from vqa_cli.settings import RunSettings

    def parse(value):
        messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "v.mp4"}},
                                                 {"type": "text", "text": "What?"}]}]
        return parse_chat({"model": "m", "messages": messages, "subtitles": value}, RunSettings(model="m"))

    cues = [subtitles.Cue(2.0, 3.0, "second"), subtitles.Cue(0.0, 1.5, "first")]
    assert parse(subtitles.to_wire(cues)).cues == sorted(cues, key=lambda c: c.start)
    assert parse(None).cues == []
    for bad in ("text", [[0, 1]], [[0, "1", "x"]], [[0, 1, 5]], [[True, 1, "x"]]):
        with pytest.raises(ApiError) as info:
            parse(bad)
        assert (info.value.status, info.value.param) == (400, "subtitles"), bad
