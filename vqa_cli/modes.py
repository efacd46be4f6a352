"""Aggregation modes: per-frame token grids in, one visual token sequence out.

The tensor maths are pure functions on ``[T, h, w, D]`` grids so each mode can be checked on
random tensors against the papers' formulas. ``plan_tokens`` computes the same layout from the
geometry alone (no tensors, no torch) for ``--plan``, RoPE scaling and the placeholder count.

- ``anyres`` (LLaVA-NeXT-Video): the checkpoint's own per-frame pooling (2x2 average at a
  24x24 grid, before the projector for LLaVA-NeXT-Video), frames concatenated.
- ``slowfast`` (SlowFast-LLaVA): after the projector. Slow pathway: ``slow_frames`` frames at
  ``linspace(0, T, slow_frames + 1)[:-1]``, each max-pooled over pairs of neighbouring tokens in
  a row (1-D max pool, kernel 2 stride 2, over the row-major tokens). Fast pathway: every frame
  adaptively average-pooled to ``fast_grid``. Slow tokens first, then fast, frame-major.
- ``pooled`` (PLLaVA): after the projector, 3-D adaptive average pooling of ``[T, h, w]`` to
  ``pool``; fewer frames than the pool's T are repeated (what adaptive pooling does).
  With ``guide`` (PPLLaVA): non-overlapping 3-D windows whose weights are the prompt relevance
  of each token, re-softmaxed inside the window at temperature 0.01.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MODES = ("anyres", "slowfast", "pooled")
DEFAULT_MODE = "anyres"

# The papers' settings at the 24x24 grid they were published on; other grids derive from them.
REFERENCE_GRID = 24
SLOWFAST_FRAMES = 50
SLOWFAST_SLOW_FRAMES = 10
SLOWFAST_FAST_GRID = 4  # at a 24x24 grid
POOLED_FRAMES = 32
POOLED_T = 16
POOLED_SIDE = 12  # at a 24x24 grid
GUIDE_KERNEL_T = 2  # PPLLaVA: windows of (2, 3, 3), stride = kernel, at a 24x24 grid ...
GUIDE_SIDE = 8  # ... i.e. 8x8 windows per frame pair; other grids keep 8x8 windows
GUIDE_TEMPERATURE = 0.01


@dataclass(frozen=True)
class Pathway:
    """One contiguous block of the visual sequence: ``frames`` frames of ``grid`` tokens each."""

    name: str
    frame_positions: tuple[int, ...]  # which sampled frames (0-based positions) feed this block
    grid: tuple[int, ...]  # token grid per frame, or (T', h', w') for a 3-D pool
    tokens: int

    def to_dict(self) -> dict:
        return {"name": self.name, "frames": list(self.frame_positions), "grid": list(self.grid),
                "tokens": self.tokens}


@dataclass(frozen=True)
class ModeSettings:
    """A mode and its parameters. ``None`` means: derive from the family's grid."""

    name: str = DEFAULT_MODE
    stride: int | None = None  # anyres: per-frame pooling stride override
    slow_frames: int | None = None  # slowfast
    fast_grid: int | None = None  # slowfast
    pool: tuple[int, int, int] | None = None  # pooled: (T, H, W)
    guide: bool = False  # pooled: PPLLaVA prompt-guided pooling instead of plain averaging
    guide_kernel: tuple[int, int, int] | None = None  # pooled + guide: 3-D window (= stride)

    def to_dict(self) -> dict:
        """The parameters that are set (unset ones and ``guide=False`` left out)."""
        return {k: v for k, v in self.__dict__.items() if v is not None and v is not False}


@dataclass(frozen=True)
class TokenPlan:
    mode: str
    frames: int
    pathways: tuple[Pathway, ...] = field(default_factory=tuple)

    @property
    def total(self) -> int:
        return sum(p.tokens for p in self.pathways)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "frames": self.frames, "visual_tokens": self.total,
                "pathways": [p.to_dict() for p in self.pathways]}


def image_plan(tokens: int) -> TokenPlan:
    """The layout of a still image through a family's AnyRes image path (its count known once encoded)."""
    return TokenPlan("anyres", 1, (Pathway("image", (0,), (tokens,), tokens),))


