"""Video-LLaVA (``LanguageBind/Video-LLaVA-7B-hf``).

A separate video tower (LanguageBind's, a CLIP ViT-L/14 at 224 px in the transformers port)
encodes each frame to a 16x16 grid. The checkpoint's video path takes the hidden states of
``vision_feature_layer`` (-2) and keeps the CLS token whatever ``vision_feature_select_strategy``
says (that setting applies to images only): 1 + 256 = 257 tokens per frame, no pooling, frames
concatenated (8 frames -> 2056). Preprocessing is plain CLIP (shortest edge 224, centre crop),
as the transformers processors do; the original repository also flips frames horizontally at
random, even at inference, which vqa never does (answers stay deterministic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vqa_cli.model.families.base import FamilyAdapter, FrameFeatures, Geometry, layer_features
from vqa_cli.model.pooling import spatial_avg_pool

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


class VideoLlavaAdapter(FamilyAdapter):
    name = "video-llava"
    model_types = ("video_llava",)
    model_class = "VideoLlavaForConditionalGeneration"
    default_frames = 8

    def geometry(self) -> Geometry:
        return self._geometry(1, frame_prefix_tokens=1)

    def quant_skip_modules(self) -> list[str]:
        return ["lm_head", "model.video_tower", "model.image_tower", "model.multi_modal_projector"]

    def vision_tower(self, model: PreTrainedModel) -> torch.nn.Module:
        return model.model.video_tower

    def encode_frames(self, model: PreTrainedModel, pixels: torch.Tensor) -> FrameFeatures:
        feats = layer_features(self.vision_tower(model), pixels, self.config.vision_feature_layer)
        return FrameFeatures(self.to_grid(feats[:, 1:]), prefix=feats[:, :1])

    def native_tokens(self, model: PreTrainedModel, frames: FrameFeatures, stride: int | None = None) -> torch.Tensor:
        import torch

        stride = self.geometry().native_stride if stride is None else stride
        grid = spatial_avg_pool(frames.grid, stride)  # identity at the native stride 1
        per_frame = torch.cat([frames.prefix, grid.flatten(1, 2)], dim=1)  # [T, 1 + h*w, Dv]: CLS first
        return self.project(model, per_frame).flatten(0, 1)
