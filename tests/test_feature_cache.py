"""``caption --feature-cache DIR``: a re-run with another prompt reuses the visual tokens, and answers the same."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.cli_run import run

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
    from tests.serve_helpers import start

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


# ---- damaged entries, full disks and folders vqa cannot write ------------------------------------------------------


def _data_region(path) -> tuple[int, int]:
    """(start, end) of a safetensors file's tensor bytes, by the format's spec: an 8-byte little-endian header
    length, the JSON header, then the data (offsets relative to its start)."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    start, end = header["features"]["data_offsets"]
    return 8 + size + start, 8 + size + end


def _one_video(tmp_path, clip_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip_path, videos / "a.mp4")
    return videos


def _caption(tiny_dir, videos, out, capsys, *extra):
    code, _, err = run(["caption", str(videos), "--model", str(tiny_dir), *SETTINGS, "--prompt", "List the objects.",
                        "--out", str(out), *extra], capsys)
    assert code == 0, err
    return records(out), err


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:") and "feature" in line]


@pytest.mark.parametrize("damage", ["flip bytes in the tensor data", "truncate", "change a timestamp in the record"])
def test_a_damaged_entry_is_one_warning_and_computed_again(damage, tiny_dir, clip_path, tmp_path, capsys):
    videos = _one_video(tmp_path, clip_path)
    cache = tmp_path / "features"
    _caption(tiny_dir, videos, tmp_path / "one.jsonl", capsys, "--feature-cache", str(cache))
    (entry,) = cache.glob("*.safetensors")
    raw = bytearray(entry.read_bytes())
    if damage == "truncate":
        raw = raw[:len(raw) // 2]
    elif damage == "change a timestamp in the record":  # the header stays valid JSON of the same length
        at = raw.index(b"timestamps") + len(b"timestamps")
        while not chr(raw[at]).isdigit():
            at += 1
        raw[at] = ord("7") if raw[at] != ord("7") else ord("3")
    else:
        start, end = _data_region(entry)
        raw[start:end] = bytes(b ^ 0x5A for b in raw[start:end])  # every value changed, the file still opens
    entry.write_bytes(bytes(raw))
    again, err = _caption(tiny_dir, videos, tmp_path / "two.jsonl", capsys, "--feature-cache", str(cache))
    said = _warnings(err)
    assert len(said) == 1 and str(entry) in said[0]
    assert {"decode", "encode"} <= set(again[0]["timings"])  # computed again, not read from the damaged entry
    plain, _ = _caption(tiny_dir, videos, tmp_path / "plain.jsonl", capsys)  # the oracle: no cache at all
    assert again[0]["caption"] == plain[0]["caption"]
    third, err = _caption(tiny_dir, videos, tmp_path / "three.jsonl", capsys, "--feature-cache", str(cache))
    assert _warnings(err) == [] and not {"decode", "encode"} & set(third[0]["timings"])  # the entry was replaced
    assert third[0]["caption"] == plain[0]["caption"]


def test_an_entry_under_another_keys_name_is_not_used(tmp_path, clip_path):
    import torch

    from vqa_cli.model.features import FeatureCache, Key
    from vqa_cli.video import sample_frames

    clip = sample_frames(clip_path, 2)
    folder = tmp_path / "fc"
    first, second = Key('{"video": 1}'), Key('{"video": 2}')
    cache = FeatureCache(0, folder)
    cache.put(first, clip, torch.ones(2, 3))
    cache.flush()
    shutil.copy(folder / f"{first}.safetensors", folder / f"{second}.safetensors")  # whole, but not made for it
    assert FeatureCache(0, folder).get(second) is None
    assert torch.equal(FeatureCache(0, folder).get(first).features, torch.ones(2, 3))


def test_a_full_disk_during_a_write_leaves_no_temporary_file(tiny_dir, clip_path, tmp_path, capsys, monkeypatch):
    """ENOSPC at the write system call, for files in the cache folder only (as a full disk gives it): half the
    bytes land, then the error."""
    import errno

    videos = _one_video(tmp_path, clip_path)
    cache = tmp_path / "features"
    cache.mkdir()
    real_write = os.write

    def full_disk(fd, data):
        if os.path.realpath(f"/proc/self/fd/{fd}").startswith(str(cache.resolve()) + os.sep):
            real_write(fd, bytes(data[:len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    got, err = _caption(tiny_dir, videos, tmp_path / "one.jsonl", capsys, "--feature-cache", str(cache))
    monkeypatch.setattr(os, "write", real_write)
    said = _warnings(err)
    assert len(said) == 1 and "No space left on device" in said[0] and "memory cache only" in said[0]
    assert list(cache.iterdir()) == []  # neither a temporary file nor a half entry
    plain, _ = _caption(tiny_dir, videos, tmp_path / "plain.jsonl", capsys)
    assert got[0]["caption"] == plain[0]["caption"]


def test_a_file_where_the_folder_should_be_is_one_warning(tiny_dir, clip_path, tmp_path, capsys):
    """The runtime side (``vqa serve`` and ``caption`` past their option checks): ``run_caption`` itself."""
    from vqa_cli.cli.options import run_settings
    from vqa_cli.jobs.caption import run_caption

    videos = _one_video(tmp_path, clip_path)
    blocker = tmp_path / "features"
    blocker.write_text("a user's file")
    settings = run_settings(model=str(tiny_dir), frames=6, max_new_tokens=6)
    run_caption(settings, [str(videos)], str(tmp_path / "one.jsonl"), "List the objects.", feature_cache=str(blocker))
    err = capsys.readouterr().err
    said = _warnings(err)
    assert len(said) == 1 and str(blocker) in said[0] and "memory cache only" in said[0]
    assert blocker.read_text() == "a user's file"
    plain, _ = _caption(tiny_dir, videos, tmp_path / "plain.jsonl", capsys)
    assert records(tmp_path / "one.jsonl")[0]["caption"] == plain[0]["caption"]


READ_ONLY_SCRIPT = """
import ctypes, os, sys, torch
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: without them root obeys permission bits
    libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (effective at the exec below)
os.execv(sys.executable, [sys.executable, "-c", '''
import sys, torch
from vqa_cli.model.features import FeatureCache, Key
from vqa_cli.video import sample_frames
try:
    open(sys.argv[1] + "/probe", "w")
    print("BINDS-NOT")
    sys.exit(0)
except OSError:
    pass
cache = FeatureCache(10**6, sys.argv[1])
clip = sample_frames(sys.argv[2], 2)
cache.put(Key("{}"), clip, torch.ones(2, 3))
cache.flush()
print("FOUND", cache.get(Key("{}")).where)
''', *sys.argv[1:]])
"""


def test_a_read_only_folder_is_one_warning_and_the_memory_cache(tmp_path, clip_path):
    import subprocess
    import sys

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        proc = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT, str(folder), clip_path], capture_output=True,
                              text=True, timeout=120)
    finally:
        folder.chmod(0o755)
    if "BINDS-NOT" in proc.stdout:
        pytest.skip("permission bits do not bind here (root without a droppable DAC override)")
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(said) == 1 and "Permission denied" in said[0] and "memory cache only" in said[0]
    assert proc.stdout.split() == ["FOUND", "memory"] and list(folder.iterdir()) == []


def test_stale_temporary_files_are_removed_when_the_cache_opens(tmp_path):
    from vqa_cli.model.features import STALE_TMP_SECONDS, TMP_PREFIX, FeatureCache

    folder = tmp_path / "fc"
    folder.mkdir()
    old, fresh = folder / f"{TMP_PREFIX}old.safetensors", folder / f"{TMP_PREFIX}new.safetensors"
    old.write_bytes(b"")  # what a full disk left under an older vqa
    fresh.write_bytes(b"")  # another process's write in progress
    past = os.stat(old).st_mtime - STALE_TMP_SECONDS - 60
    os.utime(old, (past, past))
    FeatureCache(0, folder)
    assert not old.exists() and fresh.exists()
