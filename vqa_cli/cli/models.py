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
SpeechOpt = Annotated[bool, typer.Option(
    "--speech", help="List the speech models (faster-whisper, for vqa transcribe and --subtitles asr) instead.")]
DownloadQuantOpt = Annotated[Quant | None, typer.Option(
    "--quant", show_default=False,
    help="Also store a pre-quantized copy (4bit, 8bit) that later loads with this --quant read instead of "
         "quantizing again. Made for --device and --dtype as a run would pick them: pass the --dtype your runs use.")]


def models(as_json: JsonOpt = False, quantized: QuantizedOpt = False, speech: SpeechOpt = False,
           device: DeviceOpt = None) -> int:
    """List known checkpoints: alias, family, size, memory per quantization, whether cached (and pre-quantized)."""
    if quantized:
        return _copies(as_json)
    if speech:
        return _speech_models(as_json, device)
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


def _speech_models(as_json: bool, device: str | None) -> int:
    """Each faster-whisper size: disk, memory on the device, multilingual, cached, the default here."""
    from vqa_cli.model import speech_models
    from vqa_cli.model.speech import speech_device

    where = speech_device(device)
    rows = [speech_models.describe(name, where) for name in speech_models.SPEECH_MODELS]
    if as_json:
        console.emit_json(rows)
        return 0
    header = ["name", "repository", "disk MB", "memory MB", "languages", "cached"]
    table = [[r["name"] + (" *" if r["default"] else ""), r["repo"], str(r["disk_mb"]), str(r["memory_mb"]),
              "many" if r["multilingual"] else "English", "yes" if r["cached"] else "no"] for r in rows]
    console.table(header, table, caption=f"* default on {where} (with CUDA {speech_models.DEFAULT_CUDA}, without "
                  f"{speech_models.DEFAULT_CPU}); memory: the weights in {'float16' if where != 'cpu' else 'int8'}; "
                  "disk: the published float16 model.bin")
    return 0


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
    """Fetch a checkpoint (safetensors, configs, tokenizer) or a speech model (tiny ... large-v3, turbo: vqa models
    --speech) into the Hugging Face cache for offline use, and with --quant store a pre-quantized copy of it."""
    from vqa_cli.model import speech_models
    from vqa_cli.model.weights.hub import download as fetch

    if model in speech_models.SPEECH_MODELS:  # a faster-whisper size (vqa transcribe, --subtitles asr)
        if quant not in (None, "none"):
            from vqa_cli.errors import UsageError

            raise UsageError(f"--quant is for the vision checkpoints; {model} is a speech model (int8 on the CPU "
                             "and float16 on CUDA, chosen when it loads)")
        print(speech_models.resolve(model), flush=True)
        return 0
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
