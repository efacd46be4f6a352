"""The command line's values, checked before the model loads: a hostile (or careless) user gets one line on
stderr and exit 2, never a traceback, and no weight is read."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli_run import run


@pytest.fixture
def no_load(monkeypatch):
    """Loading weights fails the test: the checks must come first."""
    from vqa_cli.model import engine
    from vqa_cli.model.weights import loader

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(engine, "Engine", never)
    monkeypatch.setattr(loader, "load_model", never)


def one_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


ASK = ["ask", "{clip}", "What happens?", "--model", "{tiny}", "--max-new-tokens", "2"]


def args(extra: list[str], clip_path: str, tiny_dir, base: list[str] = ASK) -> list[str]:
    return [a.format(clip=clip_path, tiny=str(tiny_dir)) for a in base] + extra


@pytest.mark.parametrize("extra,named", [
    (["--seed", str(2**70)], "--seed"),
    (["--seed", str(2**64)], "--seed"),
    (["--seed", str(-(2**63) - 1)], "--seed"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--fps", "inf"], "--fps"),
    (["--start", "inf"], "--start"),
    (["--rope-scale", "inf"], "--rope-scale"),
    (["--server", "localhost:8000"], "--server"),
    (["--server", "ftp://127.0.0.1:8000"], "--server"),
    (["--server", "http://"], "--server"),
    (["--server", "http://127.0.0.1:99999"], "--server"),
    (["--server", "http://[::1"], "--server"),
])
def test_a_bad_value_is_one_line_and_exit_2_before_the_model_loads(extra, named, clip_path, tiny_dir, capsys,
                                                                      no_load):
    code, out, err = run(args(extra, clip_path, tiny_dir), capsys)
    line = one_line(code, err)
    assert line.startswith(f"error: {named} ") and out == "", line


def test_the_largest_seed_torch_takes_is_taken(clip_path, tiny_dir, capsys):
    code, out, err = run(args(["--seed", str(2**64 - 1), "--temperature", "0.7"], clip_path, tiny_dir), capsys)
    assert code == 0 and out.strip(), err


def test_a_nul_in_a_path_is_one_line(clip_path, tiny_dir, capsys, no_load):
    line = one_line(*run(args([], "clip\x00.mp4", tiny_dir), capsys)[::2])
    assert "NUL" in line
    line = one_line(*run(args([], clip_path, "tiny\x00dir"), capsys)[::2])
    assert "--model" in line and "NUL" in line


@pytest.mark.parametrize("command", ["serve", "caption"])
def test_a_feature_cache_that_is_a_file_or_unwritable_is_one_line(command, clip_path, tiny_dir, tmp_path, capsys,
                                                                  no_load):
    base = ["serve", "--model", "{tiny}", "--port", "0"] if command == "serve" else ["caption", "{clip}", "--model",
                                                                                     "{tiny}"]
    a_file = tmp_path / "cache.bin"
    a_file.write_bytes(b"mine")
    for folder, says in ((a_file, "is a file"), (a_file / "sub", "not a folder vqa can write"),
                         ("/proc/vqa-feature-cache", "not a folder vqa can write")):
        line = one_line(*run(args(["--feature-cache", str(folder)], clip_path, tiny_dir, base), capsys)[::2])
        assert line.startswith("error: --feature-cache ") and says in line, line
    assert a_file.read_bytes() == b"mine"  # the user's file is left as it was


@pytest.mark.parametrize("extra,says", [
    (["--max-request-memory", "lots"], "--max-request-memory: 'lots' is not a size"),
    (["--max-upload-mb", "inf"], "--max-upload-mb must be a finite number"),
    (["--kv-cache-gib", "inf"], "--kv-cache-gib must be a finite number"),
])
def test_a_serve_size_that_is_not_one_is_one_line(extra, says, tiny_dir, capsys, no_load):
    line = one_line(*run(["serve", "--model", str(tiny_dir), "--port", "0", *extra], capsys)[::2])
    assert line.startswith(f"error: {says}"), line


def test_as_a_process_the_user_sees_one_line(clip_path, tiny_dir):
    """The same through a real process (argv as the shell passes it), for the seed the issue found."""
    done = subprocess.run([sys.executable, "-m", "vqa_cli", *args(["--seed", str(2**70), "--temperature", "1"],
                                                                  clip_path, tiny_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "--seed" in done.stderr


def test_an_absurd_frame_count_is_one_line_before_the_budget_is_made(clip_path, tiny_dir):
    # Under a 4 GiB address-space cap, so that a regression (a plan that holds a position per frame) fails
    # with an out-of-memory exit 1 instead of taking the machine.
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    for extra in (["--frames", str(10**9)], ["--frames", str(10**9), "--plan"]):
        done = subprocess.run([sys.executable, "-m", "vqa_cli", *args(extra, clip_path, tiny_dir)], text=True,
                              capture_output=True, timeout=120, preexec_fn=cap)
        line = one_line(done.returncode, done.stderr)
        assert "1000000000 frames need at least" in line and "try fewer --frames" in line, line
        assert done.stdout == ""
