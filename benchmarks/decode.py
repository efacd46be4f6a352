"""Frame-decoding benchmark: vqa's sampler against OpenCV loops, PyAV and decord.

Usage::

    python benchmarks/decode.py [--long PATH] [--samples DIR] [--frames 8 32 64] [--repeat N]

Every method samples the same target indices (``uniform_indices`` over the real
frame count) in the same run; the table gives the best of ``--repeat`` wall
times, the speed-up against the BASELINE (OpenCV seek loop: set
CAP_PROP_POS_FRAMES, then read, per target) and whether the frames are exact:
equal, pixel for pixel, to the frames at the same indices of a full sequential
decode by the same library (OpenCV for the OpenCV and vqa rows).  Keyframe
seeking returns other frames than the targets by design; for it "keyframes"
means the frames equal the sequential decode at the indices it reports.

``--av1 PATH`` adds a table for an AV1 clip (made with PyAV's ``libsvtav1`` when PATH does not
exist: ``--av1-seconds`` long, ``--av1-size`` pixels), which OpenCV cannot decode: vqa's PyAV
fallback, exact and keyframe, against the BASELINE of a naive PyAV loop that decodes every frame
and keeps the targets.

Make the long clip with ``/work/shared/tools/make-long-video.sh /tmp/long.mp4 120``
and fetch the real files with ``/work/shared/tools/fetch-sample-videos.sh``.
PyAV (``av``) and decord are optional: missing ones are skipped with a note.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqa_cli.video import VIDEO_EXTENSIONS, DecodeOptions, sample_frames, uniform_indices  # noqa: E402

BASELINE = "OpenCV seek loop (BASELINE)"


def digest(rgb: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=16).hexdigest()


@dataclass
class Result:
    """One method on one clip and frame count: best time, frames returned (as hashes)."""

    seconds: float
    indices: list[int]
    hashes: list[str]
    note: str = ""


@dataclass
class Method:
    name: str
    library: str  # whose sequential decode is the reference: "opencv", "av" or "decord"
    run: Callable[[str, list[int]], tuple[list[int], list[np.ndarray]]]
    exact_by_design: bool = True


# ----------------------------------------------------------------------------- OpenCV and vqa


def opencv_open(path: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    if not cap.isOpened():
        raise RuntimeError(f"OpenCV cannot open {path}")
    return cap


def opencv_seek_loop(path: str, targets: list[int]) -> tuple[list[int], list[np.ndarray]]:
    cap = opencv_open(path)
    frames = []
    try:
        for t in targets:
            cap.set(cv2.CAP_PROP_POS_FRAMES, t)
            ok, frame = cap.read()
            if not ok:
                raise RuntimeError(f"seek loop could not read frame {t}")
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    return targets, frames


def opencv_grab_all(path: str, targets: list[int]) -> tuple[list[int], list[np.ndarray]]:
    cap = opencv_open(path)
    wanted = set(targets)
    found: dict[int, np.ndarray] = {}
    try:
        i = 0
        while cap.grab():
            if i in wanted:
                found[i] = cv2.cvtColor(cap.retrieve()[1], cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()
    return targets, [found[t] for t in targets]


def vqa_method(seek: str, workers: int | None = None) -> Callable[[str, list[int]], tuple[list[int], list[np.ndarray]]]:
    options = DecodeOptions(max_workers=workers)

    def run(path: str, targets: list[int]) -> tuple[list[int], list[np.ndarray]]:
        clip = sample_frames(path, len(targets), seek=seek, options=options)
        run.last_clip = clip  # type: ignore[attr-defined]
        return clip.indices, list(clip.frames)

    return run


def opencv_reference(path: str, needed: set[int]) -> tuple[int, dict[int, str]]:
    """Sequential OpenCV decode: (frame count, hash of each needed index)."""
    cap = opencv_open(path)
    hashes = {}
    count = 0
    try:
        while cap.grab():
            if count in needed:
                hashes[count] = digest(cv2.cvtColor(cap.retrieve()[1], cv2.COLOR_BGR2RGB))
            count += 1
    finally:
        cap.release()
    return count, hashes


# ----------------------------------------------------------------------------- peers


def pyav_seek(path: str, targets: list[int]) -> tuple[list[int], list[np.ndarray]]:
    """PyAV: seek to the keyframe before each target, decode until the target's frame (exact)."""
    import av

    frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        times = pyav_times(path)
        for t in targets:
            pts = times[t]
            container.seek(pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts >= pts:
                    if frame.pts != pts:
                        raise RuntimeError(f"PyAV decoded past frame {t}")
                    frames.append(frame.to_ndarray(format="rgb24"))
                    break
    return targets, frames


_PYAV_TIMES: dict[str, list[int]] = {}


def pyav_times(path: str) -> list[int]:
    """Presentation timestamps of every frame, in order (from the packets: cheap, cached, untimed)."""
    if path not in _PYAV_TIMES:
        import av

        with av.open(path) as container:
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size]
        _PYAV_TIMES[path] = sorted(pts)
    return _PYAV_TIMES[path]


