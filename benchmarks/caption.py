"""Captioning throughput: vqa's pipelined, batched ``caption`` against a naive loop, same run.

Baseline ("naive loop"): for each video, one at a time: an OpenCV seek loop for the frames
(``CAP_PROP_POS_FRAMES`` then ``read`` per target), the checkpoint's preprocessing done by
transformers (``CLIPImageProcessorPil`` from the checkpoint's preprocessor config: the video
processor's steps, which without torchvision is what plain transformers offers) and plain
transformers ``generate(pixel_values_videos=...)``. vqa: ``vqa caption`` with decode-ahead
workers and batched generation. Same checkpoint, frames, prompt and greedy decoding.

    python benchmarks/caption.py [--videos 16] [--frames 8] [--batch-size 4] [--repeats 3] [--model DIR]

Without ``--model`` a random-weight checkpoint is built: ``--geometry tiny`` (the default; the real
patch grid, small widths) or ``7b`` (LLaVA-NeXT-Video-7B's sizes, about 14 GB written; for a GPU:
``--geometry 7b --device cuda``, 4-bit and bfloat16 being vqa's CUDA defaults). Both methods load
the model the same way (vqa's loading: same weights, quantization and placement). The methods
run in turn, ``--repeats`` rounds (the machines are noisy); the table gives each method's median
seconds, videos/s and the ratio of medians to the baseline, and the ratios of every round.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from vqa_cli.testing import ffmpeg_exe  # one place finds ffmpeg: PATH, else imageio-ffmpeg


def make_videos(folder: Path, count: int, seconds: float, size: tuple[int, int], codec: str = "mp4v") -> list[str]:
    """Moving-pattern clips at 30 fps: OpenCV's MPEG-4 Part 2 (``mp4v``, a keyframe every 12 frames), or
    ``h264``: the same clips re-encoded by ffmpeg (``ffmpeg_exe``) with libx264's defaults (a keyframe
    every 250 frames, B-frames), which is what most real collections hold."""
    paths = []
    w, h = size
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"clip{i:03d}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
        base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        for t in range(int(seconds * 30)):
            writer.write(np.roll(base, shift=4 * t, axis=1))
        writer.release()
        if codec == "h264":
            encoded = path.with_name(f"{path.stem}-h264.mp4")
            subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(path), "-c:v", "libx264", "-preset",
                            "veryfast", "-pix_fmt", "yuv420p", str(encoded)], check=True)
            path.unlink()
            path = encoded
        paths.append(str(path))
    return paths


def naive_loop(model_dir: str, videos: list[str], frames: int, prompt: str, max_new_tokens: int,
               place: dict[str, str | None]) -> tuple[float, dict[str, float]]:
    """The baseline: (seconds for all videos, seconds per stage). The model is loaded before the clock starts,
    as vqa's timing excludes loading too, and the same way (``place``: device, dtype, quant; vqa's defaults
    where None): the same weights, quantization and placement, so only the loop differs."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, CLIPImageProcessorPil

    from vqa_cli.model import device as devices
    from vqa_cli.model import prompt as prompts
    from vqa_cli.model.weights import loader

    device = devices.resolve_device(place["device"])
    loaded = loader.load_model(Path(model_dir), AutoConfig.from_pretrained(model_dir), device=device,
                               dtype=devices.resolve_dtype(place["dtype"], device),
                               quant=devices.resolve_quant(place["quant"], device))
    model, where = loaded.model, loaded.input_device
    vision_dtype = next(model.model.vision_tower.parameters()).dtype
    tok = AutoTokenizer.from_pretrained(model_dir)
    processor = CLIPImageProcessorPil.from_pretrained(model_dir)
    template = prompts.load_chat_template(Path(model_dir), tok)
    vid = model.config.video_token_index
    stages = {"decode": 0.0, "preprocess": 0.0, "generate": 0.0}
    started = time.perf_counter()
    for path in videos:
        t0 = time.perf_counter()
        cap = cv2.VideoCapture(path)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        kept = []
        for k in range(frames):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int((k + 0.5) * total / frames))
            ok, frame = cap.read()
            if ok:
                kept.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        cap.release()
        t1 = time.perf_counter()
        pixels = processor(kept, return_tensors="pt")["pixel_values"][None].to(where, vision_dtype)
        t2 = time.perf_counter()
        ids = prompts.token_ids(tok, prompts.render(tok, template, prompt))
        n = len(kept) * (model.config.vision_config.image_size // model.config.vision_config.patch_size // 2) ** 2
        ids = torch.tensor([prompts.expand_placeholder(ids, vid, n)], device=where)
        with torch.inference_mode():
            model.generate(input_ids=ids, pixel_values_videos=pixels, attention_mask=torch.ones_like(ids),
                           max_new_tokens=max_new_tokens, do_sample=False)
        t3 = time.perf_counter()
        for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            stages[stage] += seconds
    return time.perf_counter() - started, stages


def vqa_caption(model_dir: str, folder: str, out: str, frames: int, prompt: str, max_new_tokens: int,
                batch_size: int, workers: int, place: dict[str, str | None]) -> float:
    """vqa's caption; returns the run's wall seconds after model load (from its summary)."""
    summary = Path(out).with_suffix(".summary.json")
    cmd = [sys.executable, "-m", "vqa_cli", "caption", folder, "--out", out, "--model", model_dir, "--frames",
           str(frames), "--max-new-tokens", str(max_new_tokens), "--prompt", prompt, "--batch-size", str(batch_size),
           "--workers", str(workers), "--summary", str(summary)]
    cmd += [arg for key, value in place.items() if value for arg in (f"--{key}", value)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(summary.read_text())["seconds"]["wall"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--codec", choices=("mp4v", "h264"), default="mp4v",
                        help="h264 needs ffmpeg: the command on PATH, else imageio-ffmpeg's (the test extra)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="a detailed caption is longer; 16 makes decoding the bottleneck (the hardest case)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="checkpoint directory (default: a random-weight one of --geometry)")
    parser.add_argument("--geometry", choices=("tiny", "7b"), default="tiny",
                        help="the random-weight checkpoint built without --model (7b: LLaVA-NeXT-Video-7B's sizes)")
    parser.add_argument("--device", help="vqa's default: cuda when there is one, else cpu")
    parser.add_argument("--quant", choices=("4bit", "8bit", "none"), help="vqa's default: 4bit on CUDA, none on CPU")
    parser.add_argument("--dtype", help="vqa's default: bfloat16 on CUDA, float32 on CPU")
    args = parser.parse_args()
    prompt = "Describe this video in detail."
    place = {"device": args.device, "dtype": args.dtype, "quant": args.quant}
    w, h = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            from vqa_cli.testing import tiny_checkpoint

            model_dir = str(tiny_checkpoint(work / args.geometry, geometry=args.geometry))
        folder = work / "videos"
        folder.mkdir()
        if args.codec == "h264":
            try:
                ffmpeg_exe()
            except FileNotFoundError as err:
                sys.exit(f"--codec h264: {err}")
        videos = make_videos(folder, args.videos, args.seconds, (w, h), args.codec)
        names = ["naive loop (baseline)", f"vqa caption, batch 1, {args.workers} workers",
                 f"vqa caption, batch {args.batch_size}, {args.workers} workers"]
        runs: dict[str, list[float]] = {name: [] for name in names}
        stage_runs: list[dict[str, float]] = []
        for r in range(args.repeats):
            naive, stages = naive_loop(model_dir, videos, args.frames, prompt, args.max_new_tokens, place)
            runs[names[0]].append(naive)
            stage_runs.append(stages)
            for name, batch in ((names[1], 1), (names[2], args.batch_size)):
                runs[name].append(vqa_caption(model_dir, str(folder), str(work / f"out{r}-{batch}.jsonl"), args.frames,
                                              prompt, args.max_new_tokens, batch, args.workers, place))
    cpu = platform.processor() or platform.machine()
    print(f"{args.videos} {args.codec} clips of {args.seconds:g} s {args.size} @30 fps, {args.frames} frames, "
          f"{args.max_new_tokens} new tokens, greedy; {args.model or args.geometry + ' random weights'}; "
          f"{' '.join(f'{k} {v}' for k, v in place.items() if v) or 'vqa default placement'}; {cpu}; "
          f"model load excluded; median of {args.repeats} rounds\n")
    print("| method | seconds | videos/s | vs naive loop | each round |")
    print("|---|---|---|---|---|")
    base = statistics.median(runs[names[0]])
    for name in names:
        secs = statistics.median(runs[name])
        rounds = ", ".join(f"{b / x:.2f}x" for b, x in zip(runs[names[0]], runs[name], strict=True))
        print(f"| {name} | {secs:.2f} | {args.videos / secs:.2f} | {base / secs:.2f}x | {rounds} |")
    stages = {k: statistics.median(s[k] for s in stage_runs) for k in stage_runs[0]}
    print("\nnaive loop by stage (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