def default_frames(mode: str, family_default: int) -> int:
    return {"anyres": family_default, "slowfast": SLOWFAST_FRAMES, "pooled": POOLED_FRAMES}[mode]


def _scaled(value: int, grid_side: int) -> int:
    """A reference-grid parameter scaled to another grid side, at least 1."""
    return max(1, round(value * grid_side / REFERENCE_GRID))


def slow_positions(num_frames: int, slow_frames: int) -> list[int]:
    """``linspace(0, T, slow + 1)`` without the last, as integer positions (SlowFast-LLaVA)."""
    slow = min(slow_frames, num_frames)
    return [int(math.floor(i * num_frames / slow)) for i in range(slow)]


def resolve(settings: ModeSettings, grid: tuple[int, int], native_stride: int) -> ModeSettings:
    """Fill every ``None`` parameter from the family's grid so each mode keeps its meaning."""
    side = min(grid)
    if settings.name == "anyres":
        return ModeSettings("anyres", stride=settings.stride or native_stride)
    if settings.name == "slowfast":
        return ModeSettings(
            "slowfast",
            slow_frames=settings.slow_frames or SLOWFAST_SLOW_FRAMES,
            fast_grid=settings.fast_grid or _scaled(SLOWFAST_FAST_GRID, side),
        )
    if settings.name == "pooled":
        if settings.guide:
            kernel = settings.guide_kernel or (
                GUIDE_KERNEL_T, math.ceil(grid[0] / _scaled(GUIDE_SIDE, grid[0])),
                math.ceil(grid[1] / _scaled(GUIDE_SIDE, grid[1])),
            )
            return ModeSettings("pooled", guide=True, guide_kernel=tuple(kernel))
        pool = settings.pool or (POOLED_T, _scaled(POOLED_SIDE, grid[0]), _scaled(POOLED_SIDE, grid[1]))
        return ModeSettings("pooled", pool=tuple(pool))
    raise ValueError(f"unknown mode {settings.name!r}")


def plan_tokens(
    settings: ModeSettings,
    num_frames: int,
    grid: tuple[int, int],
    native_stride: int,
    *,
    native_ceil: bool = False,
    suffix_tokens: int = 0,
    frame_prefix_tokens: int = 0,
) -> TokenPlan:
    """The visual token layout of a mode, from the geometry alone.

    ``native_ceil``, ``suffix_tokens`` and ``frame_prefix_tokens`` describe the family's own
    (anyres) path: whether its pooling rounds the grid up, tokens it appends once per video, and
    tokens it puts before each frame's grid (Video-LLaVA's CLS).
    """
    s = resolve(settings, grid, native_stride)
    h, w = grid
    every = tuple(range(num_frames))
    if s.name == "anyres":
        if native_ceil:
            gh, gw = -(-h // s.stride), -(-w // s.stride)
        else:
            gh, gw = h // s.stride, w // s.stride
        blocks = [Pathway("frames", every, (gh, gw), num_frames * (frame_prefix_tokens + gh * gw))]
        if suffix_tokens:
            blocks.append(Pathway("suffix", (), (suffix_tokens,), suffix_tokens))
        return TokenPlan("anyres", num_frames, tuple(blocks))
    if s.name == "slowfast":
        slow = tuple(slow_positions(num_frames, s.slow_frames))
        sw = (w + 1) // 2
        fg = min(s.fast_grid, h), min(s.fast_grid, w)
        return TokenPlan("slowfast", num_frames, (
            Pathway("slow", slow, (h, sw), len(slow) * h * sw),
            Pathway("fast", every, fg, num_frames * fg[0] * fg[1]),
        ))
    if s.guide:
        kt, kh, kw = s.guide_kernel
        t, ph, pw = math.ceil(num_frames / kt), math.ceil(h / kh), math.ceil(w / kw)
        return TokenPlan("pooled", num_frames, (Pathway("guided", every, (t, ph, pw), t * ph * pw),))
    t, ph, pw = s.pool
    return TokenPlan("pooled", num_frames, (Pathway("pooled", every, (t, ph, pw), t * ph * pw),))


# ---- tensor maths (pure functions) ------------------------------------------------------


def spatial_avg_pool(grid: torch.Tensor, stride: int) -> torch.Tensor:
    """[T, h, w, D] -> [T, h//s, w//s, D]: non-overlapping s x s average windows."""
    import torch.nn.functional as F

    if stride == 1:
        return grid
    x = grid.permute(0, 3, 1, 2)
    return F.avg_pool2d(x, kernel_size=stride, stride=stride).permute(0, 2, 3, 1)


def slowfast(grid: torch.Tensor, slow_frames: int, fast_grid: int) -> torch.Tensor:
    """[T, h, w, D] (after the projector) -> [N, D]: slow pathway then fast pathway."""
    import torch
    import torch.nn.functional as F

    t, h, w, d = grid.shape
    slow = grid[slow_positions(t, slow_frames)]  # [S, h, w, D]
    # Max over neighbouring pairs inside each row; an odd last column stands alone (ceil).
    x = slow.permute(0, 3, 1, 2)
    slow_tokens = F.max_pool2d(x, kernel_size=(1, 2), stride=(1, 2), ceil_mode=True)
    slow_tokens = slow_tokens.permute(0, 2, 3, 1).reshape(-1, d)
    fg = (min(fast_grid, h), min(fast_grid, w))
    fast = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), fg).permute(0, 2, 3, 1).reshape(-1, d)
    return torch.cat([slow_tokens, fast], dim=0)