def pyav_reference(path: str, needed: set[int]) -> tuple[int, dict[int, str]]:
    import av

    hashes = {}
    count = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if count in needed:
                hashes[count] = digest(frame.to_ndarray(format="rgb24"))
            count += 1
    return count, hashes


def decord_batch(path: str, targets: list[int]) -> tuple[list[int], list[np.ndarray]]:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
    batch = reader.get_batch(targets).asnumpy()
    return targets, list(batch)


def decord_reference(path: str, needed: set[int]) -> tuple[int, dict[int, str]]:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
    hashes = {}
    count = 0
    while True:
        try:
            frame = reader.next()
        except StopIteration:
            break
        if count in needed:
            hashes[count] = digest(frame.asnumpy())
        count += 1
    return count, hashes


REFERENCES = {"opencv": opencv_reference, "av": pyav_reference, "decord": decord_reference}


def methods() -> list[Method]:
    found = [
        Method(BASELINE, "opencv", opencv_seek_loop),
        Method("OpenCV grab-all", "opencv", opencv_grab_all),
    ]
    try:
        import av  # noqa: F401

        found.append(Method("PyAV seek + decode", "av", pyav_seek))
    except ImportError:
        print("note: PyAV is not installed (pip install av); its row is skipped", file=sys.stderr)
    try:
        import decord  # noqa: F401

        found.append(Method("decord get_batch", "decord", decord_batch))
    except ImportError:
        print("note: decord is not installed (pip install decord); its row is skipped", file=sys.stderr)
    found += [
        Method("vqa exact", "opencv", vqa_method("exact")),
        Method("vqa exact, 1 capture", "opencv", vqa_method("exact", workers=1)),
        Method("vqa keyframe", "opencv", vqa_method("keyframe"), exact_by_design=False),
        Method("vqa auto", "opencv", vqa_method("auto"), exact_by_design=False),
    ]
    return found


# ----------------------------------------------------------------------------- running


@dataclass
class Table:
    title: str
    counts: list[int]
    # method -> n -> path -> result / verdict
    results: dict[str, dict[int, dict[str, Result]]] = field(default_factory=dict)
    verdicts: dict[str, dict[int, dict[str, str]]] = field(default_factory=dict)


def measure(method: Method, path: str, targets: list[int], repeat: int) -> Result:
    best = float("inf")
    indices: list[int] = []
    frames: list[np.ndarray] = []
    note = ""
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            indices, frames = method.run(path, targets)
        except Exception as exc:  # noqa: BLE001 - a peer failing on a file is a result too
            return Result(float("nan"), [], [], note=f"failed: {type(exc).__name__}: {exc}"[:160])
        best = min(best, time.perf_counter() - start)
    clip = getattr(method.run, "last_clip", None)
    if clip is not None:
        note = f"{clip.seek}, {clip.decoded} decoded"
    return Result(best, list(indices), [digest(f) for f in frames], note)


