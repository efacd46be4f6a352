"""Peak resident memory of ``vqa ask`` in each mode, one fresh process per mode (``wait4``'s maxrss).

    python benchmarks/modes_memory.py [--model DIR] [--video FILE]

Without ``--model`` the tiny random-weight checkpoint is built, so the figures show what each
mode's tensors add on top of the interpreter, torch and the (tiny) weights; the baseline row is
``vqa frames`` (no model) for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def peak_mib(cmd: list[str]) -> tuple[float, dict | None]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    try:
        record = json.loads(out)
    except ValueError:
        record = None
    return usage.ru_maxrss / 1024, record  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--video")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from vqa_cli.testing import tiny_checkpoint

            model = str(tiny_checkpoint(Path(tmp) / "tiny"))
        video = args.video
        if video is None:
            from vqa_cli.testing import make_clip

            video = make_clip(str(Path(tmp) / "clip.mp4"), 300, fps=30.0, size=(640, 360))
        vqa = [sys.executable, "-m", "vqa_cli"]
        base, _ = peak_mib(vqa + ["frames", video, "--json"])
        print("| mode | frames | visual tokens | RoPE | peak RSS MiB |")
        print("|---|---|---|---|---|")
        print(f"| (vqa frames, no model) | 32 | - | - | {base:.0f} |")
        for mode in ["anyres", "slowfast", "pooled"]:
            mib, rec = peak_mib(vqa + ["ask", video, "What happens?", "--model", model, "--mode", mode,
                                       "--max-new-tokens", "16", "--json"])
            print(f"| {mode} | {rec['frames']} | {rec['visual_tokens']} | {rec['rope_factor']:g} | {mib:.0f} |")


if __name__ == "__main__":
    main()
