"""LLaVA-NeXT-Video (``llava-hf/LLaVA-NeXT-Video-7B-hf`` and its DPO variant).

CLIP ViT-L/14 at 336 px gives a 24x24 grid per frame from the second-to-last layer with the
CLS token dropped; the checkpoint's own video path averages 2x2 windows *before* the
projector (``vision_resampler``), 144 tokens per frame. A still image takes the checkpoint's
AnyRes image path instead: tiles plus an overview, unpadded, with newline embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vqa_cli.model.families.base import FamilyAdapter, FrameFeatures, Geometry
from vqa_cli.model.pooling import spatial_avg_pool

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedModel


class LlavaNextVideoAdapter(FamilyAdapter):
    name = "llava-next-video"
    model_types = ("llava_next_video",)
    model_class = "LlavaNextVideoForConditionalGeneration"
    default_frames = 32

    def geometry(self) -> Geometry:
        return self._geometry(int(self.config.spatial_pool_stride))

    def quant_skip_modules(self) -> list[str]:
        return ["lm_head", "model.vision_tower", "model.multi_modal_projector", "model.vision_resampler"]

    def native_tokens(self, model: PreTrainedModel, frames: FrameFeatures, stride: int | None = None) -> torch.Tensor:
        stride = self.geometry().native_stride if stride is None else stride
        if self.config.spatial_pool_mode != "average":
            raise NotImplementedError(f"spatial_pool_mode={self.config.spatial_pool_mode!r}")
        pooled = spatial_avg_pool(frames.grid, stride)  # before the projector, as the checkpoint does
        return self.project(model, pooled.flatten(0, 2))

    def image_token_id(self) -> int | None:
        return int(self.config.image_token_index)

    def image_tokens(self, model: PreTrainedModel, model_dir: Path, image: np.ndarray) -> torch.Tensor:
        import torch
        from transformers import LlavaNextImageProcessorPil

        inputs = LlavaNextImageProcessorPil.from_pretrained(model_dir)(images=[image], return_tensors="pt")
        param = next(self.vision_tower(model).parameters())
        out = model.model.get_image_features(
            pixel_values=inputs["pixel_values"].to(param.device, param.dtype),
            image_sizes=inputs["image_sizes"].to(param.device),
            return_dict=True,
        )
        return torch.cat(list(out.pooler_output))
