"""What every model family adapter provides.

An adapter knows one family's layout: how frames become a per-frame token grid, the family's
own (native) pooling, the projector into the language model, the video placeholder, the
modules to keep unquantized and the trained context. Everything family-specific lives in
the adapter; the pipeline, modes and prompts only talk to this interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from vqa_cli.model.modes import GridGeometry, TokenPlan
    from vqa_cli.settings import ModeSettings
    from vqa_cli.video import Clip
    from vqa_cli.video.preprocess import ProcessorConfig


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
    frame_prefix_tokens: int = 0  # tokens the native path puts before each frame's grid (e.g. the CLS token)


@dataclass
class FrameFeatures:
    """Vision features of T frames before the projector.

    ``grid`` holds the patch tokens, the input of every mode. ``prefix`` holds per-frame tokens
    that only the family's own path uses, in front of each frame's grid (Video-LLaVA's CLS).
    """

    grid: torch.Tensor  # [T, h, w, Dv]
    prefix: torch.Tensor | None = None  # [T, k, Dv]

    def __len__(self) -> int:
        return int(self.grid.shape[0])

    def slice(self, start: int, stop: int) -> FrameFeatures:
        """Frames ``start:stop`` (one clip out of a batch encoded together)."""
        return FrameFeatures(self.grid[start:stop], None if self.prefix is None else self.prefix[start:stop])

    @classmethod
    def cat(cls, parts: Sequence[FrameFeatures]) -> FrameFeatures:
        """Frames encoded in chunks, joined in order."""
        import torch

        grid = torch.cat([p.grid for p in parts])
        prefixes = [p.prefix for p in parts if p.prefix is not None]
        if prefixes and len(prefixes) != len(parts):
            raise ValueError("some chunks carry prefix tokens and some do not")
        return cls(grid, torch.cat(prefixes) if prefixes else None)


def layer_features(tower: torch.nn.Module, pixels: torch.Tensor, layer: int | Sequence[int]) -> torch.Tensor:
    """Hidden states [T, L, Dv] of ``layer`` (or of several layers, concatenated on the channels).

    Asks the tower for those layers only, as the models' own ``get_*_features`` do.
    """
    import torch

    selection = layer if isinstance(layer, int) else list(layer)
    out = tower(pixels, output_hidden_states=selection, return_dict=True)
    if isinstance(layer, int):
        return out.hidden_states[layer]
    return torch.cat([out.hidden_states[i] for i in layer], dim=-1)


class FamilyAdapter:
    """Base class: one subclass per model family, registered in ``registry.py``."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.json ``model_type`` values handled
    model_class: ClassVar[str]  # transformers class name, imported lazily
    video_token: ClassVar[str] = "<video>"
    default_frames: ClassVar[int] = 32
    sample_fps: ClassVar[float | None] = None  # the family's own sampling rate (frames per second), capped by frames
    modes: ClassVar[tuple[str, ...]] = ("anyres", "slowfast", "pooled")  # the modes it answers in
    pixel_budget: ClassVar[bool] = False  # its frames' size comes from a pixel budget per clip (--max-pixels)
    # The language model takes input embeddings with the visual tokens in place, so prompts left-pad into one batch
    # and a chat's prefix caches as embeddings; False: ``prompt_inputs`` feeds ids and the family's own inputs.
    embeds_prompt: ClassVar[bool] = True

    def __init__(self, config: PretrainedConfig) -> None:
        self.config = config

    # ---- static facts -------------------------------------------------------------
    def geometry(self) -> Geometry:
        raise NotImplementedError

    def video_token_id(self) -> int:
        return int(self.config.video_token_index)

    def image_token_id(self) -> int | None:
        """The image placeholder when the family has its own still-image path (``image_tokens``), else None:
        stills then go through the video path as one frame."""
        return None

    def quant_skip_modules(self) -> list[str]:
        """Module-name prefixes kept in full precision under bitsandbytes.

        ``llm_int8_skip_modules`` replaces transformers' default list and matches from the
        start of the module name, so it must name the head too.
        """
        raise NotImplementedError

    def text_config(self) -> PretrainedConfig:
        return self.config.text_config

    def _geometry(self, native_stride: int, **native: int | bool) -> Geometry:
        """The geometry of a ViT + decoder checkpoint (``vision_config``/``text_config``); ``native``
        holds the family's extra native-path facts (``native_ceil``, ``video_suffix_tokens``, ...)."""
        v, t = self.config.vision_config, self.text_config()
        side = v.image_size // v.patch_size
        heads = t.num_attention_heads
        return Geometry(
            image_size=v.image_size,
            grid=(side, side),
            native_stride=native_stride,
            vision_hidden=v.hidden_size,
            text_hidden=t.hidden_size,
            trained_context=int(t.max_position_embeddings),
            text_layers=t.num_hidden_layers,
            kv_heads=getattr(t, "num_key_value_heads", None) or heads,
            head_dim=getattr(t, "head_dim", None) or t.hidden_size // heads,
            vocab_size=t.vocab_size,
            **native,
        )

    def clip_plan(self, clip: Clip, model_dir: Path, mode: ModeSettings) -> TokenPlan | None:
        """The token layout of this clip in ``mode`` when it depends on the clip (a dynamic resolution, within
        ``mode.max_pixels``: ``--max-pixels``), else None: the mode's plan from the static geometry holds."""
        return None

    def frames_plan(self, num_frames: int, model_dir: Path, mode: ModeSettings) -> TokenPlan | None:
        """The token layout of ``num_frames`` frames in ``mode`` before any clip is read (``--plan``, budgets,
        ``--fit``) when the family's is not the mode's plan on the static geometry (a pixel budget per clip: at a
        nominal frame size), else None."""
        return None

    def clip_geometry(self, clip: Clip, model_dir: Path, mode: ModeSettings) -> GridGeometry | None:
        """The grid the modes resolve their parameters on for this clip when it is the clip's own (a dynamic
        resolution), else None: the static ``geometry()``."""
        return None

    # ---- tensors ----------------------------------------------------------------------
    def pixels(self, frames: np.ndarray, model_dir: Path, processor: ProcessorConfig, *,
               max_pixels: int | None = None) -> torch.Tensor:
        """Decoded frames [T, H, W, 3] uint8 -> the vision input [T, 3, h, w] float32 (the checkpoint's processor
        config, ``processor``, read by ``video.preprocess``). ``max_pixels`` (``--max-pixels``) is for families with
        a native resolution."""
        import torch

        from vqa_cli.video.preprocess import preprocess_frames

        return torch.from_numpy(preprocess_frames(frames, processor))

    def encode_frames(self, model: PreTrainedModel, pixels: torch.Tensor) -> FrameFeatures:
        """Pixels [T, 3, H, W] -> vision features before the projector (grid [T, h, w, Dv]).

        The LLaVA default: the configured layer(s), the CLS token dropped under the "default" strategy.
        """
        feats = layer_features(self.vision_tower(model), pixels, self.config.vision_feature_layer)
        if self.config.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        return FrameFeatures(self.to_grid(feats))

    def native_tokens(self, model: PreTrainedModel, frames: FrameFeatures, stride: int | None = None) -> torch.Tensor:
        """The checkpoint's own video path after the vision tower: features -> [N, D] in LM space
        (per-frame pooling, projection, frames concatenated, any per-frame or per-video extra tokens)."""
        raise NotImplementedError

    def reduction_channels(self) -> int | None:
        """The leading channels of the visual tokens a reduction scores (``--reduce``), where the family packs more
        than the tokens on them; None: all (LLaVA's tokens are just the tokens)."""
        return None

    def reduced_tokens(self, kept: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """A reduction's kept visual tokens [M, D] (``--reduce``: ``model.reduction``) and their indices [M] in the
        unreduced sequence -> what the family's ``prompt_inputs`` take. LLaVA's layout needs no more than the
        tokens in order (its layout tokens were kept in place); a family with positions per patch keeps the indices.
        """
        return kept

    def image_tokens(self, model: PreTrainedModel, model_dir: Path, image: np.ndarray) -> torch.Tensor:
        """One RGB still [H, W, 3] -> [N, D] through the checkpoint's own image path (``image_token_id``)."""
        raise NotImplementedError(f"{self.name} has no still-image path")

    def prompt_inputs(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: list[int],
                      placeholder: int, features: torch.Tensor, clip: Clip, model_dir: Path,
                      device: torch.device | str, *, mode: ModeSettings | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | dict[str, object]]:
        """A rendered prompt's ids with ``placeholder`` once -> (ids [1, L] with the placeholder expanded to the N
        visual tokens ``features`` [N, D], what ``generate`` feeds besides them): the LLaVA way, the embeddings
        [1, L, D] with the tokens scattered in (``prompt.embed``). ``mode``: the request's mode settings."""
        import torch

        from vqa_cli.model import prompt

        ids_t = torch.tensor([prompt.expand_placeholder(ids, placeholder, features.shape[0])], device=device)
        with torch.inference_mode():
            return ids_t, prompt.embed(model, ids_t, features, placeholder)

    def vision_tower(self, model: PreTrainedModel) -> torch.nn.Module:
        """The module that encodes frames (its parameters' dtype and device take the pixels)."""
        return model.model.vision_tower

    def project(self, model: PreTrainedModel, features: torch.Tensor) -> torch.Tensor:
        """Vision features [..., Dv] -> language-model embeddings [..., D] (the LLaVA two-layer MLP)."""
        projector = model.model.multi_modal_projector
        return projector(features.to(projector.linear_1.weight.dtype))

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens [T, h*w, Dv] in row-major order -> [T, h, w, Dv]."""
        h, w = self.geometry().grid
        return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])
