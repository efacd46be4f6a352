"""``vqa serve``: what loading once buys, measured against the named baselines in the same run.

1. **Ten questions about ten videos.** Baseline: ``vqa ask`` run as ten processes, one after another
   (a shell loop: every call imports, loads the model, answers). vqa: one ``vqa serve`` (started
   once, its start-up timed separately) and the same ten ``vqa ask --server`` processes. The ratio
   compares the loops; the table also gives the server's start-up and the ratio with it included.
2. **A second question about the same video.** Time to first token seen by the client (streamed
   request sent -> first text chunk), first question vs a second one about the same video: the
   second skips decoding and encoding (feature cache) and the video's prefill (kept KV cache).
3. **Loading.** Quantize-on-load 4-bit vs the pre-quantized copy (``benchmarks/load.py``).

A random-weight checkpoint with llava-onevision-qwen2-0.5b's geometry is built unless ``--model``
names one, so that loading costs what it costs for that model (about 0.9 B parameters here).

    python benchmarks/serve.py [--model DIR] [--videos 10] [--frames 2] [--max-new-tokens 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from vqa_cli.testing import make_clip, start

VQA = [sys.executable, "-m", "vqa_cli"]


def ask_loop(videos: list[str], settings: list[str], extra: list[str]) -> float:
    started = time.perf_counter()
    for i, video in enumerate(videos):
        proc = subprocess.run(VQA + ["ask", video, f"What happens in clip {i}?", *settings, *extra],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
    return time.perf_counter() - started


def first_token_seconds(url: str, model: str, video: str, question: str, fields: dict) -> float:
    """Client-side time from sending a streamed request to its first text chunk."""
    body = {"model": model, "stream": True, "max_tokens": 8, **fields,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                                      {"type": "text", "text": question}]}]}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    first = None
    with urllib.request.urlopen(request) as response:
        for raw in response:
            line = raw.decode().strip()
            if first is None and line.startswith("data:") and '"content": "' in line and '"content": ""' not in line:
                first = time.perf_counter() - started
    return first if first is not None else float("nan")


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: a random-weight 0.5b OneVision geometry)")
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the time-to-first-token pair")
    parser.add_argument("--skip-load", action="store_true", help="leave out the loading table")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vqa-serve-bench-"))
    model = args.model
    if model is None:
        from vqa_cli.testing import tiny_checkpoint

        model = str(tiny_checkpoint(work / "ov-0.5b", family="llava-onevision", geometry="0.5b"))
    videos = [make_clip(str(work / f"v{i}.mp4"), 60 + 5 * i, fps=30.0, size=(320, 240)) for i in range(args.videos)]
    settings = ["--frames", str(args.frames), "--max-new-tokens", str(args.max_new_tokens)]

    print(f"checkpoint {model}, {args.videos} videos, {args.frames} frames, {args.max_new_tokens} new tokens, "
          f"CPU threads {os.cpu_count()}", flush=True)
    processes = ask_loop(videos, settings, ["--model", model])
    started = time.perf_counter()
    server = start(["--model", model, "--media-root", str(work), *settings])
    startup = time.perf_counter() - started
    try:
        served = ask_loop(videos, settings, ["--server", server.url])
        fields = {"frames": args.frames}
        firsts, seconds = [], []
        for r in range(args.repeats):
            video = make_clip(str(work / f"ttft{r}.mp4"), 90, fps=30.0, size=(320, 240))
            firsts.append(first_token_seconds(server.url, model, video, "What happens?", fields))
            seconds.append(first_token_seconds(server.url, model, video, "What colour is it?", fields))
    finally:
        server.stop()
    print("\n### Ten questions about ten videos\n")
    print(table([["method", "wall s", "per question s", "ratio"],
                 ["vqa ask x10 processes (baseline)", f"{processes:.1f}", f"{processes / args.videos:.2f}", "1.00x"],
                 ["vqa ask --server x10 (server running)", f"{served:.1f}", f"{served / args.videos:.2f}",
                  f"{processes / served:.2f}x"],
                 ["  server start-up (once)", f"{startup:.1f}", "", ""],
                 ["  with start-up included", f"{served + startup:.1f}", "",
                  f"{processes / (served + startup):.2f}x"]]))
    f, s = statistics.median(firsts), statistics.median(seconds)
    print("\n### A second question about the same video (time to first token, client side)\n")
    print(table([["question", "median s", "rounds s", "ratio"],
                 ["first (decode, encode, prefill)", f"{f:.3f}", ", ".join(f"{x:.3f}" for x in firsts), "1.00x"],
                 ["second (cached features and prefix)", f"{s:.3f}", ", ".join(f"{x:.3f}" for x in seconds),
                  f"{f / s:.2f}x"]]))
    if not args.skip_load:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from load import format_table, load_table  # noqa: E402

        print("\n### Loading: pre-quantized 4-bit copy vs quantize-on-load\n")
        print(format_table(load_table(Path(model))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
