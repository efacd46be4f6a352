"""Published accuracies (percent) that docs/eval.md lists, by checkpoint and benchmark, for comparison only.

Only numbers read in the sources named in ``source`` (papers, model cards, benchmark READMEs and leaderboards); a
model not listed gets none. ``metric`` says which of the summary's figures the number is comparable with:
``accuracy`` (over questions) or ``category_mean`` (the unweighted mean over categories: MLVU's M-Avg).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal


@dataclass(frozen=True)
class Published:
    model: str  # the hub id vqa loads
    format: str
    accuracy: float  # percent
    frames: int | None  # None where the source does not say
    source: str
    metric: Literal["accuracy", "category_mean"] = "accuracy"
    subtitles: bool = False  # Video-MME's with-subtitles setting


OV_05B = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
OV_7B = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
VIDEO_7B = "llava-hf/LLaVA-Video-7B-Qwen2-hf"
VLLAVA_7B = "LanguageBind/Video-LLaVA-7B-hf"
OV_PAPER = "LLaVA-OneVision paper (arXiv 2408.03326), video benchmarks table"
VIDEO_PAPER = "LLaVA-Video paper (arXiv 2410.02713), Table 2"
SEEN = "; the model's training data includes this benchmark's training set"
FULL_TEST = " (the full test set, scored by its server)"
VIDEOMME_BOARD = "Video-MME leaderboard, as quoted in the VideoLLaMA2 paper (arXiv 2406.07476), Table 5"
QWEN3_VL = ("Qwen3-VL's published Video-MME (without subtitles) as quoted in vqa's issue 27; primary source: the "
            "Qwen3-VL model cards and technical report (arXiv 2511.21631)")

PUBLISHED: tuple[Published, ...] = (
    Published(OV_05B, "mvbench", 45.5, None, OV_PAPER, metric="category_mean"),
    Published(OV_05B, "videomme", 44.0, None, OV_PAPER),
    Published(OV_05B, "videomme", 43.5, None, OV_PAPER, subtitles=True),
    Published(OV_05B, "egoschema", 26.8, None, OV_PAPER + FULL_TEST),
    Published(OV_05B, "nextqa", 57.2, None, OV_PAPER),
    Published(OV_05B, "perceptiontest", 49.2, None, OV_PAPER),
    Published(OV_05B, "longvideobench", 45.8, None, OV_PAPER),
    Published(OV_05B, "mlvu", 50.3, None, OV_PAPER + " (M-Avg)", metric="category_mean"),
    Published(OV_7B, "mvbench", 56.7, None, OV_PAPER, metric="category_mean"),
    Published(OV_7B, "videomme", 58.2, None, OV_PAPER),
    Published(OV_7B, "videomme", 61.5, None, OV_PAPER, subtitles=True),
    Published(OV_7B, "egoschema", 60.1, None, OV_PAPER + FULL_TEST),
    Published(OV_7B, "nextqa", 79.4, None, OV_PAPER + SEEN),
    Published(OV_7B, "longvideobench", 56.4, None, OV_PAPER + " (its summary table says 56.3)"),
    Published(OV_7B, "mlvu", 64.7, None, OV_PAPER + " (M-Avg)", metric="category_mean"),
    Published(VIDEO_7B, "videomme", 63.3, 64,
              "lmms-lab/LLaVA-Video-7B-Qwen2 model card (model-index, commit ecc105e); 64 frames: " + VIDEO_PAPER),
    Published(VIDEO_7B, "videomme", 69.7, 64, "VideoLLaMA3 paper (arXiv 2501.13106), Table 8 (third party)",
              subtitles=True),
    Published(VIDEO_7B, "mvbench", 58.6, 64, VIDEO_PAPER, metric="category_mean"),
    Published(VIDEO_7B, "egoschema", 57.3, 64, VIDEO_PAPER + FULL_TEST),
    Published(VIDEO_7B, "nextqa", 83.2, 64, VIDEO_PAPER + SEEN),
    Published(VIDEO_7B, "perceptiontest", 67.9, 64, VIDEO_PAPER + SEEN),
    Published(VIDEO_7B, "longvideobench", 58.2, 64, VIDEO_PAPER),
    Published(VIDEO_7B, "mlvu", 70.8, 64, VIDEO_PAPER + " (M-Avg)", metric="category_mean"),
    Published("Qwen/Qwen3-VL-2B-Instruct", "videomme", 61.9, None, QWEN3_VL),
    Published("Qwen/Qwen3-VL-4B-Instruct", "videomme", 69.3, None, QWEN3_VL),
    Published("Qwen/Qwen3-VL-8B-Instruct", "videomme", 71.4, None, QWEN3_VL),
    Published(VLLAVA_7B, "videomme", 39.9, 8, VIDEOMME_BOARD),
    Published(VLLAVA_7B, "videomme", 41.6, 8, VIDEOMME_BOARD, subtitles=True),
    # MLVU's README names "Video-LLaVA" (linked to PKU-YuanGroup/Video-LLaVA) without a size; its M-Avg column.
    Published(VLLAVA_7B, "mlvu", 47.3, 8, "JUNJIE99/MLVU README.md, Mini-Leaderboard, M-Avg (commit 0264adb)",
              metric="category_mean"),
)


def published(model: str, fmt: str, subtitles: bool = False) -> dict | None:
    """The published figure for ``model`` (an alias, a hub id, or a local copy named after it) on ``fmt``, in the
    with-subtitles setting or without."""
    from vqa_cli.model.families.registry import resolve_alias

    name = resolve_alias(model).rstrip("/")
    for row in PUBLISHED:
        if row.format == fmt and row.subtitles == subtitles and (
                name == row.model or name.endswith("/" + row.model.split("/")[1])):
            return asdict(row)
    return None
