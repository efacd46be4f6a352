"""LLaVA-OneVision and LLaVA-Video (``llava-hf/llava-onevision-qwen2-*-ov-hf``,
``llava-hf/LLaVA-Video-7B-Qwen2-hf``; both are ``llava_onevision`` in transformers).

SigLIP so400m at 384 px, patch 14: a 27x27 grid per frame from ``vision_feature_layer`` (-1),
all tokens kept (``"full"``: SigLIP has no CLS). The checkpoint's own video path projects
first, then resizes each frame's grid bilinearly to ceil(27/2) = 14 -> 196 tokens, concatenates
the frames and appends the learned ``image_newline`` embedding once per video: 32 frames ->
32 * 196 + 1 = 6273 tokens. The language model is Qwen2 with 32k positions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from vqa_cli.model.families.base import FamilyAdapter, FrameFeatures, Geometry

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def bilinear_pool(grid: torch.Tensor, stride: int) -> torch.Tensor:
    """[T, h, w, D] -> [T, ceil(h/s), ceil(w/s), D] by bilinear resizing (half-pixel centres)."""
    import torch.nn.functional as F

    if stride == 1:
        return grid
    _, h, w, _ = grid.shape
    x = grid.permute(0, 3, 1, 2)
    size = (math.ceil(h / stride), math.ceil(w / stride))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


class LlavaOnevisionAdapter(FamilyAdapter):
    name = "llava-onevision"
    model_types = ("llava_onevision",)
    model_class = "LlavaOnevisionForConditionalGeneration"
    default_frames = 32  # LLaVA-OneVision's video evaluation; LLaVA-Video's model card samples 64

    def geometry(self) -> Geometry:
        return self._geometry(2, native_ceil=True, video_suffix_tokens=1)

    def quant_skip_modules(self) -> list[str]:
        return ["lm_head", "model.vision_tower", "model.multi_modal_projector"]

    def native_tokens(self, model: PreTrainedModel, frames: FrameFeatures, stride: int | None = None) -> torch.Tensor:
        import torch

        stride = self.geometry().native_stride if stride is None else stride
        pooled = bilinear_pool(self.project(model, frames.grid), stride)  # after the projector
        tokens = pooled.flatten(0, 2)
        newline = model.model.image_newline.to(tokens.device, tokens.dtype)[None]
        return torch.cat([tokens, newline])
