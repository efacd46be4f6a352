"""What every model family adapter provides.

An adapter knows one family's layout: how frames become a per-frame token grid, the family's
own (native) pooling, the projector into the language model, the video placeholder, the
modules to keep unquantized and the trained context. Everything family-specific lives in
the adapter; the pipeline, modes and prompts only talk to this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Geometry:
    """Static facts of a checkpoint, read from its config alone (no weights)."""

    image_size: int  # vision input side in pixels
    grid: tuple[int, int]  # patch grid per frame (h, w)
    native_stride: int  # the family's own per-frame pooling stride (1 = none)
    vision_hidden: int
    text_hidden: int
    trained_context: int  # positions the language model was trained with
    text_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    native_ceil: bool = False  # native pooling rounds the grid up (bilinear to ceil(h/s)) instead of down
    video_suffix_tokens: int = 0  # tokens the native path appends once per video (e.g. a newline embedding)


class FamilyAdapter:
    """Base class: one subclass per model family, registered in ``registry.py``."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.json ``model_type`` values handled
    model_class: ClassVar[str]  # transformers class name, imported lazily
    video_token: ClassVar[str] = "<video>"
    default_frames: ClassVar[int] = 32

    def __init__(self, config: Any) -> None:
        self.config = config

    # ---- static facts -------------------------------------------------------------
    def geometry(self) -> Geometry:
        raise NotImplementedError

    def video_token_id(self) -> int:
        raise NotImplementedError

    def quant_skip_modules(self) -> list[str]:
        """Module-name prefixes kept in full precision under bitsandbytes.

        ``llm_int8_skip_modules`` replaces transformers' default list and matches from the
        start of the module name, so it must name the head too.
        """
        raise NotImplementedError

    def text_config(self) -> Any:
        return self.config.text_config

    # ---- tensors ----------------------------------------------------------------------
    def encode_frames(self, model: Any, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [T, 3, H, W] -> vision features before the projector, as a grid [T, h, w, Dv]."""
        raise NotImplementedError

    def native_tokens(self, model: Any, grid: torch.Tensor, stride: int | None = None) -> torch.Tensor:
        """The checkpoint's own video path after the vision tower: grid -> [N, D] in LM space
        (per-frame pooling, projection, frames concatenated, any per-video extra tokens)."""
        raise NotImplementedError

    def image_token_id(self) -> int | None:
        """The image placeholder id when the family has a separate still-image path, else None."""
        return None

    def image_tokens(self, model: Any, model_dir: Any, frame: Any) -> torch.Tensor:
        """A still image [H, W, 3] through the family's own image path -> [N, D] (when it has one)."""
        raise NotImplementedError

    def vision_tower(self, model: Any) -> Any:
        """The module that encodes frames (its parameters' dtype and device take the pixels)."""
        return model.model.vision_tower

    def project(self, model: Any, features: torch.Tensor) -> torch.Tensor:
        """Vision features [..., Dv] -> language-model embeddings [..., D]."""
        raise NotImplementedError
