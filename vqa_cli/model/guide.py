"""PPLLaVA prompt guidance: how relevant each visual token is to the prompt, in CLIP space.

The guide is the CLIP model whose vision tower the checkpoint uses (for LLaVA-NeXT-Video,
``openai/clip-vit-large-patch14-336``): the checkpoint's own penultimate-layer features go
through CLIP's post-layernorm and visual projection, the prompt through CLIP's text tower and
text projection (77 tokens at most), and ``modes.relevance`` turns both into weights.
"""

from __future__ import annotations

from typing import Any

from vqa_cli.errors import UnsupportedModelError
from vqa_cli.model import loading, modes


class Guide:
    def __init__(self, name: str, *, vision_hidden: int, device: str, dtype: Any) -> None:
        from transformers import CLIPModel

        directory = loading.resolve_model_dir(name, weights=True)
        config = loading.read_config(directory)
        if config.model_type != "clip":
            raise UnsupportedModelError(f"--guide-model {name!r} is a {config.model_type!r} model, not CLIP")
        if config.vision_config.hidden_size != vision_hidden:
            raise UnsupportedModelError(
                f"--guide-model {name!r} has vision width {config.vision_config.hidden_size}, "
                f"the checkpoint's vision tower has {vision_hidden}: use the CLIP model it was built on"
            )
        model = loading.load_weights(CLIPModel, directory, dtype=dtype).to(device).eval()
        # Only the text tower, the vision post-layernorm and the projections are used.
        model.vision_model.encoder = None
        model.vision_model.embeddings = None
        self.model = model
        self.tokenizer = loading.load_tokenizer(directory)
        self.max_length = int(getattr(config.text_config, "max_position_embeddings", 77))
        self.device = device

    def relevance(self, grid: Any, prompt: str) -> Any:
        """[T, h, w, Dv] penultimate-layer features (no CLS) -> [T, h, w] relevance to ``prompt``."""
        import torch

        m = self.model
        with torch.inference_mode():
            tokens = self.tokenizer(prompt, truncation=True, max_length=self.max_length, return_tensors="pt")
            text = m.get_text_features(**tokens.to(self.device))
            text = getattr(text, "pooler_output", text)[0]
            weight = m.visual_projection.weight
            visual = m.visual_projection(m.vision_model.post_layernorm(grid.to(weight.device, weight.dtype)))
            return modes.relevance(visual, text, m.logit_scale)