def pooled(grid: torch.Tensor, pool: tuple[int, int, int]) -> torch.Tensor:
    """[T, h, w, D] (after the projector) -> [t*h'*w', D] by 3-D adaptive average pooling."""
    import torch.nn.functional as F

    x = grid.permute(3, 0, 1, 2).unsqueeze(0)  # [1, D, T, h, w]
    out = F.adaptive_avg_pool3d(x, pool)[0]  # [D, t, h', w']
    return out.permute(1, 2, 3, 0).reshape(-1, grid.shape[-1])


def relevance(visual: torch.Tensor, text: torch.Tensor, logit_scale: float | torch.Tensor) -> torch.Tensor:
    """PPLLaVA relevance: [T, h, w, E] visual and [E] text embeddings (CLIP space) -> [T, h, w].

    Both are L2-normalised; the scaled cosine similarities are softmaxed over all T*h*w tokens.
    """
    import torch

    v = torch.nn.functional.normalize(visual.float(), dim=-1)
    t = torch.nn.functional.normalize(text.float(), dim=-1)
    scale = torch.as_tensor(logit_scale, dtype=torch.float32).exp()
    logits = (v @ t) * scale
    return logits.flatten().softmax(0).reshape(logits.shape)


def guided_pool(
    grid: torch.Tensor,
    weights: torch.Tensor,
    kernel: tuple[int, int, int],
    temperature: float = GUIDE_TEMPERATURE,
) -> torch.Tensor:
    """[T, h, w, D] features and [T, h, w] relevance -> [t*h'*w', D] (PPLLaVA prompt-guided pooling).

    Non-overlapping windows of ``kernel`` (stride = kernel), ceil-padded; each window's output is the
    average of its tokens weighted by ``softmax(relevance / temperature)`` inside the window. Padding
    gets zero weight. Uniform relevance gives plain average pooling; one-hot relevance picks the token.
    """
    import torch
    import torch.nn.functional as F

    t, h, w, d = grid.shape
    kt, kh, kw = kernel
    pt, ph, pw = (-t) % kt, (-h) % kh, (-w) % kw
    x = F.pad(grid.permute(3, 0, 1, 2), (0, pw, 0, ph, 0, pt))  # [D, T', H', W']
    r = F.pad(weights.float() / temperature, (0, pw, 0, ph, 0, pt), value=float("-inf"))
    T, H, W = (t + pt) // kt, (h + ph) // kh, (w + pw) // kw

    def windows(a: torch.Tensor) -> torch.Tensor:  # [..., T', H', W'] -> [..., T, H, W, kt*kh*kw]
        lead = a.shape[:-3]
        n = len(lead)
        a = a.reshape(*lead, T, kt, H, kh, W, kw)
        a = a.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3, n + 5)
        return a.reshape(*lead, T, H, W, kt * kh * kw)

    wts = torch.softmax(windows(r), dim=-1)  # [T, H, W, K]
    out = (windows(x) * wts.to(x.dtype)).sum(-1)  # [D, T, H, W]
    return out.permute(1, 2, 3, 0).reshape(-1, d)
