"""Captioning a long clip scene by scene: vqa's pipelined segments against a naive loop, same run.

Clip: ``--minutes`` of generated video (``--scenes`` scenes of different colour and motion, OpenCV's
``mp4v``, a keyframe every 12 frames, 10 fps). Both methods caption every scene with the same checkpoint,
frames per scene, prompt and greedy decoding.

- naive loop: a PySceneDetect pass (``scenedetect.detect``, content detector), then for each scene: open
  the file, seek to the scene's first frame (``CAP_PROP_POS_FRAMES``), decode the scene's frames, take
  ``--frames`` uniform ones, preprocess, and ``Engine.answer`` (one generate per scene).
- vqa: ``vqa caption --segments scenes --scene-detector content`` (the same detector as the naive loop; scene
  detection in a decode worker, each segment sampled with exact seeks, segment clips batched ``--batch-size``
  at a time while the next video decodes).

    python benchmarks/segments.py [--minutes 10] [--scenes 60] [--frames 4] [--batch-size 4] [--repeats 2]

The table gives each method's median seconds, the ratio to the naive loop and the frames each decodes
(PySceneDetect's pass included). Without ``--model`` the random-weight tiny checkpoint is built.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from vqa_cli.testing import scene_clip  # the same generated scenes the tests detect

PROMPT = "Describe this scene in one sentence."


def scene_lengths(total: int, scenes: int, seed: int = 0) -> list[int]:
    """``scenes`` lengths (at least 15 frames each) summing to ``total`` frames."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, scenes)
    lengths = np.maximum(15, np.floor(weights / weights.sum() * total)).astype(int)
    lengths[-1] += total - lengths.sum()
    return [int(x) for x in lengths]


def naive(video: str, engine, frames: int) -> tuple[list[str], int]:
    """PySceneDetect, then per scene: seek, decode the scene, sample, answer. Captions and frames decoded."""
    from scenedetect import ContentDetector, detect

    from vqa_cli.video import Clip

    scenes = detect(video, ContentDetector(min_scene_len=1))
    cap = cv2.VideoCapture(video)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    decoded = total  # the detection pass decodes every frame
    captions = []
    for start, end in scenes or [(None, None)]:
        lo = start.frame_num if start is not None else 0
        hi = end.frame_num if end is not None else total
        cap = cv2.VideoCapture(video)
        cap.set(cv2.CAP_PROP_POS_FRAMES, lo)
        images = []
        for _ in range(hi - lo):
            ok, frame = cap.read()
            if not ok:
                break
            images.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        cap.release()
        decoded += len(images)
        picks = [int((k + 0.5) * len(images) / frames) for k in range(frames)]
        clip = Clip(video, np.stack([images[i] for i in picks]), [lo + i for i in picks],
                    [round((lo + i) / fps, 3) for i in picks], total / fps, fps, total, False, total, fps)
        captions.append(engine.answer(clip, PROMPT).text)
    return captions, decoded


def vqa_run(video: str, session, settings, frames: int, batch: int) -> tuple[list[str], int]:
    """``caption --segments scenes`` through its captioner; captions and frames decoded."""
    from vqa_cli.jobs import segments
    from vqa_cli.jobs.captioner import Captioner
    from vqa_cli.output.records import settings_id

    decoded = [0]
    original = segments.decode_video

    def counting(*args, **kwargs):
        job = original(*args, **kwargs)
        decoded[0] += job.frames_scanned + sum(p.decoded.clip.decoded for p in job.pieces)
        return job

    class Sink:
        records: list[dict] = []

        def write(self, rec: dict) -> None:
            self.records.append(rec)

    sink = Sink()
    segments.decode_video = counting
    try:
        captioner = Captioner(session.engine, settings, PROMPT, settings_id(settings.identity(), PROMPT),
                              batch_size=batch, workers=2, frames=frames)
        captioner.run([video], sink)
    finally:
        segments.decode_video = original
    rec = sink.records[0]
    assert rec["error"] is None, rec["error"]
    return [s["caption"] for s in rec["segments"]], decoded[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    from vqa_cli.model.session import open_model
    from vqa_cli.settings import RunSettings
    from vqa_cli.testing import tiny_checkpoint

    work = Path(tempfile.mkdtemp(prefix="vqa-segments-"))
    model = args.model or str(tiny_checkpoint(work / "tiny"))
    video = scene_clip(str(work / "long.mp4"), scene_lengths(int(args.minutes * 600), args.scenes), fps=10.0,
                       size=(160, 120))
    settings = RunSettings(model=model, frames=args.frames, dtype="float32", max_new_tokens=args.max_new_tokens,
                           segments="scenes", scene_detector="content", seek="exact")  # the naive loop's detector
    session = open_model(settings, [PROMPT], batch=args.batch_size)
    rows: dict[str, list[float]] = {"naive loop": [], "vqa --segments scenes": []}
    decoded: dict[str, int] = {}
    scenes = {}
    for _ in range(args.repeats):
        t = time.perf_counter()
        caps, decoded["naive loop"] = naive(video, session.engine, args.frames)
        rows["naive loop"].append(time.perf_counter() - t)
        scenes["naive loop"] = len(caps)
        t = time.perf_counter()
        caps, decoded["vqa --segments scenes"] = vqa_run(video, session, settings, args.frames, args.batch_size)
        rows["vqa --segments scenes"].append(time.perf_counter() - t)
        scenes["vqa --segments scenes"] = len(caps)
    base = statistics.median(rows["naive loop"])
    print(f"{args.minutes:g}-minute clip, {args.scenes} scenes, {args.frames} frames per scene, "
          f"batch {args.batch_size}, {args.max_new_tokens} new tokens, {args.repeats} rounds\n")
    print("| method | scenes | seconds (median) | speed-up | frames decoded |")
    print("|---|---|---|---|---|")
    for name, times in rows.items():
        med = statistics.median(times)
        print(f"| {name} | {scenes[name]} | {med:.1f} | {base / med:.2f}x | {decoded[name]} |")
    print("\n" + json.dumps({k: [round(x, 2) for x in v] for k, v in rows.items()}))


if __name__ == "__main__":
    main()
