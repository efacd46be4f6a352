"""``vqa eval`` against a naive evaluation loop: 30 questions over 10 videos (3 per video), same model.

Naive ("per question"): for every question, decode the clip, preprocess and encode it, and answer with
``Engine.answer`` (a full prefill of the whole prompt). vqa eval: ``Evaluator`` as the command runs it:
each clip decoded once (ahead, on worker threads), encoded once, the shared prompt prefix prefilled once,
each question feeding only its own tokens. Same checkpoint, frames, prompts (MVBench, lmms-eval's: no
answer prefix, so the naive loop is a plain ``Engine.answer``) and greedy decoding; the benchmark checks
that both give the same answers.

    python benchmarks/eval.py [--model DIR] [--frames 16] [--max-new-tokens 16] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: a tiny random-weight one)")
    parser.add_argument("--videos", type=int, default=10)
    parser.add_argument("--per-video", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from vqa_cli.jobs.eval import Evaluator, build, group_items, read_items
    from vqa_cli.jobs.eval._run import eval_sid
    from vqa_cli.model.engine import sample_clip
    from vqa_cli.model.session import open_model
    from vqa_cli.settings import RunSettings
    from vqa_cli.testing import make_clip

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            from vqa_cli.testing import tiny_checkpoint

            model = str(tiny_checkpoint(root / "tiny"))
        (root / "videos").mkdir()
        rows = []
        for v in range(args.videos):
            make_clip(str(root / "videos" / f"v{v}.mp4"), 150, fps=30.0, size=(320, 240))
            rows += [{"video": f"v{v}.mp4", "question": f"Question {q} about video {v}: what happens?",
                      "candidates": ["a person walks", "a car drives", "a dog runs", "nothing moves"],
                      "answer": "a dog runs"} for q in range(args.per_video)]
        (root / "ann.json").write_text(json.dumps(rows))
        items = read_items(str(root / "ann.json"), "mvbench")
        groups = group_items(items, str(root / "videos"))
        settings = RunSettings(model=model, frames=args.frames, max_new_tokens=args.max_new_tokens)
        engine = open_model(settings, [build(items[0], "mvbench", "lmms-eval")]).engine
        sid = eval_sid(settings, "mvbench", "lmms-eval", "generate")

        class Sink:
            def __init__(self) -> None:
                self.records: list[dict] = []

            def write(self, rec: dict) -> None:
                self.records.append(rec)

        def naive() -> dict[str, str]:
            answers = {}
            for group in groups:
                for it in group.items:
                    clip, _ = sample_clip(group.path, replace(settings, start=group.start, end=group.end),
                                          args.frames)
                    answers[it.qid] = engine.answer(clip, build(it, "mvbench", "lmms-eval")).text.strip()
            return answers

        def vqa_eval() -> dict[str, str]:
            sink = Sink()
            Evaluator(engine, [settings], "mvbench", "lmms-eval", "generate", [sid]).run(groups, sink)
            return {r["qid"]: r["raw_answer"] for r in sink.records}

        import torch

        default_threads = torch.get_num_threads()

        def naive_fewer_threads() -> dict[str, str]:
            # vqa eval's model leaves a core to its decode workers (harness.model_threads); the naive loop
            # is timed both ways and its better time counts, so the comparison never favours vqa eval.
            torch.set_num_threads(max(1, default_threads - 1))
            try:
                return naive()
            finally:
                torch.set_num_threads(default_threads)

        naive_answers, shared_answers = naive(), vqa_eval()  # warm-up, and the answers compared
        same = naive_answers == shared_answers
        times: dict[str, list[float]] = {"naive": [], "eval": []}
        for _ in range(args.repeat):
            for name, fn in (("naive", naive), ("naive", naive_fewer_threads), ("eval", vqa_eval)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        best = {k: min(v) for k, v in times.items()}
        n = len(items)
        print(f"{platform.processor() or platform.machine()}, {n} questions over {len(groups)} videos, "
              f"{args.frames} frames, max_new_tokens {args.max_new_tokens}, best of {args.repeat} "
              f"(naive: best of {2 * args.repeat}, {default_threads} and {max(1, default_threads - 1)} torch threads)")
        print("| loop | seconds | questions/s |")
        print("|---|---|---|")
        for name, label in (("naive", "naive (decode, encode, prefill per question)"), ("eval", "vqa eval")):
            print(f"| {label} | {best[name]:.2f} | {n / best[name]:.2f} |")
        print(f"speed-up: {best['naive'] / best['eval']:.2f}x; same answers: {same}")


if __name__ == "__main__":
    main()
