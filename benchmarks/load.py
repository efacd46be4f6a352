"""Loading: a pre-quantized copy (``model.weights.copies``) against quantizing on load, same checkpoint, same run.

Baseline ("quantize on load"): vqa's loading with copies switched off (``VQA_QUANT_CACHE=0``): transformers reads
the checkpoint's 16-bit safetensors and bitsandbytes quantizes the language model as it loads, which is what
every ``--quant 4bit`` load did before copies. Against it: the same ``loader.load_model`` call reading the
pre-quantized copy that the first quantized load wrote (``VQA_QUANT_CACHE=read``, so the timed loads never write).
Same checkpoint, quantization, dtype and device; the methods alternate for ``--repeats`` rounds (the machines
are noisy) and the table gives medians.

Two times per load: ``load`` is ``LoadedModel.seconds`` (what ``ask --json`` reports as the ``load`` stage);
``ready`` adds reading one byte of every page of every weight, because safetensors are memory-mapped and
weights that are not converted (the unquantized vision tower at the checkpoint's own dtype) are only read from
disk when first used: ``ready`` is what a first answer waits for, and the ratio is taken on it. ``--cold``
drops the files' pages from the page cache before each load (``posix_fadvise(DONTNEED)``, no root needed), so
disk reads count; by default the files are in the page cache after the first round, as on a machine that loaded
the model recently.

    python benchmarks/load.py [--checkpoint DIR | --geometry 0.5b|tiny] [--quant 4bit] [--dtype bfloat16]
                              [--repeats 5] [--cold] [--device cpu]

Without ``--checkpoint`` a random-weight LLaVA-OneVision checkpoint is built: ``--geometry 0.5b`` (the
default: llava-onevision-qwen2-0.5b's widths and depths, bfloat16, about 1.5 GB written) or ``tiny``. The copy
is written into a temporary ``VQA_CACHE``, never the user's. ``load_table`` returns the rows for other scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET = 2.0  # the target: a pre-quantized load at least twice as fast as quantizing on load


def build_checkpoint(folder: Path, geometry: str = "0.5b") -> Path:
    """A random-weight LLaVA-OneVision checkpoint of ``geometry`` in ``folder``."""
    from vqa_cli.testing import tiny_checkpoint

    return tiny_checkpoint(folder / f"onevision-{geometry}", family="llava-onevision", geometry=geometry)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def evict(files: list[Path]) -> None:
    """Drop ``files``' pages from the page cache, so that the next load reads them from disk."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def touch(model: Any) -> int:
    """Read one byte of every page of every weight (memory-mapped ones come from disk now)."""
    import torch

    total = 0
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            flat = t.detach().reshape(-1)
            if flat.numel():
                total += int(flat.view(torch.uint8)[::4096].sum())
    return total


def _load(model_dir: Path, quant: str, dtype: Any, device: str) -> tuple[float, float, bool]:
    """One load: (load seconds, ready seconds, read from a copy)."""
    from vqa_cli.model import loading
    from vqa_cli.model.weights import loader

    config, _ = loading.read_checkpoint_config(model_dir)
    started = time.perf_counter()
    loaded = loader.load_model(model_dir, config, device=device, dtype=dtype, quant=quant)
    touch(loaded.model)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    ready = time.perf_counter() - started
    result = loaded.seconds, ready, loaded.prequantized
    del loaded
    gc.collect()
    return result


