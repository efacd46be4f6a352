"""PPLLaVA prompt guidance: how relevant each visual token is to the prompt, in CLIP space.

The guide is the CLIP model whose vision tower the checkpoint uses (for LLaVA-NeXT-Video,
``openai/clip-vit-large-patch14-336``): the checkpoint's own penultimate-layer features go
through CLIP's post-layernorm and visual projection, the prompt through CLIP's text tower and
text projection (77 tokens at most), and ``pooling.relevance`` turns both into weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vqa_cli.errors import UnsupportedModelError
from vqa_cli.model import loading, pooling
from vqa_cli.model.weights import files, hub

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel, PreTrainedTokenizerBase


@dataclass
class Guide:
    """The loaded CLIP guide model (``load_guide``): its text tower, post-layernorm and projections."""

    model: CLIPModel
    tokenizer: PreTrainedTokenizerBase
    max_length: int  # the text tower's positions (77 for CLIP)
    device: str

    def relevance(self, grid: torch.Tensor, prompt: str) -> torch.Tensor:
        """[T, h, w, Dv] penultimate-layer features (no CLS) -> [T, h, w] relevance to ``prompt``."""
        import torch

        m = self.model
        with torch.inference_mode():
            tokens = self.tokenizer(prompt, truncation=True, max_length=self.max_length, return_tensors="pt")
            text = m.get_text_features(**tokens.to(self.device))
            text = getattr(text, "pooler_output", text)[0]
            weight = m.visual_projection.weight
            visual = m.visual_projection(m.vision_model.post_layernorm(grid.to(weight.device, weight.dtype)))
            return pooling.relevance(visual, text, m.logit_scale)


def load_guide(name: str, *, vision_hidden: int, device: str, dtype: torch.dtype) -> Guide:
    """The CLIP model ``name`` (``--guide-model``) on ``device``, checked to be CLIP with the vision width of the
    checkpoint's vision tower (``vision_hidden``); only what ``relevance`` uses is kept."""
    from transformers import CLIPModel

    directory = hub.resolve_model_dir(name, weights=True)
    config = loading.read_config(directory)
    if config.model_type != "clip":
        raise UnsupportedModelError(f"--guide-model {name!r} is a {config.model_type!r} model, not CLIP")
    if config.vision_config.hidden_size != vision_hidden:
        raise UnsupportedModelError(
            f"--guide-model {name!r} has vision width {config.vision_config.hidden_size}, "
            f"the checkpoint's vision tower has {vision_hidden}: use the CLIP model it was built on"
        )
    model = files.load_weights(CLIPModel, directory, dtype=dtype).to(device).eval()
    # Only the text tower, the vision post-layernorm and the projections are used.
    model.vision_model.encoder = None
    model.vision_model.embeddings = None
    tokenizer = loading.load_tokenizer(directory)
    return Guide(model, tokenizer, int(getattr(config.text_config, "max_position_embeddings", 77)), device)
