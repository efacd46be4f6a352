"""The CPU default: Qwen3-VL-2B against LLaVA-OneVision-0.5B on the CPU, vqa against plain transformers' generate.

Builds random-weight checkpoints at the real geometry (``--geometry real``; ``tiny`` runs in seconds):
``qwen3-vl-2b`` (text 2048/6144, 28 layers, 16 heads, 8 kv heads of 128; vision 24 x 1024 -> 2048, DeepStack after
blocks 5, 11, 17: ``QWEN3_VL_2B`` below, over the tiny ``qwen3-vl`` recipe's tokenizer and processor files) and
``llava-onevision-0.5b`` (the ``0.5b`` geometry of ``vqa_cli.testing``), both with the tiny tokenizer's vocabulary.
Each model runs in its own process (so peak memory is its own), on ``--threads`` threads, in float32, on the same
8 frames of a generated 10 s 640x360 clip, and for each mode it answers in measures:

- vqa: preprocess, vision tower + mode, prefill (time to first token), decode seconds per token, peak RSS;
- plain transformers (anyres only: transformers has no other mode): ``generate`` from the same pixel values and
  the same prompt ids (``pixel_values_videos``; Qwen: transformers' own patch layout, ``video_grid_thw`` and
  ``mm_token_type_ids``), so the tower runs inside its prefill.

The answer latency of an N-token answer (``--answer-tokens``) is decode + preprocess + encode + prefill +
(N - 1) x per-token decode. The vocabulary left out (151936 x 2048 tied for the 2B, 151647 x 896 for the 0.5B) costs
one head matmul per new token: it is timed here at its real size and added to the "with real head" column.
The issue's rule: Qwen3-VL-2B is the CPU default if its answer latency is within 3x of the 0.5B model's.

    python benchmarks/cpu_default.py --geometry real --workdir /tmp/vqa-cpu-bench     # minutes, ~10 GB RAM
    python benchmarks/cpu_default.py --geometry tiny                                   # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = ("llava-onevision-0.5b", "qwen3-vl-2b")
RECIPES = {"llava-onevision-0.5b": "llava-onevision", "qwen3-vl-2b": "qwen3-vl"}
REAL_HEAD = {"llava-onevision-0.5b": (896, 151647), "qwen3-vl-2b": (2048, 151936)}  # (hidden, vocabulary)
# Qwen/Qwen3-VL-2B-Instruct's config.json widths and depths (REFERENCES.md section 13, docs/models.md).
QWEN3_VL_2B = {
    "text": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6},
    "rope": {"mrope_section": [24, 20, 20]},
    "vision": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "out_hidden_size": 2048,
               "deepstack_visual_indexes": [5, 11, 17], "num_position_embeddings": 2304},
}
QUESTION = "What happens in this video? Describe it in detail."


# ---- checkpoints ----------------------------------------------------------------------------------------------
def qwen3_vl_2b(out: Path) -> None:
    """The tiny ``qwen3-vl`` recipe's tokenizer, template and processor files with Qwen3-VL-2B's widths and depths:
    random weights built and saved in bfloat16 like the hub's (about 4 GB written)."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(out)
    for key, value in QWEN3_VL_2B["text"].items():
        setattr(config.text_config, key, value)
    config.text_config.rope_parameters = {**config.text_config.rope_parameters, **QWEN3_VL_2B["rope"]}
    for key, value in QWEN3_VL_2B["vision"].items():
        setattr(config.vision_config, key, value)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = transformers.Qwen3VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    model.save_pretrained(out)


def checkpoint(model: str, geometry: str, work: Path) -> Path:
    """``model``'s random-weight checkpoint at ``geometry`` in ``work`` (built once, reused after)."""
    from vqa_cli.testing import tiny_checkpoint

    out = work / f"{model}-{geometry}"
    done = out / "cpu-default-geometry.txt"
    if done.is_file() and done.read_text() == geometry:
        return out
    print(f"building {model} ({geometry}) in {out} ...", file=sys.stderr)
    family = RECIPES[model]
    real = geometry == "real"
    tiny_checkpoint(out, family=family, geometry="0.5b" if real and family == "llava-onevision" else "tiny")
    if real and model == "qwen3-vl-2b":
        qwen3_vl_2b(out)
    done.write_text(geometry)
    return out


