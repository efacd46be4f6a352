"""Video token reduction on the CPU: time to first token and KV-cache memory, ``--reduce`` at ``--keep`` vs none.

The issue's target: at a 0.5B-2B geometry, 32 frames, keep 0.25 is at least 2.5x faster to the first token than no
reduction, and its KV cache is smaller in proportion. One run prints the ratios.

Random-weight checkpoints at the real geometry (``--geometry real``; ``tiny`` runs in seconds), built as
``benchmarks/cpu_default.py`` builds them: ``llava-onevision-0.5b`` (SigLIP so400m + Qwen2-0.5B: 196 tokens a
frame, 6273 for 32 frames) and, with ``--models qwen3-vl-2b``, Qwen3-VL-2B's widths and depths. One generated
640x360 clip, ``--frames`` frames, float32, ``--threads`` threads. The frames are decoded and encoded once (the
tower's output does not depend on the reduction, and a reduced video is cached as such); then for each setting:

- ``reduce s``: the mode and the reduction (``Engine.aggregate``: what runs once per clip, then cached);
- ``prefill s``: the language model over the prompt with the visual tokens, to the first token (what every
  question, chat turn and request pays), and its CPU seconds over all threads (less sensitive to other work);
- ``TTFT s``: reduce + prefill, with the tokens from the tower in hand; ``from pixels``: the tower's seconds too;
- ``KV cache``: the bytes of the cache the prefill leaves (every layer's keys and values, measured).

Ratios are against ``none`` on the same machine in the same run. Best of ``--repeats``.

    python benchmarks/reduce.py --geometry real --workdir /tmp/vqa-reduce-bench --repeats 1   # ~15 min on 2 cores
                                                                                    # (the tower: ~8), ~5 GB RAM
    python benchmarks/reduce.py --geometry tiny                                       # seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root on the path for ``benchmarks``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu_default import QUESTION, checkpoint  # noqa: E402

MODELS = ("llava-onevision-0.5b", "qwen3-vl-2b")


def kv_bytes(cache: Any) -> int:
    """Bytes of a transformers cache's keys and values over every layer."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        tensors = [t for layer in layers for t in (layer.keys, layer.values) if t is not None]
    else:
        tensors = list(cache.key_cache) + list(cache.value_cache)
    return sum(t.numel() * t.element_size() for t in tensors)


def prefill(view: Any, ids: Any, inputs: Any) -> tuple[float, float, int, int]:
    """The prompt through the language model to the first token: (wall s, CPU s, first token, KV-cache bytes)."""
    import torch

    extra = dict(inputs) if isinstance(inputs, dict) else {"inputs_embeds": inputs}
    if "inputs_embeds" not in extra:
        extra["input_ids"] = ids
    if hasattr(view.model.model, "rope_deltas"):
        view.model.model.rope_deltas = None
    t, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = view.model(attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1, **extra)
        first = int(out.logits[0, -1].argmax())
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    return time.perf_counter() - t, time.process_time() - cpu, first, kv_bytes(cache)


def measure(model: str, model_dir: Path, video: str, args: argparse.Namespace) -> list[dict]:
    import torch

    from vqa_cli.model.session import open_model
    from vqa_cli.settings import RunSettings, build

    torch.set_num_threads(args.threads)
    settings = RunSettings(model=str(model_dir), frames=args.frames, dtype="float32", device="cpu", max_new_tokens=1)
    engine = open_model(settings, [QUESTION]).engine
    if args.max_pixels and engine.adapter.pixel_budget:
        settings = replace(settings, mode=replace(settings.mode, max_pixels=args.max_pixels))
        engine = engine.with_settings(settings)
    prepared = engine.prepare_clip(video, args.frames)
    t, cpu = time.perf_counter(), time.process_time()
    frames = engine.encode(prepared.pixels)
    encode_s, encode_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    rows = []
    for method in ("none", *args.methods):
        mode = build(model="m", reduce=method, keep=None if method == "none" else args.keep).mode
        view = engine.with_settings(replace(settings, mode=replace(mode, max_pixels=settings.mode.max_pixels)))
        best: dict | None = None
        for _ in range(args.repeats):
            t = time.perf_counter()
            features = view.visual_tokens(prepared.clip, QUESTION, frames=frames)
            reduce_s = time.perf_counter() - t
            ids, inputs = view.prompt_inputs(QUESTION, prepared.clip, features)
            wall, cpu_s, first, kv = prefill(view, ids, inputs)
            row = {"model": model, "reduce": method, "keep": 1.0 if method == "none" else args.keep,
                   "frames": len(prepared.clip.indices), "visual_tokens": int(features.shape[0]),
                   "prompt_tokens": int(ids.shape[1]), "encode_s": encode_s, "encode_cpu_s": encode_cpu_s,
                   "reduce_s": reduce_s, "prefill_s": wall, "prefill_cpu_s": cpu_s, "kv_bytes": kv,
                   "first_token": first}
            if best is None or row["reduce_s"] + row["prefill_s"] < best["reduce_s"] + best["prefill_s"]:
                best = row
        rows.append(best)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | reduce | keep | visual tokens | prompt tokens | reduce s | prefill s | TTFT s | TTFT vs none "
           "| prefill CPU s | CPU vs none | from pixels s | from pixels vs none | KV cache MiB | KV vs none |",
           "|---" * 15 + "|"]
    base = {r["model"]: r for r in rows if r["reduce"] == "none"}
    for r in rows:
        b = base[r["model"]]
        ttft, ttft_b = r["reduce_s"] + r["prefill_s"], b["reduce_s"] + b["prefill_s"]
        e2e, e2e_b = r["encode_s"] + ttft, b["encode_s"] + ttft_b
        out.append(f"| {r['model']} | {r['reduce']} | {r['keep']:g} | {r['visual_tokens']} | {r['prompt_tokens']} "
                   f"| {r['reduce_s']:.3f} | {r['prefill_s']:.2f} | {ttft:.2f} | {ttft_b / ttft:.2f}x "
                   f"| {r['prefill_cpu_s']:.2f} | {b['prefill_cpu_s'] / r['prefill_cpu_s']:.2f}x | {e2e:.2f} "
                   f"| {e2e_b / e2e:.2f}x | {r['kv_bytes'] / 2**20:.1f} | {r['kv_bytes'] / b['kv_bytes']:.3f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--geometry", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["llava-onevision-0.5b"])
    parser.add_argument("--methods", nargs="+", default=["evs", "vidcom2"])
    parser.add_argument("--keep", type=float, default=0.25)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--max-pixels", type=int, default=None, help="qwen3-vl: the pixel budget per clip")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where checkpoints are built and kept (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON lines")
    args = parser.parse_args(argv)

    from vqa_cli.testing.clips import make_clip

    work = Path(args.workdir or tempfile.mkdtemp(prefix="vqa-reduce-"))
    work.mkdir(parents=True, exist_ok=True)
    video = str(work / "clip.mp4")
    if not Path(video).is_file():
        make_clip(video, 300, fps=30.0, size=(640, 360))
    rows = []
    for model in args.models:
        rows += measure(model, checkpoint(model, args.geometry, work), video, args)
    print(table(rows))
    if args.json:
        for row in rows:
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
