"""Registry of model families and known checkpoints.

A family is found from the checkpoint's ``config.json`` ``model_type``; a checkpoint alias is a
short name for a hub id. Adding a family means one adapter class here and one tiny-checkpoint
recipe in ``vqa_cli/testing/checkpoints.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vqa_cli.errors import UnsupportedModelError
from vqa_cli.model.families.base import FamilyAdapter
from vqa_cli.model.families.llava_next_video import LlavaNextVideoAdapter
from vqa_cli.model.families.llava_onevision import LlavaOnevisionAdapter
from vqa_cli.model.families.qwen_vl import QwenVLAdapter
from vqa_cli.model.families.video_llava import VideoLlavaAdapter

if TYPE_CHECKING:
    from transformers import PretrainedConfig

FAMILIES: tuple[type[FamilyAdapter], ...] = (LlavaNextVideoAdapter, VideoLlavaAdapter, LlavaOnevisionAdapter,
                                             QwenVLAdapter)


@dataclass(frozen=True)
class KnownCheckpoint:
    alias: str
    repo_id: str
    family: str
    params: str  # nominal size as the model's name gives it ("7B"); exact counts come from the config

    @property
    def nominal_parameters(self) -> int:
        """``params`` as a number: "0.5B" -> 500_000_000."""
        scale = {"M": 10**6, "B": 10**9}[self.params[-1].upper()]
        return int(float(self.params[:-1]) * scale)


CHECKPOINTS: tuple[KnownCheckpoint, ...] = (
    KnownCheckpoint("llava-next-video-7b", "llava-hf/LLaVA-NeXT-Video-7B-hf", "llava-next-video", "7B"),
    KnownCheckpoint("llava-next-video-7b-dpo", "llava-hf/LLaVA-NeXT-Video-7B-DPO-hf", "llava-next-video", "7B"),
    KnownCheckpoint("video-llava-7b", "LanguageBind/Video-LLaVA-7B-hf", "video-llava", "7B"),
    KnownCheckpoint("llava-onevision-0.5b", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-onevision", "0.5B"),
    KnownCheckpoint("llava-onevision-7b", "llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava-onevision", "7B"),
    # LLaVA-Video has OneVision's architecture; transformers loads it as ``llava_onevision``.
    KnownCheckpoint("llava-video-7b", "llava-hf/LLaVA-Video-7B-Qwen2-hf", "llava-onevision", "7B"),
    KnownCheckpoint("qwen3-vl-2b", "Qwen/Qwen3-VL-2B-Instruct", "qwen-vl", "2B"),
    KnownCheckpoint("qwen3-vl-4b", "Qwen/Qwen3-VL-4B-Instruct", "qwen-vl", "4B"),
    KnownCheckpoint("qwen3-vl-8b", "Qwen/Qwen3-VL-8B-Instruct", "qwen-vl", "8B"),
    KnownCheckpoint("qwen3-vl-30b-a3b", "Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen-vl", "30B"),
    KnownCheckpoint("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", "qwen-vl", "3B"),
    KnownCheckpoint("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", "qwen-vl", "7B"),
)

DEFAULT_MODEL = "llava-next-video-7b"  # the default with CUDA (4-bit)
# The default without: Qwen3-VL-2B in float32, an 8-frame answer within 1.1x of the 0.5B model's CPU time
# (benchmarks/cpu_default.py, docs/performance.md); the 0.5B stays the choice for a slow or small machine.
DEFAULT_CPU_MODEL = "qwen3-vl-2b"
SMALL_CPU_MODEL = "llava-onevision-0.5b"


def resolve_alias(name: str) -> str:
    """A short alias to its hub id; anything else is returned unchanged."""
    for ckpt in CHECKPOINTS:
        if name.lower() == ckpt.alias:
            return ckpt.repo_id
    return name


def family_for_model_type(model_type: str) -> type[FamilyAdapter]:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise UnsupportedModelError(f"unsupported architecture {model_type!r} (supported: {known})")


def adapter_for(config: PretrainedConfig) -> FamilyAdapter:
    return family_for_model_type(config.model_type)(config)
