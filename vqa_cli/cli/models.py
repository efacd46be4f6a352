"""``vqa models`` and ``vqa download``: the checkpoint catalog and getting one into the cache."""

from __future__ import annotations

from typing import Annotated

import typer

from vqa_cli import console
from vqa_cli.cli.options import JsonOpt


def models(as_json: JsonOpt = False) -> int:
    """List known checkpoints: alias, family, size, memory per quantization, whether cached."""
    from vqa_cli.catalog import list_models

    rows = list_models()
    if as_json:
        console.emit_json(rows)
        return 0
    header = ["alias", "family", "params", "disk GB", "4bit GiB", "8bit GiB", "bf16 GiB", "cached"]
    table = [[r["alias"] + (" *" if r["default"] else ""), r["family"], r["params"],
              f"{r['disk_gb']:.1f}" + ("~" if r["disk_estimated"] else ""),
              *(f"{r['memory_gib'][q]:.1f}" + ("~" if r["memory_estimated"] else "") for q in ("4bit", "8bit", "none")),
              "yes" if r["cached"] else ("config" if r["config_cached"] else "no")] for r in rows]
    console.table(header, table, caption="* default; ~ estimated from the nominal size (weights only, fp16)")
    return 0


def download(
    model: Annotated[str, typer.Argument(help="Alias or hub id.", show_default=False)],
) -> int:
    """Fetch a checkpoint (safetensors, configs, tokenizer) into the Hugging Face cache for offline use."""
    from vqa_cli.catalog import download as fetch

    path = fetch(model, progress=console.stderr_is_tty())
    print(path)
    return 0
