"""``vqa models`` and ``vqa download``: the checkpoint catalog, getting one into the cache, and its pre-quantized
copies (``vqa_cli.model.weights.copies``)."""

from __future__ import annotations

from typing import Annotated

import typer

from vqa_cli import console
from vqa_cli.cli.options import DeviceOpt, DtypeOpt, JsonOpt
from vqa_cli.settings import Quant

QuantizedOpt = Annotated[bool, typer.Option(
    "--quantized", help="List the pre-quantized copies in the vqa cache instead (local directories' too).")]
DownloadQuantOpt = Annotated[Quant | None, typer.Option(
    "--quant", show_default=False,
    help="Also store a pre-quantized copy (4bit, 8bit) that later loads with this --quant read instead of "
         "quantizing again. Made for --device and --dtype as a run would pick them: pass the --dtype your runs use.")]


def models(as_json: JsonOpt = False, quantized: QuantizedOpt = False) -> int:
    """List known checkpoints: alias, family, size, memory per quantization, whether cached (and pre-quantized)."""
    if quantized:
        return _copies(as_json)
    from vqa_cli.jobs.eval import published
    from vqa_cli.model.catalog import list_models

    rows = list_models()
    for r in rows:  # the published Video-MME accuracy (without subtitles), where a source gives one
        figure = published(r["repo_id"], "videomme")
        r["videomme"] = figure["accuracy"] if figure else None
    if as_json:
        console.emit_json(rows)
        return 0
    header = ["alias", "family", "params", "disk GB", "4bit GiB", "8bit GiB", "bf16 GiB", "Video-MME %", "cached",
              "quantized"]
    table = [[r["alias"] + (" *" if r["default"] else ""), r["family"], parameters_text(r["parameters"]),
              f"{r['disk_gb']:.1f}" + ("~" if r["disk_estimated"] else ""),
              *(f"{r['memory_gib'][q]:.1f}" for q in ("4bit", "8bit", "none")),
              "-" if r["videomme"] is None else f"{r['videomme']:.1f}",
              "yes" if r["cached"] else ("config" if r["config_cached"] else "no"),
              ",".join(r["quantized"]) or "-"] for r in rows]
    from vqa_cli.model.families.registry import DEFAULT_CPU_MODEL, DEFAULT_MODEL

    console.table(header, table, caption=f"* default on this machine (with CUDA {DEFAULT_MODEL}, without "
                  f"{DEFAULT_CPU_MODEL}); ~ not downloaded: the parameters at 16 bits; Video-MME: published, without "
                  "subtitles (docs/eval.md names the sources)")
    return 0


def parameters_text(n: int) -> str:
    """``893675552`` -> ``0.89B``."""
    return f"{n / 1e9:.2f}B"


def _copies(as_json: bool) -> int:
    """Every pre-quantized copy in the vqa cache, with its source and whether it is still current."""
    from vqa_cli.model.weights.copies import cache_dir, human_size, list_copies

    rows = list_copies()
    if as_json:
        console.emit_json(rows)
        return 0
    header = ["source", "quant", "dtype", "device", "size", "current", "path"]
    table = [[r["source"] or "?", r["quant"] or "?", r["dtype"] or "?", r["device"] or "?", human_size(r["disk_bytes"]),
              "yes" if r["current"] else "no", r["path"]] for r in rows]
    console.table(header, table, caption=f"in {cache_dir()}; a copy that is not current is never loaded: delete it")
    return 0


def download(
    model: Annotated[str, typer.Argument(help="Alias, hub id or local directory.", show_default=False)],
    quant: DownloadQuantOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> int:
    """Fetch a checkpoint (safetensors, configs, tokenizer) into the Hugging Face cache for offline use, and with
    --quant store a pre-quantized copy of it."""
    from vqa_cli.model.weights.hub import download as fetch

    path = fetch(model, progress=console.stderr_is_tty())
    print(path, flush=True)
    if quant in (None, "none"):
        return 0
    from vqa_cli.model import device as devices
    from vqa_cli.model.weights import copies, loader

    where = devices.resolve_device(device)
    compute = devices.resolve_dtype(dtype, where)
    with console.status(f"quantizing {model} ({quant}, {devices.dtype_name(compute)}) and writing the copy"):
        folder, written = loader.prepare_copy(path, quant, device=where, dtype=compute)
    size = (copies.manifest(folder) or {}).get("disk_bytes", 0)
    name = devices.dtype_name(compute)
    console.info(f"{'wrote' if written else 'already there:'} a pre-quantized {quant} copy ({name}, "
                 f"{copies.human_size(size)}): loads with --quant {quant} --dtype {name} read it")
    print(folder)
    return 0
