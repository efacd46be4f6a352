"""LLaVA-NeXT-Video (``llava-hf/LLaVA-NeXT-Video-7B-hf`` and its DPO variant).

CLIP ViT-L/14 at 336 px gives a 24x24 grid per frame from the second-to-last layer with the
CLS token dropped; the checkpoint's own video path averages 2x2 windows *before* the
projector (``vision_resampler``), 144 tokens per frame.
"""

from __future__ import annotations

from typing import Any

from vqa_cli import modes
from vqa_cli.models.base import FamilyAdapter, Geometry


class LlavaNextVideoAdapter(FamilyAdapter):
    name = "llava-next-video"
    model_types = ("llava_next_video",)
    model_class = "LlavaNextVideoForConditionalGeneration"
    default_frames = 32

    def geometry(self) -> Geometry:
        v, t = self.config.vision_config, self.config.text_config
        side = v.image_size // v.patch_size
        heads = t.num_attention_heads
        return Geometry(
            image_size=v.image_size,
            grid=(side, side),
            native_stride=int(self.config.spatial_pool_stride),
            vision_hidden=v.hidden_size,
            text_hidden=t.hidden_size,
            trained_context=int(t.max_position_embeddings),
            text_layers=t.num_hidden_layers,
            kv_heads=getattr(t, "num_key_value_heads", None) or heads,
            head_dim=getattr(t, "head_dim", None) or t.hidden_size // heads,
            vocab_size=t.vocab_size,
        )

    def video_token_id(self) -> int:
        return int(self.config.video_token_index)

    def quant_skip_modules(self) -> list[str]:
        return ["lm_head", "model.vision_tower", "model.multi_modal_projector", "model.vision_resampler"]

    def encode_frames(self, model: Any, pixels):
        inner = model.model
        layer = self.config.vision_feature_layer
        out = inner.vision_tower(pixels, output_hidden_states=True, return_dict=True)
        if isinstance(layer, int):
            feats = out.hidden_states[layer]
        else:
            import torch

            feats = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        if self.config.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        h, w = self.geometry().grid
        return feats.reshape(feats.shape[0], h, w, feats.shape[-1])

    def native_tokens(self, model: Any, grid, stride: int | None = None):
        stride = self.geometry().native_stride if stride is None else stride
        if self.config.spatial_pool_mode != "average":
            raise NotImplementedError(f"spatial_pool_mode={self.config.spatial_pool_mode!r}")
        pooled = modes.spatial_avg_pool(grid, stride)  # before the projector, as the checkpoint does
        return self.project(model, pooled.flatten(0, 2))

    def image_token_id(self) -> int:
        return int(self.config.image_token_index)

    def image_tokens(self, model: Any, model_dir: Any, frame: Any):
        """A still image through the checkpoint's own AnyRes tiling (its image processor and image path):
        tiles of the best-fitting grid resolution plus an overview, unpadded, with newline tokens."""
        import torch
        from transformers import LlavaNextImageProcessorPil

        processor = LlavaNextImageProcessorPil.from_pretrained(model_dir)
        inputs = processor(images=[frame], return_tensors="pt")
        tower = self.vision_tower(model)
        weight = next(tower.parameters())
        out = model.model.get_image_features(
            inputs["pixel_values"].to(weight.device, weight.dtype), inputs["image_sizes"].to(weight.device)
        )
        return torch.cat(list(out.pooler_output), dim=0)

    def project(self, model: Any, features):
        projector = model.model.multi_modal_projector
        return projector(features.to(projector.linear_1.weight.dtype))