def run_clips(title: str, paths: list[str], counts: list[int], repeat: int, all_methods: list[Method]) -> Table:
    table = Table(title, counts)
    for path in paths:
        real, _ = opencv_reference(path, set())
        for n in counts:
            targets = uniform_indices(real, n)
            for method in all_methods:
                result = measure(method, path, targets, repeat)
                table.results.setdefault(method.name, {}).setdefault(n, {})[path] = result
                print(f"  {Path(path).name} n={n} {method.name}: {result.seconds:.3f}s {result.note}", file=sys.stderr)
        # References: one sequential decode per library, hashing only the indices someone returned.
        for library, reference in REFERENCES.items():
            mine = [m for m in all_methods if m.library == library]
            if not mine:
                continue
            needed = {i for m in mine for n in counts for i in table.results[m.name][n][path].indices}
            try:
                count, hashes = reference(path, needed)
            except Exception as exc:  # noqa: BLE001
                count, hashes = -1, {}
                print(f"  {Path(path).name}: {library} reference decode failed: {exc}", file=sys.stderr)
            for method in mine:
                for n in counts:
                    result = table.results[method.name][n][path]
                    verdict = verdict_for(method, result, uniform_indices(real, n), hashes, count, real)
                    table.verdicts.setdefault(method.name, {}).setdefault(n, {})[path] = verdict
    return table


def verdict_for(
    method: Method, result: Result, targets: list[int], hashes: dict[int, str], count: int, real: int
) -> str:
    if result.note.startswith("failed"):
        return "failed"
    if count != real:
        return f"reference decodes {count} frames, OpenCV {real}"
    same = len(result.hashes) == len(result.indices) and all(
        hashes.get(i) == h for i, h in zip(result.indices, result.hashes, strict=True)
    )
    if not same:
        return "NO"
    if result.indices == targets:
        return "yes"
    return "keyframes" if not method.exact_by_design else "NO (other indices)"


def summary(verdicts: dict[str, str]) -> str:
    """One cell for a method's verdicts over several files."""
    order = ["yes", "keyframes", "NO (other indices)", "NO"]
    seen = [v for v in order if v in verdicts.values()]
    text = " + ".join(seen) if seen else ""
    odd = sorted({Path(p).name for p, v in verdicts.items() if v not in order})
    if odd:
        text += (", " if text else "") + "failed: " + ", ".join(odd)
    return text


def render(table: Table) -> str:
    paths = sorted({p for per_n in table.results.values() for r in per_n.values() for p in r})
    # Sums and ratios only over files every method handled, so that they compare the same work.
    common = [p for p in paths if all(r[n][p].seconds == r[n][p].seconds for r in table.results.values()
                                      for n in table.counts)]
    baseline = {n: sum(table.results[BASELINE][n][p].seconds for p in common) for n in table.counts}
    head = "| method | " + " | ".join(f"{n} frames: s | × faster | exact" for n in table.counts) + " |"
    rule = "|---|" + "---:|---:|:---|" * len(table.counts)
    lines = [f"**{table.title}**", "", head, rule]
    for name, per_n in table.results.items():
        cells = []
        for n in table.counts:
            seconds = sum(per_n[n][p].seconds for p in common)
            speedup = baseline[n] / seconds if seconds > 0 else float("nan")
            cells += [f"{seconds:.3f}", f"{speedup:.2f}", summary(table.verdicts[name][n])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    left_out = [p for p in paths if p not in common]
    if left_out:
        lines.append("")
        for p in left_out:
            failed = sorted({name for name, per_n in table.results.items() for n in table.counts
                             if per_n[n][p].seconds != per_n[n][p].seconds})
            lines.append(f"Left out of the sums: {Path(p).name} (failed: {', '.join(failed)}).")
    return "\n".join(lines)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line), model)
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {os.cpu_count()} cores, OpenCV {cv2.__version__}, Python {platform.python_version()}"


AV1_BASELINE = "naive PyAV loop, every frame (BASELINE)"


