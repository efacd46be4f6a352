"""``caption --feature-cache DIR``: a re-run with another prompt reuses the visual tokens, and answers the same."""

from __future__ import annotations

import json
import os
import shutil

from cli_run import run

SETTINGS = ["--frames", "6", "--max-new-tokens", "6"]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_rerun_with_another_prompt_skips_decode_and_encode_and_answers_the_same(tiny_dir, clip_path, tmp_path,
                                                                                  capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(clip_path, videos / name)
    os.utime(videos / "b.mp4", (1, 1))  # another identity, same content
    cache = tmp_path / "features"
    base = ["caption", str(videos), "--model", str(tiny_dir), *SETTINGS, "--feature-cache", str(cache)]
    code, _, err = run(base + ["--prompt", "Describe it.", "--out", str(tmp_path / "one.jsonl")], capsys)
    assert code == 0, err
    assert len(list(cache.glob("*.safetensors"))) == 2
    first = records(tmp_path / "one.jsonl")
    assert all("decode" in r["timings"] and "encode" in r["timings"] for r in first)
    code, _, err = run(base + ["--prompt", "List the objects.", "--out", str(tmp_path / "two.jsonl")], capsys)
    assert code == 0, err
    cached = records(tmp_path / "two.jsonl")
    assert all(not {"decode", "preprocess", "encode"} & set(r["timings"]) for r in cached)
    assert [r["frame_indices"] for r in cached] == [r["frame_indices"] for r in first]
    code, _, err = run(["caption", str(videos), "--model", str(tiny_dir), *SETTINGS, "--prompt", "List the objects.",
                        "--out", str(tmp_path / "plain.jsonl")], capsys)
    plain = records(tmp_path / "plain.jsonl")
    assert [r["caption"] for r in cached] == [r["caption"] for r in plain]


def test_a_changed_video_is_decoded_again(tiny_dir, clip_path, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip_path, videos / "a.mp4")
    cache = tmp_path / "features"
    base = ["caption", str(videos), "--model", str(tiny_dir), *SETTINGS, "--feature-cache", str(cache)]
    run(base + ["--out", str(tmp_path / "one.jsonl")], capsys)
    os.utime(videos / "a.mp4", (5, 5))
    run(base + ["--out", str(tmp_path / "two.jsonl")], capsys)
    assert "decode" in records(tmp_path / "two.jsonl")[0]["timings"]
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_vqa_serve_reads_what_caption_kept(tiny_dir, clip_path, tmp_path, capsys):
    from serve_helpers import start

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip_path, videos / "a.mp4")
    cache = tmp_path / "features"
    run(["caption", str(videos), "--model", str(tiny_dir), *SETTINGS, "--feature-cache", str(cache),
         "--out", str(tmp_path / "one.jsonl")], capsys)
    srv = start(["--model", str(tiny_dir), "--media-root", str(videos), "--feature-cache", str(cache), *SETTINGS])
    try:
        status, reply = srv.post("/v1/chat/completions", {"model": str(tiny_dir), "messages": [
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "a.mp4"}},
                                         {"type": "text", "text": "Describe this video."}]}]})
    finally:
        srv.stop()
    assert status == 200 and reply["vqa"]["cache"]["features"] == "disk"
    assert not {"decode", "encode"} & set(reply["vqa"]["timings"])
