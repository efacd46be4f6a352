"""Several questions about one video: the reused KV cache against separate answers, same process.

Baseline ("separate answers"): ``Engine.answer`` for each question: decode-free (the clip is
decoded once for both), but every answer preprocesses and encodes the video and prefills the
whole prompt again. vqa: ``Conversation``: the video is encoded and its prefix prefilled once,
then each question feeds only its own tokens. Same checkpoint, frames and greedy decoding.
The target compares the time *after the first answer* (answers 2..N).

    python benchmarks/questions.py [--model DIR] [--frames 32] [--questions 5] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

QUESTIONS = ["What happens in the video?", "Who is in the video?", "Describe the setting.",
             "What is the main object?", "What happens at the end?", "What colours dominate?",
             "Is anyone speaking?", "How many people are there?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: a tiny random-weight one)")
    parser.add_argument("--video", help="video file (default: a generated 10 s clip)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from vqa_cli.model.conversation import Conversation
    from vqa_cli.model.session import open_model
    from vqa_cli.settings import RunSettings
    from vqa_cli.testing import make_clip
    from vqa_cli.video import sample_frames

    questions = (QUESTIONS * 2)[: args.questions]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from vqa_cli.testing import tiny_checkpoint

            model = str(tiny_checkpoint(Path(tmp) / "tiny"))
        video = args.video or make_clip(str(Path(tmp) / "clip.mp4"), 300, fps=30.0, size=(640, 360))
        settings = RunSettings(model=model, frames=args.frames, max_new_tokens=args.max_new_tokens)
        session = open_model(settings, questions)
        engine, budget = session.engine, session.budget
        clip = sample_frames(video, args.frames)
        engine.answer(clip, "warm up")  # first-call allocations out of both measurements

        rows = []
        for _ in range(args.repeat):
            separate = []
            for q in questions:
                t = time.perf_counter()
                engine.answer(clip, q)
                separate.append(time.perf_counter() - t)
            reused = []
            t = time.perf_counter()
            conversation = Conversation.open(engine, clip, " ".join(questions))
            for q in questions:
                conversation.ask(q, keep=False)
                reused.append(time.perf_counter() - t)  # the first includes the encode and prefix prefill
                t = time.perf_counter()
            rows.append((separate, reused))
    best = min(rows, key=lambda r: sum(r[0]) + sum(r[1]))
    separate, reused = best
    after_sep, after_reu = sum(separate[1:]), sum(reused[1:])
    print(f"{args.questions} questions, {args.frames} frames ({budget.plan.total} visual tokens), "
          f"{args.max_new_tokens} new tokens, greedy; {platform.processor() or platform.machine()}; "
          f"best of {args.repeat}\n")
    print("| method | first answer s | answers 2..N s | total s | after-first vs separate |")
    print("|---|---|---|---|---|")
    print(f"| separate answers (baseline) | {separate[0]:.3f} | {after_sep:.3f} | {sum(separate):.3f} | 1.00x |")
    print(f"| reused KV cache (vqa) | {reused[0]:.3f} | {after_reu:.3f} | {sum(reused):.3f} | "
          f"{after_sep / after_reu:.2f}x less |")


if __name__ == "__main__":
    main()