def make_av1(path: str, seconds: int, size: tuple[int, int], fps: int = 30, gop: int = 150) -> str:
    """A synthetic AV1 clip encoded by PyAV's ``libsvtav1``: a moving square over a drifting gradient with
    sensor-like noise, so that inter frames carry real residuals (a clean gradient makes them nearly free
    to decode, which no camera footage is)."""
    import av

    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 24, (height, width, 3), dtype=np.uint8) for _ in range(7)]
    with av.open(path, "w") as out:
        stream = out.add_stream("libsvtav1", rate=fps, options={"preset": "12", "g": str(gop)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            img = np.empty((height, width, 3), np.uint8)
            img[..., 0] = (xx + 2 * i) % 256
            img[..., 1] = (yy + i) % 256
            img[..., 2] = (xx + yy + 3 * i) % 256
            x, y = (7 * i) % (width - 64), (5 * i) % (height - 64)
            img[y:y + 64, x:x + 64] = 255
            img += noise[i % len(noise)]
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def naive_pyav(path: str, targets: list[int]) -> tuple[list[int], list[str]]:
    """Decode every frame in order with PyAV and keep the targets' hashes (what a user would write)."""
    import av

    wanted, hashes = set(targets), {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                hashes[i] = digest(frame.to_ndarray(format="rgb24"))
    return sorted(hashes), [hashes[i] for i in sorted(hashes)]


def av1_table(path: str, counts: list[int], repeat: int) -> str:
    """vqa exact and keyframe on an AV1 clip against the naive PyAV loop; exactness against that loop."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        every = {i: digest(f.to_ndarray(format="rgb24")) for i, f in enumerate(container.decode(stream))}
        codec, size = stream.codec_context.name, f"{stream.codec_context.width}x{stream.codec_context.height}"
    total = len(every)
    rows: dict[str, list[str]] = {AV1_BASELINE: [], "vqa exact (PyAV fallback)": [], "vqa keyframe": []}
    for n in counts:
        targets = uniform_indices(total, n)
        timed: dict[str, tuple[float, list[int], list[str]]] = {}
        for name in rows:
            best = float("inf")
            for _ in range(repeat):
                started = time.perf_counter()
                if name == AV1_BASELINE:
                    indices, hashes = naive_pyav(path, targets)
                else:
                    clip = sample_frames(path, n, seek="exact" if "exact" in name else "keyframe")
                    assert clip.decoder == "pyav", clip.decoder
                    indices, hashes = clip.indices, [digest(f) for f in clip.frames]
                best = min(best, time.perf_counter() - started)
            timed[name] = (best, indices, hashes)
        base = timed[AV1_BASELINE][0]
        for name, (seconds, indices, hashes) in timed.items():
            same = all(every.get(i) == h for i, h in zip(indices, hashes, strict=True))
            exact = "yes" if same and indices == targets else ("keyframes" if same else "NO")
            rows[name] += [f"{seconds:.3f}", f"{base / seconds:.2f}", exact]
    head = "| method | " + " | ".join(f"{n} frames: s | × faster | exact" for n in counts) + " |"
    lines = [f"**{Path(path).name}: {codec} {size}, {total} frames**", "", head,
             "|---|" + "---:|---:|:---|" * len(counts)]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", default="/tmp/long.mp4", help="long clip (make-long-video.sh OUT 120)")
    parser.add_argument("--samples", default=os.environ.get("VQA_SAMPLE_VIDEOS", "/tmp/vqa-sample-videos"),
                        help="folder of real videos (fetch-sample-videos.sh)")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32, 64], help="frame counts to sample")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--av1", default=None, help="AV1 clip (made with PyAV's libsvtav1 when missing)")
    parser.add_argument("--av1-seconds", type=int, default=120, help="length of a made AV1 clip")
    parser.add_argument("--av1-size", default="1280x720", help="WxH of a made AV1 clip")
    args = parser.parse_args(argv)
    if args.av1:
        if not os.path.isfile(args.av1):
            width, height = (int(v) for v in args.av1_size.split("x"))
            started = time.perf_counter()
            make_av1(args.av1, args.av1_seconds, (width, height))
            print(f"note: encoded {args.av1} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        print(f"Machine: {machine()}, PyAV {__import__('av').__version__}; best of {args.repeat}.\n")
        print(av1_table(args.av1, args.frames, args.repeat))
        print()

    all_methods = methods()
    tables = []
    if os.path.isfile(args.long):
        tables.append(run_clips(f"{args.long} (long clip)", [args.long], args.frames, args.repeat, all_methods))
    else:
        print(f"note: no long clip at {args.long}; make one with make-long-video.sh", file=sys.stderr)
    samples = sorted(
        str(p) for p in Path(args.samples).glob("*") if p.suffix.lower() in VIDEO_EXTENSIONS
    ) if os.path.isdir(args.samples) else []
    if samples:
        title = f"{len(samples)} real files in {args.samples} (seconds summed over the files)"
        tables.append(run_clips(title, samples, args.frames, args.repeat, all_methods))
    else:
        print(f"note: no videos in {args.samples}; fetch them with fetch-sample-videos.sh", file=sys.stderr)
    if not tables:
        return 1
    print(f"Machine: {machine()}; best of {args.repeat}.\n")
    for table in tables:
        print(render(table))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
