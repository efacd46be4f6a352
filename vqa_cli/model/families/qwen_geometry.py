"""Qwen-VL video geometry: frame counts, pixel budgets, pixels, patches, prompt blocks, rope grids (pure, torch only).

The numbers follow transformers' Qwen3-VL and Qwen2-VL video processors (``Qwen3VLVideoProcessor``,
``Qwen2VLVideoProcessor``, which Qwen2.5-VL uses) and Qwen's own ``qwen-vl-utils``; no torchvision is needed:

- frames: ``frame_count`` (``--fps`` with min/max frames and the frame total, floored to the temporal patch);
- size: ``clip_size`` (Qwen3-VL: one pixel budget over frames x h x w, sides multiples of patch x merge = 32) and
  ``frame_size`` (Qwen2.5-VL: the budget per frame, multiples of 28); ``target_size`` picks by ``VideoProcessing``;
- pixels: ``resize_frames`` (bicubic with antialiasing on uint8, torchvision's own call) and ``normalize``;
- patches: ``patchify`` -> ``pixel_values_videos`` rows in the processor's order and ``video_grid_thw``;
- prompt: ``group_times`` (one time per temporal group, from the decoder's real presentation times) and
  ``expand_video`` (``<{t:.1f} seconds>`` + start + pads + end per block, replacing the template's wrapper);
- modes: ``Block`` (h x w merged tokens standing for some temporal groups, with their time), the blocks of each
  mode's pathways (Qwen2.5-VL: one untimed ``Run`` of blocks per pathway, ``pathway_runs``), ``rope_rows`` (the
  stand-in ``video_grid_thw`` rows that make the model's ``get_rope_index``
  give each block its own h x w positions) and ``visual_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

MAX_ASPECT = 200  # both processors refuse frames more elongated than this
VIDEO_TYPE_ID = 2  # mm_token_type_ids: 0 text, 1 image pad, 2 video pad


@dataclass(frozen=True)
class VideoProcessing:
    """A Qwen-VL checkpoint's video processor settings (its ``video_preprocessor_config.json``)."""

    patch: int
    merge: int
    temporal: int
    min_pixels: int  # size.shortest_edge: the least pixels (of the clip or of one frame, see clip_budget)
    max_pixels: int  # size.longest_edge: the most pixels
    clip_budget: bool  # True (Qwen3-VL): the budget covers frames x h x w; False (Qwen2.5-VL): h x w per frame
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768

    @property
    def factor(self) -> int:
        """Frame sides are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch * self.merge

    def from_dict(self, d: Mapping[str, object]) -> VideoProcessing:
        """These settings overridden by a processor config's keys (``size``, or older ``min_pixels``/``max_pixels``)."""
        size = d.get("size") if isinstance(d.get("size"), Mapping) else {}
        changes: dict[str, object] = {
            "min_pixels": d.get("min_pixels", size.get("shortest_edge", self.min_pixels)),
            "max_pixels": d.get("max_pixels", size.get("longest_edge", self.max_pixels)),
        }
        for key, name in (("patch_size", "patch"), ("merge_size", "merge"), ("temporal_patch_size", "temporal"),
                          ("rescale_factor", "rescale_factor"), ("fps", "fps"), ("min_frames", "min_frames"),
                          ("max_frames", "max_frames")):
            if d.get(key) is not None:
                changes[name] = d[key]
        for key, name in (("image_mean", "mean"), ("image_std", "std")):
            if d.get(key) is not None:
                changes[name] = tuple(float(v) for v in d[key])
        return replace(self, **changes)


