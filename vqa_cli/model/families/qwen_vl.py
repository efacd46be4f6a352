"""Qwen3-VL (``Qwen/Qwen3-VL-*-Instruct``: dense ``qwen3_vl``, MoE ``qwen3_vl_moe``), through transformers' own classes.

Native dynamic resolution: every clip keeps its aspect ratio, resized so that frames x h x w fits the processor's
pixel budget (sides multiples of patch 16 x merge 2 = 32, ``qwen_geometry.clip_size``); two consecutive frames
make one temporal group, each group gives (h/32) x (w/32) merged tokens. The vision tower (``model.model.visual``)
holds the 2x2 merger (no separate projector) and DeepStack mergers whose features are added to the hidden states of
the first decoder layers at the visual positions. In the prompt each group is ``<{t:.1f} seconds>`` +
``<|vision_start|>`` + pads + ``<|vision_end|>``, ``t`` the mean presentation time of the group's first and last
frame as the decoder read them; positions are 3-D M-RoPE from the model's own ``get_rope_index``.

vqa's visual tokens for this family carry the DeepStack features with them: a [N, D x (1 + k)] tensor, the merged
token then each of the k DeepStack features on the channels (``pack``/``unpack``), so every stage that holds a
clip's tokens (feature cache included) holds all the model needs. Generation feeds them as the model's own encoder
output (``mm_encoder_outputs``) with explicit 4-row position ids (text row + T/H/W).
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from vqa_cli.errors import CheckpointError, UsageError
from vqa_cli.model.families import qwen_geometry as qg
from vqa_cli.model.families.base import FamilyAdapter, FrameFeatures, Geometry
from vqa_cli.settings import ModeSettings

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from vqa_cli.model.modes import GridGeometry, TokenPlan
    from vqa_cli.video import Clip
    from vqa_cli.video.preprocess import ProcessorConfig

NOMINAL_SIDE = 448  # the frame side budgets and plans assume before a clip's own size is known (14x14 merged tokens)
_CLASSES = {"qwen3_vl": "Qwen3VLForConditionalGeneration", "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
QWEN2_5 = "qwen2_5_vl"  # Qwen2.5-VL: a budget per frame, no timestamps in the prompt (time is in the positions)


@lru_cache(maxsize=16)
def _processor_json(path: str, mtime: float) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable video processor config ({exc})") from exc


def pack(tokens: torch.Tensor, deepstack: list[torch.Tensor]) -> torch.Tensor:
    """Merged tokens [N, D] and k DeepStack features [N, D] -> one [N, D x (1 + k)] tensor."""
    import torch

    return torch.cat([tokens, *deepstack], dim=-1)


def unpack(features: torch.Tensor, hidden: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``pack``'s inverse: (merged tokens [N, D], DeepStack features [N, D] each)."""
    parts = list(features.split(hidden, dim=-1))
    return parts[0], parts[1:]


