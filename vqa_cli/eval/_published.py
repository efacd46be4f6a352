"""Published accuracies (percent) that docs/eval.md lists, by checkpoint and benchmark, for comparison only.

Only numbers read in the sources named in ``source`` (model cards, benchmark READMEs); a model not listed gets
none.
"""

from __future__ import annotations

# (hub id, format) -> (accuracy %, frames or None where the source does not say, source)
PUBLISHED: dict[tuple[str, str], tuple[float, int | None, str]] = {
    ("llava-hf/LLaVA-Video-7B-Qwen2-hf", "videomme"): (
        63.3, None, "lmms-lab/LLaVA-Video-7B-Qwen2 model card (model-index, commit ecc105e)"),
    # MLVU's README names "Video-LLaVA" (linked to PKU-YuanGroup/Video-LLaVA) without a size; its M-Avg column.
    ("LanguageBind/Video-LLaVA-7B-hf", "mlvu"): (
        47.3, 8, "JUNJIE99/MLVU README.md, Mini-Leaderboard, M-Avg (commit 0264adb)"),
}


def published(model: str, fmt: str) -> dict | None:
    """The published figure for ``model`` (an alias, a hub id, or a local copy named after it) on ``fmt``."""
    from vqa_cli.models.registry import resolve_alias

    name = resolve_alias(model)
    for (hub_id, f), (acc, frames, source) in PUBLISHED.items():
        if f == fmt and (name == hub_id or name.rstrip("/").endswith("/" + hub_id.split("/")[1])):
            return {"accuracy": acc, "frames": frames, "source": source, "model": hub_id}
    return None