def load_table(model_dir: Path, *, quant: str = "4bit", dtype: str = "bfloat16", device: str | None = None,
               repeats: int = 3, cold: bool = False, cache: Path | None = None) -> list[dict[str, Any]]:
    """Rows (medians over ``repeats`` alternating rounds): quantize on load, then the pre-quantized copy, then the
    one-time first load that quantizes and writes the copy. ``ratio``: the baseline's ready time over the row's.

    The copy goes to ``cache`` (a temporary folder by default)."""
    from vqa_cli.model import device as devices
    from vqa_cli.model.weights import copies as stored
    from vqa_cli.model.weights import files

    device = devices.resolve_device(device)
    torch_dtype = devices.resolve_dtype(dtype, device)
    source = files.weight_files(model_dir)
    with contextlib.ExitStack() as stack:
        if cache is None:
            cache = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vqa-load-bench-")))
        stack.enter_context(_env(VQA_CACHE=str(cache), VQA_QUANT_CACHE="1"))
        with _env(VQA_QUANT_CACHE="0"):  # not timed: imports and library set-up happen once, on the first load
            _load(model_dir, quant, torch_dtype, device)
        if cold:
            evict(source)
        started = time.perf_counter()
        first_load, _, used = _load(model_dir, quant, torch_dtype, device)  # quantizes and writes the copy
        first = time.perf_counter() - started
        copies = stored.copies_of(model_dir)
        if used or not copies:
            raise RuntimeError(f"the first load did not write a copy into {cache}")
        copy_files = sorted(Path(copies[0]["path"]).glob("*.safetensors"))
        runs: dict[str, list[tuple[float, float]]] = {"quantize on load": [], "pre-quantized copy": []}
        methods = (("quantize on load", "0", source), ("pre-quantized copy", "read", copy_files))
        for _ in range(repeats):
            for method, switch, files in methods:
                if cold:
                    evict(files)
                with _env(VQA_QUANT_CACHE=switch):
                    load_s, ready_s, used = _load(model_dir, quant, torch_dtype, device)
                if used != (method == "pre-quantized copy"):
                    raise RuntimeError(f"{method}: the load {'did' if used else 'did not'} read the copy")
                runs[method].append((load_s, ready_s))
    reads = {"quantize on load": sum(f.stat().st_size for f in source), "pre-quantized copy": copies[0]["disk_bytes"]}
    base = statistics.median(r for _, r in runs["quantize on load"])
    rows = []
    for method, times in runs.items():
        ready = statistics.median(r for _, r in times)
        rows.append({"method": method, "quant": quant, "dtype": devices.dtype_name(torch_dtype), "device": device,
                     "cold": cold, "reads_bytes": reads[method], "load_s": statistics.median(x for x, _ in times),
                     "ready_s": ready, "each_ready_s": [r for _, r in times], "ratio": base / ready})
    rows.append({"method": "first load: quantize, then write the copy", "quant": quant,
                 "dtype": devices.dtype_name(torch_dtype), "device": device, "cold": cold,
                 "reads_bytes": reads["quantize on load"], "load_s": first_load, "ready_s": None,
                 "each_ready_s": [], "ratio": None, "with_write_s": first})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, and whether the copy meets the target."""
    lines = ["| load | reads | load s | ready s | each round (ready s) | vs quantize on load |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ready = f"{r['ready_s']:.2f}" if r["ready_s"] is not None else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else f"once: {r['with_write_s']:.2f} s with the write"
        each = ", ".join(f"{x:.2f}" for x in r["each_ready_s"]) or "-"
        lines.append(f"| {r['method']} | {r['reads_bytes'] / 1e9:.2f} GB | {r['load_s']:.2f} | {ready} | {each} | "
                     f"{ratio} |")
    copy_row = next(r for r in rows if r["method"] == "pre-quantized copy")
    verdict = "met" if copy_row["ratio"] >= TARGET else "NOT met"
    lines.append(f"\ntarget: pre-quantized copy >= {TARGET:g}x faster (ready): {verdict} ({copy_row['ratio']:.2f}x)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint directory (default: a random-weight one of --geometry)")
    parser.add_argument("--geometry", choices=("0.5b", "tiny"), default="0.5b",
                        help="the random-weight LLaVA-OneVision checkpoint built without --checkpoint")
    parser.add_argument("--quant", choices=("4bit", "8bit"), default="4bit")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "float16", "bfloat16"),
                        help="dtype of the unquantized modules and 4-bit compute (bfloat16: the checkpoint's own)")
    parser.add_argument("--device", help="vqa's default: cuda when there is one, else cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="drop the weight files from the page cache before loads")
    parser.add_argument("--workdir", help="where to build the checkpoint (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vqa-load-bench-") as tmp:
        model_dir = Path(args.checkpoint) if args.checkpoint else build_checkpoint(Path(args.workdir or tmp),
                                                                                  args.geometry)
        rows = load_table(model_dir, quant=args.quant, dtype=args.dtype, device=args.device, repeats=args.repeats,
                          cold=args.cold)
    cpu = platform.processor() or platform.machine()
    what = args.checkpoint or f"LLaVA-OneVision {args.geometry} geometry, random weights"
    print(f"{what}; --quant {args.quant}, {rows[0]['dtype']}, {rows[0]['device']} ({cpu}); "
          f"{'cold page cache' if args.cold else 'warm page cache'}; median of {args.repeats} alternating rounds\n")
    print(format_table(rows))


if __name__ == "__main__":
    main()