class QwenVLAdapter(FamilyAdapter):
    name = "qwen-vl"
    model_types = ("qwen3_vl", "qwen3_vl_moe", QWEN2_5)
    video_token = "<|video_pad|>"
    default_frames = 64  # the most frames sampled (at the model's 2 fps); more only shrink each frame in the budget
    sample_fps = 2.0
    pixel_budget = True
    embeds_prompt = False

    @property
    def model_class(self) -> str:  # type: ignore[override]
        return _CLASSES[self.config.model_type]

    # ---- static facts -------------------------------------------------------------
    def geometry(self) -> Geometry:
        v, t = self.config.vision_config, self.text_config()
        side = NOMINAL_SIDE // v.patch_size
        return Geometry(image_size=NOMINAL_SIDE, grid=(side, side), native_stride=v.spatial_merge_size,
                        vision_hidden=v.hidden_size, text_hidden=t.hidden_size,
                        trained_context=int(t.max_position_embeddings), text_layers=t.num_hidden_layers,
                        kv_heads=t.num_key_value_heads, vocab_size=t.vocab_size,
                        head_dim=getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads)

    def video_token_id(self) -> int:
        return int(self.config.video_token_id)

    def vision_ids(self) -> qg.VisionTokens:
        c = self.config
        return qg.VisionTokens(int(c.vision_start_token_id), int(c.video_token_id), int(c.vision_end_token_id))

    def quant_skip_modules(self) -> list[str]:
        return ["lm_head", "model.visual"]  # the tower with its merger and DeepStack mergers

    def vision_tower(self, model: PreTrainedModel) -> torch.nn.Module:
        return model.model.visual

    def processing(self, model_dir: Path, max_pixels: int | None = None) -> qg.VideoProcessing:
        """The checkpoint's video processor settings (its ``video_preprocessor_config.json`` over transformers'
        defaults), with the patch geometry of its vision config; ``max_pixels`` (``--max-pixels``) replaces its
        pixel budget per clip."""
        v = self.config.vision_config
        cfg = replace(qg.QWEN2_5_VL if self.config.model_type == QWEN2_5 else qg.QWEN3_VL, patch=v.patch_size,
                      merge=v.spatial_merge_size, temporal=v.temporal_patch_size)
        path = Path(model_dir) / "video_preprocessor_config.json"
        if path.is_file():
            cfg = cfg.from_dict(_processor_json(str(path), path.stat().st_mtime))
        if max_pixels is not None:
            cfg = replace(cfg, max_pixels=max_pixels, min_pixels=min(cfg.min_pixels, max_pixels))
        return cfg

    def grid(self, num_frames: int, height: int, width: int, model_dir: Path, max_pixels: int | None = None
             ) -> tuple[qg.VideoProcessing, int, int, int]:
        """The processor settings and the patch grid ``(t, h, w)`` of ``num_frames`` frames of ``height`` x ``width``
        within the checkpoint's pixel budget (``max_pixels``: ``--max-pixels``)."""
        cfg = self.processing(model_dir, max_pixels)
        return (cfg, *qg.clip_grid(num_frames, height, width, cfg))

    # ---- tensors ----------------------------------------------------------------------
    def pixels(self, frames: np.ndarray, model_dir: Path, processor: ProcessorConfig, *,
               max_pixels: int | None = None) -> torch.Tensor:
        """Decoded frames [T, H, W, 3] -> [T, 3, h, w] at the clip's budgeted size, normalised (the checkpoint's
        Qwen video processor settings, not the LLaVA-style ``processor``)."""
        import torch

        return qg.preprocess(torch.from_numpy(frames), self.processing(model_dir, max_pixels))

    def encode_frames(self, model: PreTrainedModel, pixels: torch.Tensor) -> FrameFeatures:
        """Frames [T, 3, h, w] -> one grid [T/2, h/32, w/32, D x (1 + k)] per temporal group: the merged tokens (in
        LM space) with the k DeepStack features packed on the channels (``pack``), so that every mode pools them
        channel by channel, exactly as it pools the tokens."""
        import torch

        v = self.config.vision_config
        cfg = replace(qg.QWEN3_VL, patch=v.patch_size, merge=v.spatial_merge_size, temporal=v.temporal_patch_size)
        values, (gt, gh, gw) = qg.patchify(pixels, cfg)
        out = model.model.get_video_features(values, torch.tensor([[gt, gh, gw]], device=values.device),
                                             return_dict=True)
        shape = (gt, gh // cfg.merge, gw // cfg.merge, -1)
        tokens = torch.cat(list(out.pooler_output)).reshape(shape)
        deepstack = [torch.cat(list(f)).reshape(shape) for f in getattr(out, "deepstack_features", None) or []]
        return FrameFeatures(pack(tokens, deepstack))

    def native_tokens(self, model: PreTrainedModel, frames: FrameFeatures, stride: int | None = None) -> torch.Tensor:
        if stride not in (None, 1, self.geometry().native_stride):  # 1 on the merged grid (``clip_geometry``)
            raise UsageError(f"--stride is not available for {self.name} (its merger fixes 2x2)")
        return frames.grid.flatten(0, 2)

    def project(self, model: PreTrainedModel, features: torch.Tensor) -> torch.Tensor:
        """The identity: the tower's merger already projected the tokens (and DeepStack's mergers theirs)."""
        return features

    def reduction_channels(self) -> int:
        """A reduction scores the merged tokens, as vLLM's EVS and VidCom2's Qwen integration do; their DeepStack
        features go with them (``reduced_tokens``)."""
        return int(self.text_config().hidden_size)

    def reduced_tokens(self, kept: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Kept tokens (DeepStack packed with them, kept at the same places) with their indices on the channels
        (``reduction.with_index``): ``prompt_inputs`` gives each its original position."""
        from vqa_cli.model import reduction

        return reduction.with_index(kept, index)

    def clip_geometry(self, clip: Clip, model_dir: Path, mode: ModeSettings) -> GridGeometry:
        """Modes resolve on the clip's merged grid per temporal group (a "frame" is a group here)."""
        from vqa_cli.model.modes import GridGeometry

        cfg, _, gh, gw = self.grid(len(clip.frames), clip.frames.shape[1], clip.frames.shape[2], model_dir,
                                   mode.max_pixels)
        return GridGeometry((gh // cfg.merge, gw // cfg.merge), 1)

    # ---- prompt -----------------------------------------------------------------------
    def plan_blocks(self, clip: Clip, model_dir: Path, mode: ModeSettings) -> tuple[TokenPlan, list[qg.Block]]:
        """The clip's token plan in ``mode`` and its prompt blocks: the mode laid out on the clip's merged grid with
        one "frame" per temporal group, each block at its groups' real time (``qg.pathway_blocks``)."""
        temporal = self.config.vision_config.temporal_patch_size
        plan = self.sized_plan(len(clip.frames), clip.frames.shape[1], clip.frames.shape[2], model_dir, mode)
        return plan, qg.pathway_blocks(plan.pathways, qg.group_times(clip.timestamps, temporal))

    def sized_plan(self, num_frames: int, height: int, width: int, model_dir: Path, mode: ModeSettings) -> TokenPlan:
        """The token plan of ``num_frames`` frames of ``height`` x ``width`` in ``mode``: the mode laid out with one
        "frame" per temporal group on the merged grid the pixel budget gives them."""
        from vqa_cli.model import modes

        if mode.guide or mode.stride is not None:
            raise UsageError(f"{'--guide' if mode.guide else '--stride'} is not available for {self.name}")
        cfg, _, gh, gw = self.grid(num_frames, height, width, model_dir, mode.max_pixels)
        groups = -(-num_frames // cfg.temporal)
        plan = modes.plan(mode, groups, modes.GridGeometry((gh // cfg.merge, gw // cfg.merge), 1))
        return replace(plan, frames=num_frames)

    def frames_plan(self, num_frames: int, model_dir: Path, mode: ModeSettings) -> TokenPlan:
        """Before a clip is read (``--plan``, budgets, ``--fit``): its frames at the nominal size."""
        return self.sized_plan(num_frames, NOMINAL_SIDE, NOMINAL_SIDE, model_dir, mode)

    def clip_plan(self, clip: Clip, model_dir: Path, mode: ModeSettings) -> TokenPlan:
        return self.plan_blocks(clip, model_dir, mode)[0]

    def prompt_inputs(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: list[int],
                      placeholder: int, features: torch.Tensor, clip: Clip, model_dir: Path,
                      device: torch.device | str, *, mode: ModeSettings | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | dict[str, object]]:
        """(ids [1, L], the rest of ``generate``'s inputs): the template's video wrapper expanded to the timestamped
        blocks, 4-row position ids from the model's ``get_rope_index`` and the tokens as its encoder output."""
        import torch
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        if self.config.model_type == QWEN2_5:
            return self._qwen2_5_inputs(model, ids, features, clip, model_dir, device, mode or ModeSettings())
        _, blocks = self.plan_blocks(clip, model_dir, mode or ModeSettings())
        features, kept = self._kept(features, qg.visual_tokens(blocks))
        expanded, types = qg.expand_video(ids, blocks, self.vision_ids(),
                                          lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        ids_t = torch.tensor([expanded], device=device)
        types_t = torch.tensor([types], device=device)
        rows = torch.tensor(qg.rope_rows(blocks, self.config.vision_config.spatial_merge_size), device=device)
        positions, _ = model.model.get_rope_index(ids_t, types_t, video_grid_thw=rows)
        ids_t, positions = self._drop_removed(ids_t, positions, kept)
        text = torch.arange(ids_t.shape[1], device=device)[None, None]
        tokens, deepstack = unpack(features, self.text_config().hidden_size)
        dtype = model.get_input_embeddings().weight.dtype
        encoded = BaseModelOutputWithDeepstackFeatures(
            pooler_output=(tokens.to(device, dtype),), deepstack_features=[(d.to(device, dtype),) for d in deepstack])
        position_ids = torch.cat([text, positions.to(device)])
        return ids_t, {"position_ids": position_ids, "mm_encoder_outputs": {"video": encoded}}

    def _qwen2_5_inputs(self, model: PreTrainedModel, ids: list[int], features: torch.Tensor, clip: Clip,
                        model_dir: Path, device: torch.device | str, mode: ModeSettings
                        ) -> tuple[torch.Tensor, dict[str, object]]:
        """Qwen2.5-VL: no timestamps in the prompt; each of the mode's pathways is one run of pads (``qg.Run``: the
        whole video in anyres and pooled, the slow then the fast pathway in slowfast) with its own grid row
        (steps, 2h, 2w) and its time axis in the positions (``second_per_grid_ts``: the mean real interval between
        its steps, from the decoder's presentation times, where the processor would say temporal patch / fps)."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        cfg = self.processing(model_dir, mode.max_pixels)
        plan = self.sized_plan(len(clip.frames), clip.frames.shape[1], clip.frames.shape[2], model_dir, mode)
        runs = qg.pathway_runs(plan.pathways, qg.group_times(clip.timestamps, cfg.temporal))
        features, kept = self._kept(features, qg.visual_tokens(runs))
        expanded, types = qg.expand_video(ids, runs, self.vision_ids(), lambda text: [])
        ids_t = torch.tensor([expanded], device=device)
        positions, _ = model.model.get_rope_index(
            ids_t, torch.tensor([types], device=device),
            video_grid_thw=torch.tensor([run.rope_row(cfg.merge) for run in runs], device=device),
            second_per_grid_ts=torch.tensor([run.interval(cfg.temporal / cfg.fps) for run in runs], device=device))
        ids_t, positions = self._drop_removed(ids_t, positions, kept)
        text = torch.arange(ids_t.shape[1], device=device)[None, None]
        tokens = features.to(device, model.get_input_embeddings().weight.dtype)
        return ids_t, {"position_ids": torch.cat([text, positions.to(device)]),
                       "mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=(tokens,))}}

    def _kept(self, features: torch.Tensor, laid_out: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the tokens, the indices of a reduction's kept tokens among the ``laid_out`` pads, or None: all kept)."""
        from vqa_cli.model import reduction

        tokens, kept = reduction.split_index(features, self.text_config().hidden_size)
        if kept is None and tokens.shape[0] != laid_out or kept is not None and (
                kept.numel() and int(kept.max()) >= laid_out or not bool((kept[1:] > kept[:-1]).all())):
            raise ValueError(f"{tokens.shape[0]} visual tokens for a clip laid out as {laid_out}")
        return tokens, kept

    def _drop_removed(self, ids: torch.Tensor, positions: torch.Tensor, kept: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The full layout's ids [1, L] and positions [3, 1, L] without the pads a reduction removed: every kept
        token, and the text after the video, keeps the position it has in the full layout (vLLM's EVS for Qwen-VL);
        a block whose tokens were all removed keeps its timestamp and start/end tokens."""
        if kept is None:
            return ids, positions
        pads = (ids[0] == self.video_token_id()).nonzero().squeeze(1)
        keep = ids[0] != self.video_token_id()
        keep[pads[kept.to(pads.device)]] = True
        return ids[:, keep], positions[..., keep]