# transformers' class defaults (a checkpoint's JSON overrides them: the published Qwen3-VL configs say 4096 and
# 25165824 pixels); Qwen2-VL's processor has no fps of its own, 2 is qwen-vl-utils'.
QWEN3_VL = VideoProcessing(16, 2, 2, 128 * 32 * 32, 768 * 32 * 32, True, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
QWEN2_5_VL = VideoProcessing(14, 2, 2, 128 * 28 * 28, 768 * 28 * 28, False, (0.48145466, 0.4578275, 0.40821073),
                             (0.26862954, 0.26130258, 0.27577711))


# ---- frames ---------------------------------------------------------------------------------


def frame_count(duration_s: float, total_frames: int, cfg: VideoProcessing, fps: float | None = None) -> int:
    """How many frames to sample: ``duration x fps`` within the min/max frames and the frame total, floored to a
    multiple of the temporal patch.

    The one rounding rule for both generations is qwen-vl-utils' ``smart_nframes`` (the model authors' pipeline,
    and Qwen2-VL's processor): min_frames rounded up and min(max_frames, total) down to the temporal patch, the
    count clamped between them, then floored. Every temporal group then holds distinct frames. Qwen3-VL's own
    processor differs for odd counts (5 frames -> 3 groups, the last frame doubled; here 4 frames, 2 groups).
    A clip with fewer frames than one temporal patch keeps them all (``patchify`` repeats the last).
    """
    fps = cfg.fps if fps is None else fps
    if fps <= 0 or total_frames <= 0:
        raise ValueError(f"need a positive fps and frame total (fps {fps}, {total_frames} frames)")
    tp = cfg.temporal
    least = math.ceil(cfg.min_frames / tp) * tp
    most = min(cfg.max_frames, total_frames) // tp * tp
    count = min(max(duration_s * fps, least), most)
    return int(count // tp) * tp or min(total_frames, tp)


# ---- size -----------------------------------------------------------------------------------


def _fit(height: int, width: int, count: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Sides rounded to multiples of ``factor``, then scaled (aspect kept) until count x h x w is within budget."""
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"a {width}x{height} frame is more elongated than {MAX_ASPECT}:1")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if count * h_bar * w_bar > max_pixels:
        beta = math.sqrt(count * height * width / max_pixels)
        return (max(factor, math.floor(height / beta / factor) * factor),
                max(factor, math.floor(width / beta / factor) * factor))
    if count * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (count * height * width))
        return math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def clip_size(num_frames: int, height: int, width: int, *, factor: int, temporal: int, min_pixels: int,
              max_pixels: int) -> tuple[int, int]:
    """Qwen3-VL: (h, w) for every frame of a clip, the budget over frames x h x w.

    A side under ``factor`` is first scaled up (both sides, truncated). The frame count is the padded one
    (a multiple of ``temporal``), which is the count itself for every count ``frame_count`` gives but one frame.
    """
    frames = math.ceil(num_frames / temporal) * temporal
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    return _fit(height, width, frames, factor, min_pixels, max_pixels)


def frame_size(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2.5-VL: (h, w) of each frame, the budget per frame."""
    return _fit(height, width, 1, factor, min_pixels, max_pixels)


def target_size(num_frames: int, height: int, width: int, cfg: VideoProcessing) -> tuple[int, int]:
    """The (h, w) a clip of ``num_frames`` frames of ``height`` x ``width`` is resized to."""
    if cfg.clip_budget:
        return clip_size(num_frames, height, width, factor=cfg.factor, temporal=cfg.temporal,
                         min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    return frame_size(height, width, factor=cfg.factor, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)


def clip_grid(num_frames: int, height: int, width: int, cfg: VideoProcessing) -> tuple[int, int, int]:
    """``video_grid_thw`` of such a clip: (temporal groups, patch rows, patch columns)."""
    h, w = target_size(num_frames, height, width, cfg)
    return math.ceil(num_frames / cfg.temporal), h // cfg.patch, w // cfg.patch


# ---- pixels ---------------------------------------------------------------------------------


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [T, H, W, 3] (the decoder's layout) on the CPU -> uint8 [T, 3, h, w], bicubic with antialiasing.

    This is the call torchvision makes for the processors on a CPU uint8 tensor (``resize_image``: bicubic keeps
    uint8 and goes straight to ``interpolate(..., antialias=True)``), so the pixels are the published path's.
    Pillow's BICUBIC is the same filter and differs by at most a level or two (rounding between its passes).
    """
    import torch
    import torch.nn.functional as F

    if frames.dtype != torch.uint8 or frames.device.type != "cpu" or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected CPU uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)} "
                         f"on {frames.device}")
    x = frames.permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=list(size), mode="bicubic", align_corners=False, antialias=True)


def normalize(frames: torch.Tensor, cfg: VideoProcessing) -> torch.Tensor:
    """uint8 [T, 3, h, w] -> float32, rescaled and normalised in one step as the processors fuse it:
    ``(x - mean / rescale) / (std / rescale)``."""
    import torch

    mean = torch.tensor(cfg.mean, dtype=torch.float32) * (1.0 / cfg.rescale_factor)
    std = torch.tensor(cfg.std, dtype=torch.float32) * (1.0 / cfg.rescale_factor)
    return (frames.to(torch.float32) - mean[:, None, None]) / std[:, None, None]


def preprocess(frames: torch.Tensor, cfg: VideoProcessing) -> torch.Tensor:
    """Decoded uint8 frames [T, H, W, 3] -> the float32 [T, 3, h, w] the vision tower's patches are cut from."""
    size = target_size(frames.shape[0], frames.shape[1], frames.shape[2], cfg)
    return normalize(resize_frames(frames, size), cfg)


# ---- patches --------------------------------------------------------------------------------


def patchify(frames: torch.Tensor, cfg: VideoProcessing) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Resized, normalised frames [T, C, H, W] -> (``pixel_values_videos`` [gt*gh*gw, C*temporal*patch*patch],
    ``video_grid_thw`` (gt, gh, gw)).

    Rows run over (group, merge-block row, merge-block column, row in block, column in block), so the merge x merge
    patches of one merged token are consecutive; each row is (channel, frame in group, y, x). A frame count that
    is not a multiple of the temporal patch is padded by repeating the last frame.
    """
    import torch

    p, m, tp = cfg.patch, cfg.merge, cfg.temporal
    if pad := -frames.shape[0] % tp:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    t, c, h, w = frames.shape
    if h % (p * m) or w % (p * m):
        raise ValueError(f"frame sides {h}x{w} are not multiples of {p * m}")
    gt, gh, gw = t // tp, h // p, w // p
    x = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # gt, block row, block col, row in block, col in block, c, tp, y, x
    return x.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


# ---- prompt ---------------------------------------------------------------------------------


def group_times(times: Sequence[float], temporal: int) -> list[float]:
    """One time per temporal group: the mean of its first and last frame's time (the last frame repeated to fill
    the last group). ``times`` are the sampled frames' presentation times in seconds, as the decoder gives them."""
    if not times:
        return []
    padded = list(times) + [times[-1]] * (-len(times) % temporal)
    return [(padded[i] + padded[i + temporal - 1]) / 2 for i in range(0, len(padded), temporal)]


@dataclass(frozen=True)
class Block:
    """One timestamped piece of the visual prompt: h x w merged tokens standing for some temporal groups."""

    h: int
    w: int
    time: float  # seconds, written before the block
    groups: tuple[int, ...]  # the temporal groups (0-based) it was made from

    @property
    def tokens(self) -> int:
        return self.h * self.w


@dataclass(frozen=True)
class VisionTokens:
    """The checkpoint's ids of ``<|vision_start|>``, ``<|video_pad|>`` and ``<|vision_end|>``."""

    start: int
    pad: int
    end: int


@dataclass(frozen=True)
class Run:
    """Qwen2.5-VL: one untimed run of video pads standing for a pathway's blocks (steps x h x w merged tokens, in
    block order). Its time axis is in the positions: the model spaces its steps by ``second_per_grid_ts``."""

    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        if not self.blocks or len({(b.h, b.w) for b in self.blocks}) != 1:
            raise ValueError(f"a run needs blocks of one size, got {[(b.h, b.w) for b in self.blocks]}")

    @property
    def tokens(self) -> int:
        return sum(b.tokens for b in self.blocks)

    @property
    def time(self) -> float:
        return self.blocks[0].time

    def rope_row(self, merge: int) -> tuple[int, int, int]:
        """Its ``video_grid_thw`` row: (steps, merge h, merge w)."""
        return len(self.blocks), merge * self.blocks[0].h, merge * self.blocks[0].w

    def interval(self, default: float) -> float:
        """Its ``second_per_grid_ts``: the mean real interval between consecutive steps (``default`` for one step,
        where no interval is read)."""
        steps = self.blocks
        return (steps[-1].time - steps[0].time) / (len(steps) - 1) if len(steps) > 1 else default


def time_text(seconds: float) -> str:
    """The timestamp Qwen3-VL reads before each block, with one decimal."""
    return f"<{seconds:.1f} seconds>"


def expand_video(ids: Sequence[int], blocks: Sequence[Block] | Sequence[Run], tokens: VisionTokens,
                 encode: Callable[[str], list[int]]) -> tuple[list[int], list[int]]:
    """The rendered prompt's one video placeholder expanded: (ids, mm_token_type_ids).

    The chat template writes ``<|vision_start|><|video_pad|><|vision_end|>``; the whole wrapper (or a bare pad)
    becomes, per block, ``encode(time_text(time))`` + start + pad x tokens + end. ``encode`` tokenizes text
    without special tokens; the timestamp sits between special tokens or after other text, where Qwen's
    tokenizer splits anyway. Types are 2 on pads, 0 elsewhere (timestamps and start/end are text).
    """
    where = [i for i, tok in enumerate(ids) if tok == tokens.pad]
    if len(where) != 1:
        raise ValueError(f"expected one video placeholder in the prompt, found {len(where)}")
    i = j = where[0]
    if 0 < i < len(ids) - 1 and ids[i - 1] == tokens.start and ids[i + 1] == tokens.end:
        i, j = i - 1, i + 1
    video: list[int] = []
    for block in blocks:
        video += encode(time_text(block.time)) + [tokens.start] + [tokens.pad] * block.tokens + [tokens.end]
    out = list(ids[:i]) + video + list(ids[j + 1:])
    return out, [VIDEO_TYPE_ID if tok == tokens.pad else 0 for tok in out]


# ---- modes ----------------------------------------------------------------------------------


class PathwayShape(Protocol):
    """What ``pathway_blocks`` reads of a mode's pathway (``vqa_cli.model.modes.Pathway`` has it)."""

    @property
    def frame_positions(self) -> tuple[int, ...]: ...  # temporal groups feeding the pathway
    @property
    def grid(self) -> tuple[int, ...]: ...  # (h, w) per group, or (T', h, w) for a 3-D pool


def pooled_hw(h: int, w: int, k: int) -> tuple[int, int]:
    """A merged grid pooled spatially by ``k`` (partial windows kept): (ceil(h / k), ceil(w / k))."""
    return -(-h // k), -(-w // k)


def adaptive_windows(n: int, out: int) -> list[tuple[int, ...]]:
    """The input positions of each of ``out`` adaptive-pooling windows over ``n`` (PyTorch's rule:
    ``floor(i n / out)`` to ``ceil((i + 1) n / out)``; windows repeat positions when out > n)."""
    return [tuple(range(i * n // out, -(-(i + 1) * n // out))) for i in range(out)]


def frame_blocks(groups: Sequence[int], hw: tuple[int, int], times: Sequence[float]) -> list[Block]:
    """One block of ``hw`` tokens per temporal group, at the group's time."""
    return [Block(hw[0], hw[1], times[g], (g,)) for g in groups]


def window_blocks(windows: Sequence[Sequence[int]], hw: tuple[int, int], times: Sequence[float]) -> list[Block]:
    """One block of ``hw`` tokens per window of temporal groups (a 3-D pool), at the mean of their times: the
    value the same pooling gives a grid whose every token is its group's time."""
    return [Block(hw[0], hw[1], sum(times[g] for g in win) / len(win), tuple(win)) for win in windows]


def pathway_blocks(pathways: Sequence[PathwayShape], times: Sequence[float],
                   windows: Sequence[Sequence[int]] | None = None) -> list[Block]:
    """The blocks of a mode's pathways, in prompt order: a 2-D grid gives one block per group, a 3-D grid
    (T', h, w) one block per temporal window (``adaptive_windows`` over the pathway's groups unless ``windows``,
    as positions into them, say otherwise)."""
    blocks: list[Block] = []
    for pathway in pathways:
        positions, grid = pathway.frame_positions, tuple(pathway.grid)
        if len(grid) == 2:
            blocks += frame_blocks(positions, (grid[0], grid[1]), times)
        elif len(grid) == 3:
            wins = windows if windows is not None else adaptive_windows(len(positions), grid[0])
            if len(wins) != grid[0]:
                raise ValueError(f"{len(wins)} windows for a pool of {grid[0]} steps")
            blocks += window_blocks([[positions[i] for i in win] for win in wins], (grid[1], grid[2]), times)
        else:
            raise ValueError(f"a pathway grid {grid} has no Qwen-VL block layout")
    return blocks


def pathway_runs(pathways: Sequence[PathwayShape], times: Sequence[float]) -> list[Run]:
    """Qwen2.5-VL's layout of a mode: one run per pathway (its blocks, ``pathway_blocks``), in prompt order."""
    return [Run(tuple(pathway_blocks([pathway], times))) for pathway in pathways]


def anyres_blocks(grid_thw: tuple[int, int, int], times: Sequence[float], merge: int) -> list[Block]:
    """The model's own layout: every temporal group at its merged grid (gh / merge, gw / merge)."""
    gt, gh, gw = grid_thw
    return frame_blocks(range(gt), (gh // merge, gw // merge), times)


def pooled_blocks(merged_hw: tuple[int, int], times: Sequence[float], k: int) -> list[Block]:
    """Every temporal group with its merged grid pooled spatially by ``k`` (``pooled_hw``)."""
    return frame_blocks(range(len(times)), pooled_hw(*merged_hw, k), times)


def slowfast_blocks(times: Sequence[float], slow: Sequence[int], slow_hw: tuple[int, int],
                    fast_hw: tuple[int, int]) -> list[Block]:
    """SlowFast: the ``slow`` groups at ``slow_hw`` first, then every group at the coarse ``fast_hw``."""
    return frame_blocks(slow, slow_hw, times) + frame_blocks(range(len(times)), fast_hw, times)


def rope_rows(blocks: Sequence[Block], merge: int) -> list[tuple[int, int, int]]:
    """Stand-in ``video_grid_thw`` rows, one per block: (1, merge h, merge w).

    The model's ``get_rope_index`` gives each run of video pads the next row, splits rows by their t, and reads
    only h // merge and w // merge: a block then gets T = s, H = s + row, W = s + column over its h x w tokens
    and the text after it starts at s + max(h, w), whatever pooling made the block.
    """
    return [(1, merge * b.h, merge * b.w) for b in blocks]


def visual_tokens(blocks: Sequence[Block] | Sequence[Run]) -> int:
    """The video pads in the prompt (and the visual token rows fed to the language model)."""
    return sum(b.tokens for b in blocks)
