"""Real-scale performance: vqa against plain transformers, per mode, at a chosen geometry and precision.

Builds a random-weight LLaVA-NeXT-Video checkpoint with the geometry kept in the repository
(``--geometry 7b``: the config values of ``llava-hf/LLaVA-NeXT-Video-7B-hf``, so compute and
memory cost are the real ones; ``tiny`` for a quick CPU run), loads it through vqa's own loading
code (bitsandbytes 4-bit / 8-bit, or bf16), and for each mode on a video measures:

- frame decoding, preprocessing, vision encoding (vqa stages),
- prefill = time to first token, and decode tokens/s for a fixed number of new tokens,
- end-to-end time to first token (decode + preprocess + encode + prefill),
- peak GPU memory (CUDA only),

and the same for plain transformers: ``generate(input_ids, pixel_values_videos=...)`` with the
same pixels and weights (the native anyres path: transformers has no other mode). Decoding is
bounded by reading the weights once per token: the physical floor is (bytes of weights read per
token) / (memory bandwidth, measured here with a device-to-device copy); the table gives each
decode speed's fraction of that floor.

    python benchmarks/gpu.py --geometry 7b --quant 4bit --video long.mp4           # on a GPU
    python benchmarks/gpu.py --geometry tiny --quant none --device cpu             # anywhere
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bandwidth_gbs(device: str, megabytes: int = 1024) -> float:
    """Effective memory bandwidth (read + write) of a large on-device copy, GB/s."""
    import torch

    n = megabytes * 1024 * 1024 // 4
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        b.copy_(a)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best / 1e9


def decode_bytes_per_token(model: Any) -> int:
    """Bytes of weights a decode step reads: the language model and the head (not the vision tower)."""
    seen = set()
    total = 0
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not (name.startswith("model.language_model") or name.startswith("lm_head")):
            continue
        if "embed_tokens" in name:  # one row per token is read, not the table
            continue
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def timed_generate(model: Any, device: str, new_tokens: int, **inputs: Any) -> tuple[float, float]:
    """(seconds to first token, decode tokens/s after it) for greedy generation of exactly ``new_tokens``."""
    import torch

    from vqa_cli.model.generate import TokenClock

    clock = TokenClock()
    sync(device)
    clock.started = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       streamer=clock, temperature=None, top_p=None, top_k=None)
    sync(device)
    ttft = clock.first_token_at - clock.started
    span = clock.last_token_at - clock.first_token_at
    rate = (clock.steps - 1) / span if clock.steps > 1 and span > 0 else 0.0
    return ttft, rate


def peak_memory(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from vqa_cli.model import prompt as prompts
    from vqa_cli.model.checkpoint import Checkpoint
    from vqa_cli.model.engine import Engine
    from vqa_cli.model.weights import loader
    from vqa_cli.settings import ModeSettings, RunSettings
    from vqa_cli.testing import tiny_checkpoint
    from vqa_cli.video import sample_frames

    work = Path(args.workdir or tempfile.mkdtemp(prefix="vqa-gpu-bench-"))
    ckpt = work / f"llava-next-video-{args.geometry}"
    if not (ckpt / "config.json").is_file():
        print(f"building a random-weight {args.geometry} checkpoint in {ckpt} ...", file=sys.stderr)
        tiny_checkpoint(ckpt, geometry=args.geometry)
    video = args.video
    if video is None:
        from vqa_cli.testing import make_clip

        video = make_clip(str(work / "clip.mp4"), 300, fps=30.0, size=(640, 360))

    rows = []
    engine = None
    for mode in args.modes:
        settings = RunSettings(model=str(ckpt), mode=ModeSettings(mode), frames=args.frames or None,
                               quant=args.quant, device=args.device, dtype=args.dtype,
                               max_new_tokens=args.new_tokens)
        checkpoint = Checkpoint(settings.model)
        budget = checkpoint.budget(settings, [args.question])
        if engine is None or engine.rope_factor != budget.rope_factor:
            engine = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            t = time.perf_counter()
            engine = Engine(checkpoint, settings, loader.load(checkpoint, settings, budget.rope_factor))
            load = time.perf_counter() - t
        engine.settings = settings
        device = str(engine.input_device)
        floor_bytes = decode_bytes_per_token(engine.model)

        t = time.perf_counter()
        clip = sample_frames(video, budget.plan.frames)
        decode_s = time.perf_counter() - t
        for _ in range(args.warmup):
            engine.answer(clip, args.question)
        reset_peak(device)
        sync(device)
        t = time.perf_counter()
        pixels = engine.pixels(clip)
        preprocess_s = time.perf_counter() - t
        sync(device)
        t = time.perf_counter()
        features = engine.aggregate(engine.encode(pixels), settings.mode, args.question)
        sync(device)
        encode_s = time.perf_counter() - t
        ids, embeds = engine.prompt_inputs(args.question, clip, features)
        ttft, rate = timed_generate(engine.model, device, args.new_tokens, input_ids=ids, inputs_embeds=embeds,
                                    attention_mask=torch.ones_like(ids))
        rows.append({"who": "vqa", "mode": mode, "frames": len(clip.indices), "visual_tokens": features.shape[0],
                     "rope_factor": engine.rope_factor, "load_s": load, "decode_s": decode_s,
                     "preprocess_s": preprocess_s, "encode_s": encode_s, "prefill_s": ttft,
                     "e2e_ttft_s": decode_s + preprocess_s + encode_s + ttft, "tokens_per_s": rate,
                     "peak_gib": peak_memory(device), "floor_bytes": floor_bytes})

        if mode == "anyres":  # plain transformers: the checkpoint's own video path from pixels
            n = features.shape[0]
            ids_plain = prompts.expand_placeholder(
                checkpoint.prompt_ids(args.question), engine.adapter.video_token_id(), n)
            ids_plain = torch.tensor([ids_plain], device=device)
            vision_dtype = next(engine.adapter.vision_tower(engine.model).parameters()).dtype
            reset_peak(device)
            ttft_p, rate_p = timed_generate(engine.model, device, args.new_tokens, input_ids=ids_plain,
                                            pixel_values_videos=pixels[None].to(device, vision_dtype),
                                            attention_mask=torch.ones_like(ids_plain))
            rows.append({"who": "transformers", "mode": "anyres (native)", "frames": len(clip.indices),
                         "visual_tokens": n, "rope_factor": engine.rope_factor, "load_s": load,
                         "decode_s": decode_s, "preprocess_s": preprocess_s, "encode_s": None,
                         "prefill_s": ttft_p, "e2e_ttft_s": decode_s + preprocess_s + ttft_p,
                         "tokens_per_s": rate_p, "peak_gib": peak_memory(device), "floor_bytes": floor_bytes})
    return rows


def table(rows: list[dict], bandwidth: float) -> str:
    def f(x: Any, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    base = {r["mode"].split()[0]: r for r in rows if r["who"] == "transformers"}
    out = ["| who | mode | frames | visual tokens | RoPE | decode s | preprocess s | encode s | prefill (TTFT) s "
           "| end-to-end TTFT s | decode tok/s | vs transformers | floor tok/s | of floor | peak GiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        floor = bandwidth * 1e9 / r["floor_bytes"]
        ref = base.get("anyres")
        ratio = r["tokens_per_s"] / ref["tokens_per_s"] if ref and ref["tokens_per_s"] else None
        out.append(f"| {r['who']} | {r['mode']} | {r['frames']} | {r['visual_tokens']} | {r['rope_factor']:g} "
                   f"| {f(r['decode_s'])} | {f(r['preprocess_s'])} | {f(r['encode_s'])} | {f(r['prefill_s'])} "
                   f"| {f(r['e2e_ttft_s'])} | {r['tokens_per_s']:.1f} | {f(ratio, '.2f')}x | {floor:.1f} "
                   f"| {r['tokens_per_s'] / floor:.0%} | {f(r['peak_gib'], '.2f')} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometry", choices=["tiny", "7b"], default="7b")
    parser.add_argument("--quant", choices=["4bit", "8bit", "none"], default=None, help="default: 4bit on CUDA")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--video", help="default: a generated 10 s 640x360 clip (use make-long-video.sh's 120 s)")
    parser.add_argument("--modes", nargs="+", default=["anyres", "slowfast", "pooled"])
    parser.add_argument("--frames", type=int, default=0, help="default: each mode's own")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--question", default="What happens in this video? Describe it in detail.")
    parser.add_argument("--workdir", help="keep the built checkpoint here between runs")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    import torch

    rows = run(args)
    device = rows and ("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    bw = bandwidth_gbs(device)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{name}; geometry {args.geometry}; quant {rows[0] and args.quant or 'default'}; "
          f"{args.new_tokens} new tokens; measured copy bandwidth {bw:.0f} GB/s\n")
    print(table(rows, bw))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "bandwidth_gbs": bw, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