# ---- measuring ----------------------------------------------------------------------------------------------
def _rss_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's RSS (Linux ``clear_refs`` 5), so that the next
    ``peak_rss_gib`` is the peak of what runs in between."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_gib() -> float:
    return _rss_gib("VmHWM")


def head_seconds(hidden: int, vocab: int, repeats: int = 5) -> float:
    """Seconds of one new token's output head at its real size: [1, hidden] x [hidden, vocab] in float32."""
    import torch

    x, w = torch.randn(1, hidden), torch.randn(vocab, hidden)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - t)
    return best


def timed_generate(model: Any, new_tokens: int, **inputs: Any) -> dict[str, float]:
    """Greedy generation of exactly ``new_tokens``: prefill (to the first token) and seconds per token after it, in
    wall time (``prefill_s``, ``per_token_s``) and in this process's CPU time over all threads (``*_cpu_s``: what a
    machine shared with other work slows less)."""
    import torch

    from vqa_cli.model.generate import TokenClock

    class Clock(TokenClock):
        first_cpu: float | None = None

        def put(self, value: torch.Tensor) -> None:
            super().put(value)
            if self.first_cpu is None and self.first_token_at is not None:
                self.first_cpu = time.process_time()

    clock = Clock()
    cpu = time.process_time()
    clock.started = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       streamer=clock, temperature=None, top_p=None, top_k=None)
    steps = max(clock.steps - 1, 1)
    return {"prefill_s": clock.first_token_at - clock.started,
            "per_token_s": (clock.last_token_at - clock.first_token_at) / steps,
            "prefill_cpu_s": clock.first_cpu - cpu, "per_token_cpu_s": (time.process_time() - clock.first_cpu) / steps}


def plain_inputs(engine: Any, ids: Any, pixels: Any, n_visual: int) -> dict:
    """transformers' own video path from the same pixels: its ``generate`` inputs for ``engine``'s family."""
    import torch

    from vqa_cli.model import prompt as prompts

    if engine.adapter.name == "qwen-vl":
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        v = engine.model.config.vision_config
        values, *grid = Qwen3VLVideoProcessor.patchify(None, pixels[None], v.patch_size, v.temporal_patch_size,
                                                       v.spatial_merge_size)
        engine.model.model.rope_deltas = None  # positions from this prompt, not the last one
        types = (ids == engine.model.config.video_token_id).long() * 2
        return {"input_ids": ids, "pixel_values_videos": values[0], "video_grid_thw": torch.tensor([grid]),
                "mm_token_type_ids": types, "attention_mask": torch.ones_like(ids)}
    plain = prompts.expand_placeholder(engine.checkpoint.prompt_ids(QUESTION), engine.adapter.video_token_id(),
                                       n_visual)
    plain_ids = torch.tensor([plain])
    return {"input_ids": plain_ids, "pixel_values_videos": pixels[None], "attention_mask": torch.ones_like(plain_ids)}


def measure(model: str, model_dir: Path, video: str, args: argparse.Namespace) -> list[dict]:
    """Every mode of ``model`` through vqa (and anyres through plain transformers), best of ``args.repeats``."""
    from dataclasses import replace

    import torch

    from vqa_cli.model.session import open_model
    from vqa_cli.settings import ModeSettings, RunSettings

    torch.set_num_threads(args.threads)
    settings = RunSettings(model=str(model_dir), frames=args.frames, dtype="float32", device="cpu",
                           max_new_tokens=args.new_tokens)
    reset_peak_rss()
    t = time.perf_counter()
    engine = open_model(settings, [QUESTION]).engine
    load_s, loaded_gib = time.perf_counter() - t, _rss_gib("VmRSS")
    prepared = engine.prepare_clip(video, args.frames)
    clip, decode_s = prepared.clip, prepared.timings.get("decode", 0.0)
    modes = [m for m in args.modes if m in engine.adapter.modes]
    head_s = head_seconds(*REAL_HEAD[model])
    rows = []
    for mode in modes:
        view = engine.with_settings(replace(settings, mode=ModeSettings(mode)))
        try:
            rows += measure_mode(model, view, clip, decode_s, args, {"loaded_rss_gib": loaded_gib, "load_s": load_s,
                                                                   "head_s": head_s})
        except Exception as exc:  # a mode this family cannot answer in yet: reported, the others still measured
            rows.append({"model": model, "who": "vqa", "mode": mode, "error": f"{type(exc).__name__}: {exc}"})
    return rows


