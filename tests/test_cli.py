"""The command line: TTY, pipe and --json output, exit codes, and no tracebacks for user mistakes."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys

import pytest

from tests.cli_run import run

VQA = [sys.executable, "-m", "vqa_cli"]


def test_ask_json_has_the_documented_fields(tiny_dir, clip_path, capsys):
    code, out, err = run(["ask", clip_path, "What happens?", "--model", str(tiny_dir), "--frames", "8",
                          "--max-new-tokens", "6", "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    for key in ("answer", "model", "mode", "frames", "frame_indices", "timestamps", "duration", "visual_tokens",
                "rope_factor", "timings", "tokens_per_second"):
        assert key in record
    assert record["frames"] == 8 and record["visual_tokens"] == 8 * 144 and record["mode"] == "anyres"
    assert set(record["timings"]) >= {"load", "decode", "preprocess", "first_token", "generate"}
    assert all(t < record["duration"] for t in record["timestamps"])
    assert out.count("\n") == 1  # exactly one JSON object


def test_ask_default_is_32_frames_with_rope_factor_2(tiny_dir, clip_path, capsys):
    code, out, err = run(["ask", clip_path, "q", "--model", str(tiny_dir), "--max-new-tokens", "2", "--json"], capsys)
    record = json.loads(out)
    assert (record["frames"], record["visual_tokens"], record["rope_factor"]) == (32, 4608, 2.0)


def test_ask_in_a_pipe_prints_the_answer_only(tiny_dir, clip_path):
    proc = subprocess.run(VQA + ["ask", clip_path, "What happens?", "--model", str(tiny_dir), "--frames", "4",
                                 "--max-new-tokens", "6"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    as_json = subprocess.run(VQA + ["ask", clip_path, "What happens?", "--model", str(tiny_dir), "--frames", "4",
                                    "--max-new-tokens", "6", "--json"], capture_output=True, text=True, timeout=300)
    answer = json.loads(as_json.stdout)["answer"]
    assert proc.stdout == answer + "\n"  # plain text, nothing else on stdout
    assert "\x1b[" not in proc.stdout + proc.stderr  # no colour codes when not on a terminal


def _run_on_tty(argv, timeout=300):
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"})
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            proc.kill()
            raise TimeoutError
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(leader)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_ask_on_a_tty_streams_the_answer_and_shows_stats(tiny_dir, clip_path):
    args = ["ask", clip_path, "What happens?", "--model", str(tiny_dir), "--frames", "4", "--max-new-tokens", "6"]
    code, screen = _run_on_tty(VQA + args)
    assert code == 0, screen
    answer = json.loads(subprocess.run(VQA + args + ["--json"], capture_output=True, text=True).stdout)["answer"]
    assert answer in screen
    assert "visual tokens" in screen and "tok/s" in screen  # the stats line (stderr, TTY only)


def test_plan_needs_no_weights(tiny_dir, tmp_path, clip_path, capsys):
    import shutil

    configs_only = tmp_path / "configs"
    shutil.copytree(tiny_dir, configs_only, ignore=shutil.ignore_patterns("*.safetensors"))
    code, out, err = run(["ask", clip_path, "q", "--model", str(configs_only), "--plan", "--json"], capsys)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["visual_tokens"] == 4608 and plan["rope_factor"] == 2.0
    assert plan["memory"]["weights_gib"] > 0 and plan["memory"]["kv_cache_gib"] > 0


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["ask", "/no/such/video.mp4", "q"], 2, "no such file"),
        (["ask", "{clip}", "q", "--model", "./no/such/model"], 2, "no model directory"),
        (["ask", "{clip}", "q", "--model", "nonsense model"], 2, "unknown model"),
        (["ask", "{clip}", "q", "--model", "{tiny}", "--frames", "1000"], 2, "frames fit"),
        (["ask", "{clip}", "q", "--model", "{tiny}", "--start", "5", "--end", "2"], 2, "--end must be after"),
        (["ask", "{clip}", "q", "--model", "{tiny}", "--pool", "1,2"], 2, "--pool takes three"),
        (["ask", "{clip}", "q", "--mode", "nonsense"], 2, "nonsense"),
        (["ask", "{clip}", "q", "--frames", "0"], 2, "--frames"),
        (["ask", "{clip}"], 2, "give a question"),
        (["ask"], 2, "Missing argument"),
        (["ask", "{broken}", "q", "--model", "{tiny}"], 1, "cannot decode"),
        (["ask", "{clip}", "q", "--model", "{tiny}", "--start", "60"], 1, "past the end"),
        (["frames", "{broken}"], 1, "cannot decode"),
        (["caption", "/no/such/folder", "--model", "{tiny}"], 2, "no such file or folder"),
        (["nonsense-command"], 2, "No such command"),
        (["frames", "{clip}", "--fps", "2", "--frames", "3"], 2, "pick one"),
        (["frames", "{clip}", "--max-frames", "3"], 2, "--max-frames caps --fps"),
        (["ask", "{clip}", "q", "--seek", "sideways"], 2, "sideways"),
    ],
)
def test_user_mistakes_get_one_line_and_the_right_exit_code(argv, code, message, tiny_dir, clip_path, tmp_path,
                                                            capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(os.urandom(2048))
    argv = [a.format(clip=clip_path, tiny=tiny_dir, broken=broken) for a in argv]
    got, out, err = run(argv, capsys)
    assert got == code, err
    assert message in err
    assert "Traceback" not in err and out == ""


def test_help_and_frames_do_not_import_torch(clip_path):
    probe = (
        "import sys\nfrom vqa_cli.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code, file=sys.stderr)\n"
    )
    for argv in (["--help"], ["ask", "--help"], ["frames", clip_path, "--frames", "4"]):
        proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
        assert "NO-TORCH 0" in proc.stderr, (argv, proc.stderr)


def test_frames_json_lists_indices_timestamps_and_pathways(clip_path, capsys, tmp_path):
    sheet = tmp_path / "sheet.jpg"
    code, out, err = run(["frames", clip_path, "--frames", "6", "--json", "--sheet", str(sheet)], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["frames"] == 6 and len(record["timestamps"]) == 6 and record["total_frames"] == 90
    assert record["pathways"][0]["frames"] == list(range(6))
    assert sheet.stat().st_size > 0
    code, out, _ = run(["frames", clip_path, "--frames", "50", "--mode", "slowfast", "--json"], capsys)
    slow = json.loads(out)["pathways"][0]
    assert slow["name"] == "slow" and slow["frames"] == list(range(0, 50, 5))


def test_frames_plain_output_is_tab_separated(clip_path, capsys):
    code, out, _ = run(["frames", clip_path, "--frames", "3"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and all(len(line.split("\t")) == 2 for line in lines)


def test_models_lists_every_alias_offline(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    code, out, _ = run(["models", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and {r["alias"] for r in rows} >= {"llava-next-video-7b", "video-llava-7b",
                                                         "llava-onevision-0.5b"}
    assert not any(r["cached"] for r in rows)
    code, out, _ = run(["models"], capsys)
    assert code == 0 and out.splitlines()[0].startswith("alias\tfamily")


def test_download_without_a_network_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    code, out, err = run(["download", "llava-onevision-0.5b"], capsys)
    assert code == 1 and "cannot download" in err and "Traceback" not in err


def test_fps_sampling_is_capped_and_reported(tiny_dir, clip_path, capsys):
    code, out, err = run(["ask", clip_path, "q", "--model", str(tiny_dir), "--fps", "4", "--max-frames", "8",
                          "--max-new-tokens", "2", "--json"], capsys)
    record = json.loads(out)
    assert code == 0, err
    assert record["frames"] == 8 and record["visual_tokens"] == 8 * 144  # 3 s x 4 fps = 12, capped at 8
    code, out, _ = run(["frames", clip_path, "--fps", "2", "--json"], capsys)
    record = json.loads(out)
    assert record["frames"] == 6 and record["seek"] in ("exact", "keyframe")


def test_keyframe_seek_reports_the_frames_it_returns(clip_path, capsys):
    code, out, _ = run(["frames", clip_path, "--frames", "4", "--seek", "keyframe", "--json"], capsys)
    record = json.loads(out)
    assert code == 0 and record["seek"] == "keyframe"
    assert len(record["frame_indices"]) == len(record["timestamps"]) == record["frames"] >= 1


def test_help_imports_neither_torch_nor_opencv():
    probe = ("import sys\nfrom vqa_cli.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'cv2', 'transformers', 'av') if m in sys.modules), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().endswith("[]"), proc.stderr


def test_help_shows_flags_as_flags():
    """``--version``, ``--help`` and ``--json`` take no value: the help shows no ``<bool>`` type after them, while
    options that take a value keep theirs."""
    env = {**os.environ, "COLUMNS": "200"}
    root = subprocess.run(VQA + ["--help"], capture_output=True, text=True, timeout=120, env=env)
    frames = subprocess.run(VQA + ["frames", "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert root.returncode == frames.returncode == 0, root.stderr + frames.stderr
    assert "--version" in root.stdout and "--json" in frames.stdout
    assert "<bool>" not in root.stdout and "<bool>" not in frames.stdout
    assert "<exact|keyframe|auto>" in frames.stdout and "<auto|opencv|pyav>" in frames.stdout