def measure_mode(model: str, view: Any, clip: Any, decode_s: float, args: argparse.Namespace, common: dict
                 ) -> list[dict]:
    """One mode: vqa's stages, then (anyres) plain transformers from the same pixels and ids."""
    import torch

    rows = []
    mode = view.settings.mode.name
    best: dict | None = None
    for _ in range(args.repeats):
        reset_peak_rss()
        t = time.perf_counter()
        pixels = view.pixels(clip)
        preprocess_s = time.perf_counter() - t
        t, cpu = time.perf_counter(), time.process_time()
        features = view.visual_tokens(clip, QUESTION, frames=view.encode(pixels))  # the tower, then the mode
        encode_s, encode_cpu_s = time.perf_counter() - t, time.process_time() - cpu
        ids, inputs = view.prompt_inputs(QUESTION, clip, features)
        extra = dict(inputs) if isinstance(inputs, dict) else {"inputs_embeds": inputs}
        timed = timed_generate(view.model, args.new_tokens, input_ids=ids, attention_mask=torch.ones_like(ids),
                               **extra)
        row = {"model": model, "who": "vqa", "mode": mode, "frames": len(clip.indices),
               "pixels": list(pixels.shape), "visual_tokens": int(features.shape[0]), "prompt_tokens": ids.shape[1],
               "decode_s": decode_s, "preprocess_s": preprocess_s, "encode_s": encode_s, "encode_cpu_s": encode_cpu_s,
               **timed, "peak_rss_gib": peak_rss_gib(), **common}
        if best is None or row["prefill_s"] + row["encode_s"] < best["prefill_s"] + best["encode_s"]:
            best = row
    rows.append(best)
    if mode != "anyres":
        return rows
    best = None
    for _ in range(args.repeats):  # plain transformers: the tower inside generate, from the same pixels
        pixels = view.pixels(clip)
        inputs = plain_inputs(view, ids, pixels, int(features.shape[0]))
        reset_peak_rss()
        timed = timed_generate(view.model, args.new_tokens, **inputs)
        row = dict(rows[-1], who="transformers", encode_s=0.0, encode_cpu_s=0.0, **timed,
                   peak_rss_gib=peak_rss_gib(), prompt_tokens=inputs["input_ids"].shape[1])
        if best is None or row["prefill_s"] < best["prefill_s"]:
            best = row
    rows.append(best)
    return rows


# ---- reporting ----------------------------------------------------------------------------------------------
def ttft(row: dict) -> float:
    """Seconds from the request to the first token: frames decoded, preprocessed, encoded, prefilled."""
    return row["decode_s"] + row["preprocess_s"] + row["encode_s"] + row["prefill_s"]


def answer_s(row: dict, tokens: int, real_head: bool = False) -> float:
    """An answer of ``tokens`` new tokens: time to the first token, then ``tokens - 1`` decode steps."""
    return ttft(row) + (tokens - 1) * (row["per_token_s"] + (row["head_s"] if real_head else 0.0))


def answer_cpu_s(row: dict, tokens: int) -> float | None:
    """An answer's CPU seconds over all threads (encode, prefill, decode; frames and pixels left out): less
    sensitive than wall time to other work on the machine. None for rows measured without it."""
    if "prefill_cpu_s" not in row:
        return None
    return row["encode_cpu_s"] + row["prefill_cpu_s"] + (tokens - 1) * row["per_token_cpu_s"]


def table(rows: list[dict], tokens: int) -> str:
    out = ["| model | who | mode | frames | pixels (T,C,H,W) | visual tokens | prompt tokens | preprocess s | encode s "
           "| prefill s | TTFT s | decode s/token | " + f"{tokens}-token answer s | with real head s | vs transformers "
           "| peak RSS GiB | answer CPU s |", "|---" * 17 + "|"]
    base = {r["model"]: r for r in rows if r["who"] == "transformers"}
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | {r['who']} | {r['mode']} | not measured: {r['error'][:150]} |")
            continue
        ref = base.get(r["model"])
        ratio = answer_s(ref, tokens) / answer_s(r, tokens) if ref else None
        out.append(f"| {r['model']} | {r['who']} | {r['mode']} | {r['frames']} | {'x'.join(map(str, r['pixels']))} "
                   f"| {r['visual_tokens']} | {r['prompt_tokens']} | {r['preprocess_s']:.2f} | {r['encode_s']:.2f} "
                   f"| {r['prefill_s']:.2f} | {ttft(r):.2f} | {r['per_token_s']:.3f} | {answer_s(r, tokens):.1f} "
                   f"| {answer_s(r, tokens, True):.1f} | {'-' if ratio is None else f'{ratio:.2f}x'} "
                   f"| {r['peak_rss_gib']:.2f} | {cpu_text(answer_cpu_s(r, tokens))} |")
    return "\n".join(out)


def cpu_text(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def verdict(rows: list[dict], tokens: int) -> str:
    """The issue's rule on vqa's anyres answers (with the real head's cost)."""
    anyres = {r["model"]: r for r in rows if r["who"] == "vqa" and r["mode"] == "anyres"}
    if set(anyres) != set(MODELS):
        return "rule: needs both models' anyres rows"
    big, small = (answer_s(anyres[m], tokens, True) for m in ("qwen3-vl-2b", "llava-onevision-0.5b"))
    ratio = big / small
    cpu = [answer_cpu_s(anyres[m], tokens) for m in ("qwen3-vl-2b", "llava-onevision-0.5b")]
    cpu_ratio = f"; in CPU seconds {cpu[0]:.1f} vs {cpu[1]:.1f} = {cpu[0] / cpu[1]:.2f}x" if None not in cpu else ""
    return (f"rule (anyres, {tokens}-token answer with the real head): qwen3-vl-2b {big:.1f} s vs "
            f"llava-onevision-0.5b {small:.1f} s = {ratio:.2f}x{cpu_ratio} -> "
            + ("within 3x: qwen3-vl-2b can be the CPU default" if ratio <= 3 else "over 3x: keep the 0.5B default"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometry", choices=["tiny", "real"], default="real")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["anyres", "slowfast", "pooled"])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per measurement")
    parser.add_argument("--answer-tokens", type=int, default=32, help="answer length the latency rule assumes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--video", help="default: a generated 10 s 640x360 clip at 30 fps")
    parser.add_argument("--workdir", help="keep the built checkpoints and clip here between runs")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="print the table of rows written before (--json)")
    args = parser.parse_args()
    if args.report:
        rows = [row for path in args.report for row in json.loads(Path(path).read_text())]
        print(table(rows, args.answer_tokens) + "\n\n" + verdict(rows, args.answer_tokens))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="vqa-cpu-default-"))
    work.mkdir(parents=True, exist_ok=True)
    video = args.video
    if video is None:
        video = str(work / "clip-640x360.mp4")
        if not Path(video).is_file():
            from vqa_cli.testing import make_clip

            make_clip(video, 300, fps=30.0, size=(640, 360))
    if len(args.models) == 1:  # the child: one model in this process
        rows = measure(args.models[0], checkpoint(args.models[0], args.geometry, work), video, args)
    else:
        rows = []
        for model in args.models:  # one process each: its own peak memory, nothing left of the other
            out = work / f"rows-{model}.json"
            cmd = [sys.executable, __file__, *_child_args(args, model, work, video, out)]
            subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            rows += json.loads(out.read_text())
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if len(args.models) > 1 or not args.json:
        print(f"CPU, float32, {args.threads} threads, {args.frames} frames of {Path(video).name}, "
              f"geometry {args.geometry}, {args.new_tokens} new tokens measured, best of {args.repeats}\n")
        print(table(rows, args.answer_tokens))
        print()
        print(verdict(rows, args.answer_tokens))


def _child_args(args: argparse.Namespace, model: str, work: Path, video: str, out: Path) -> list[str]:
    return ["--geometry", args.geometry, "--models", model, "--modes", *args.modes, "--frames", str(args.frames),
            "--new-tokens", str(args.new_tokens), "--answer-tokens", str(args.answer_tokens), "--threads",
            str(args.threads), "--repeats", str(args.repeats), "--video", video, "--workdir", str(work),
            "--json", str(out)]


if __name__ == "__main__":
    main()
