"""Aggregation modes: per-frame token grids in, one visual token sequence out.

Each mode is one ``Mode`` object, registered in ``REGISTRY`` and found by name with ``mode_for``
(as model families are found in ``vqa_cli/model/families/registry.py``). A mode resolves its parameters
from the family's grid, plans its token layout from the geometry alone (no tensors, no torch:
``plan`` is what ``--plan``, RoPE scaling and the placeholder count use) and applies itself to a
clip's frame features. The tensor maths are pure functions on ``[T, h, w, D]`` grids
(``vqa_cli/model/pooling.py``) so each mode can be checked on random tensors against the papers' formulas.

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

Adding a mode: a ``Mode`` subclass (a ``ProjectedMode`` when it works after the projector), its
name in ``vqa_cli.settings.ModeName`` and an instance in ``REGISTRY``; see docs/modes.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, Protocol

from vqa_cli.errors import UsageError
from vqa_cli.model.pooling import guided_pool, pooled, slow_positions, slowfast
from vqa_cli.settings import MODE_NAMES, ModeName, ModeSettings

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from vqa_cli.model.families.base import FamilyAdapter, FrameFeatures

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


@dataclass(frozen=True)
class Pathway:
    """One contiguous block of the visual sequence: ``frames`` frames of ``grid`` tokens each."""

    name: str
    frame_positions: tuple[int, ...]  # which sampled frames (0-based positions) feed this block
    grid: tuple[int, ...]  # token grid per frame, or (T', h', w') for a 3-D pool
    tokens: int
    before: int | None = None  # the tokens before a reduction (``--reduce``: model/reduction.py); None: not reduced

    def to_dict(self) -> dict:
        reduced = {} if self.before is None else {"tokens_before": self.before}
        return {"name": self.name, "frames": list(self.frame_positions), "grid": list(self.grid),
                "tokens": self.tokens, **reduced}


@dataclass(frozen=True)
class TokenPlan:
    mode: ModeName
    frames: int
    pathways: tuple[Pathway, ...] = field(default_factory=tuple)
    reduce: str | None = None  # the reduction method its pathways went through (``--reduce``), None: none
    keep: float | None = None  # and the ratio it kept (``--keep``, or the one ``--max-visual-tokens`` chose)

    @property
    def total(self) -> int:
        return sum(p.tokens for p in self.pathways)

    @property
    def before(self) -> int:
        """The visual tokens before any reduction."""
        return sum(p.tokens if p.before is None else p.before for p in self.pathways)

    def to_dict(self) -> dict:
        reduced = {} if self.reduce is None else {"reduce": self.reduce, "keep": self.keep,
                                                  "visual_tokens_before": self.before}
        return {"mode": self.mode, "frames": self.frames, "visual_tokens": self.total, **reduced,
                "pathways": [p.to_dict() for p in self.pathways]}


class ModeGeometry(Protocol):
    """What a mode reads of a family's geometry: a ``vqa_cli.model.families.base.Geometry`` has all of it."""

    @property
    def grid(self) -> tuple[int, int]: ...  # patch grid per frame (h, w)
    @property
    def native_stride(self) -> int: ...  # the family's own per-frame pooling stride
    @property
    def native_ceil(self) -> bool: ...  # its pooling rounds the grid up
    @property
    def video_suffix_tokens(self) -> int: ...  # tokens its own path appends once per video
    @property
    def frame_prefix_tokens(self) -> int: ...  # tokens its own path puts before each frame's grid


class PromptGuide(Protocol):
    """What a mode reads of a prompt guide: a ``vqa_cli.model.guide.Guide`` has it."""

    def relevance(self, grid: torch.Tensor, prompt: str) -> torch.Tensor: ...  # [T, h, w, Dv] -> [T, h, w]


@dataclass(frozen=True)
class GridGeometry:
    """A ``ModeGeometry`` on its own, without a checkpoint (the module-level wrappers, ``REFERENCE_GEOMETRY``)."""

    grid: tuple[int, int]
    native_stride: int
    native_ceil: bool = False
    video_suffix_tokens: int = 0
    frame_prefix_tokens: int = 0


# The papers' 24x24 grid with LLaVA-NeXT-Video's 2x2 pooling: which frames feed which pathway does not depend
# on the grid, so this stands in for the model's geometry where only the frame selection matters.
REFERENCE_GEOMETRY = GridGeometry((REFERENCE_GRID, REFERENCE_GRID), 2)


def _scaled(value: int, grid_side: int) -> int:
    """A reference-grid parameter scaled to another grid side, at least 1."""
    return max(1, round(value * grid_side / REFERENCE_GRID))


# ---- the modes ----------------------------------------------------------------------------


class Mode:
    """Base class: one subclass per mode, one instance of each in ``REGISTRY``.

    ``resolve`` fills the settings' unset parameters; ``layout`` and ``apply`` take resolved settings.
    """

    name: ClassVar[ModeName]

    def default_frames(self, family_default: int) -> int:
        """Frames sampled when the request does not say."""
        raise NotImplementedError

    def resolve(self, settings: ModeSettings, geometry: ModeGeometry) -> ModeSettings:
        """Every ``None`` parameter filled from the family's grid, so the mode keeps its meaning there."""
        raise NotImplementedError

    def layout(self, settings: ModeSettings, num_frames: int, geometry: ModeGeometry) -> tuple[Pathway, ...]:
        """The token blocks ``apply`` produces for ``num_frames`` frames, from the geometry alone."""
        raise NotImplementedError

    def apply(self, settings: ModeSettings, frames: FrameFeatures, *, adapter: FamilyAdapter, model: PreTrainedModel,
              guide: PromptGuide | None = None, prompt_text: str = "") -> torch.Tensor:
        """A clip's ``FrameFeatures`` (vision tower output) -> its visual token sequence [N, D] in LM space.

        ``adapter`` is the family's ``FamilyAdapter`` and ``model`` the loaded weights; ``guide`` (a
        ``vqa_cli.model.guide.Guide``) and ``prompt_text`` serve modes that weigh tokens by the prompt."""
        raise NotImplementedError

    def plan(self, settings: ModeSettings, num_frames: int, geometry: ModeGeometry) -> TokenPlan:
        """The layout of ``num_frames`` frames, reduced as ``settings`` say (``reduction.reduced_plan``)."""
        from vqa_cli.model.reduction import reduced_plan

        layout = self.layout(self.resolve(settings, geometry), num_frames, geometry)
        return reduced_plan(TokenPlan(self.name, num_frames, layout), settings)


class AnyRes(Mode):
    """The checkpoint's own video path (``adapter.native_tokens``), optionally at another pooling stride."""

    name = "anyres"

    def default_frames(self, family_default: int) -> int:
        return family_default

    def resolve(self, settings: ModeSettings, geometry: ModeGeometry) -> ModeSettings:
        return ModeSettings("anyres", stride=settings.stride or geometry.native_stride, max_pixels=settings.max_pixels)

    def layout(self, settings: ModeSettings, num_frames: int, geometry: ModeGeometry) -> tuple[Pathway, ...]:
        (h, w), s = geometry.grid, settings.stride
        gh, gw = (-(-h // s), -(-w // s)) if geometry.native_ceil else (h // s, w // s)
        per_frame = geometry.frame_prefix_tokens + gh * gw
        blocks = [Pathway("frames", tuple(range(num_frames)), (gh, gw), num_frames * per_frame)]
        if geometry.video_suffix_tokens:
            n = geometry.video_suffix_tokens
            blocks.append(Pathway("suffix", (), (n,), n))
        return tuple(blocks)

    def apply(self, settings: ModeSettings, frames: FrameFeatures, *, adapter: FamilyAdapter, model: PreTrainedModel,
              guide: PromptGuide | None = None, prompt_text: str = "") -> torch.Tensor:
        return adapter.native_tokens(model, frames, settings.stride)


class ProjectedMode(Mode):
    """A mode that pools the projected patch grid: every frame through the projector first, then ``pool``."""

    def apply(self, settings: ModeSettings, frames: FrameFeatures, *, adapter: FamilyAdapter, model: PreTrainedModel,
              guide: PromptGuide | None = None, prompt_text: str = "") -> torch.Tensor:
        projected = adapter.project(model, frames.grid)  # [T, h, w, D]
        return self.pool(settings, projected, frames.grid, guide, prompt_text)

    def pool(self, settings: ModeSettings, projected: torch.Tensor, grid: torch.Tensor, guide: PromptGuide | None,
             prompt_text: str) -> torch.Tensor:
        """Projected grid [T, h, w, D] (and the tower's grid [T, h, w, Dv] it came from) -> [N, D]."""
        raise NotImplementedError


class SlowFast(ProjectedMode):
    """SlowFast-LLaVA: slow frames at fine detail, then every frame coarsely."""

    name = "slowfast"

    def default_frames(self, family_default: int) -> int:
        return SLOWFAST_FRAMES

    def resolve(self, settings: ModeSettings, geometry: ModeGeometry) -> ModeSettings:
        return ModeSettings(
            "slowfast",
            slow_frames=settings.slow_frames or SLOWFAST_SLOW_FRAMES,
            fast_grid=settings.fast_grid or _scaled(SLOWFAST_FAST_GRID, min(geometry.grid)),
        )

    def layout(self, settings: ModeSettings, num_frames: int, geometry: ModeGeometry) -> tuple[Pathway, ...]:
        h, w = geometry.grid
        slow = tuple(slow_positions(num_frames, settings.slow_frames))
        sw = (w + 1) // 2
        fg = min(settings.fast_grid, h), min(settings.fast_grid, w)
        return (
            Pathway("slow", slow, (h, sw), len(slow) * h * sw),
            Pathway("fast", tuple(range(num_frames)), fg, num_frames * fg[0] * fg[1]),
        )

    def pool(self, settings: ModeSettings, projected: torch.Tensor, grid: torch.Tensor, guide: PromptGuide | None,
             prompt_text: str) -> torch.Tensor:
        return slowfast(projected, settings.slow_frames, settings.fast_grid)


class Pooled(ProjectedMode):
    """PLLaVA's 3-D adaptive average or, with ``guide``, PPLLaVA's prompt-guided windows."""

    name = "pooled"

    def default_frames(self, family_default: int) -> int:
        return POOLED_FRAMES

    def resolve(self, settings: ModeSettings, geometry: ModeGeometry) -> ModeSettings:
        h, w = geometry.grid
        if settings.guide:
            kernel = settings.guide_kernel or (
                GUIDE_KERNEL_T, math.ceil(h / _scaled(GUIDE_SIDE, h)), math.ceil(w / _scaled(GUIDE_SIDE, w)),
            )
            return ModeSettings("pooled", guide=True, guide_kernel=tuple(kernel))
        pool = settings.pool or (POOLED_T, _scaled(POOLED_SIDE, h), _scaled(POOLED_SIDE, w))
        return ModeSettings("pooled", pool=tuple(pool))

    def layout(self, settings: ModeSettings, num_frames: int, geometry: ModeGeometry) -> tuple[Pathway, ...]:
        h, w = geometry.grid
        if settings.guide:
            kt, kh, kw = settings.guide_kernel
            name, out = "guided", (math.ceil(num_frames / kt), math.ceil(h / kh), math.ceil(w / kw))
        else:
            name, out = "pooled", tuple(settings.pool)
        return (Pathway(name, tuple(range(num_frames)), out, math.prod(out)),)

    def pool(self, settings: ModeSettings, projected: torch.Tensor, grid: torch.Tensor, guide: PromptGuide | None,
             prompt_text: str) -> torch.Tensor:
        if settings.guide:
            if guide is None:
                raise UsageError("prompt-guided pooling needs an engine loaded with --guide")
            weights = guide.relevance(grid, prompt_text)
            return guided_pool(projected, weights.to(projected.device), settings.guide_kernel)
        return pooled(projected, settings.pool)


REGISTRY: tuple[Mode, ...] = (AnyRes(), SlowFast(), Pooled())


def resolved(settings: ModeSettings, geometry: ModeGeometry) -> ModeSettings:
    """``settings``' mode resolved on ``geometry``, with the reduction it is followed by (``reduce``, ``keep``,
    ``max_visual_tokens``: not the mode's own parameters, so ``Mode.resolve`` leaves them out)."""
    out = mode_for(settings.name).resolve(settings, geometry)
    return replace(out, reduce=settings.reduce, keep=settings.keep, max_visual_tokens=settings.max_visual_tokens)


def mode_for(name: str) -> Mode:
    """The registered mode called ``name``; any other name is refused."""
    for mode in REGISTRY:
        if mode.name == name:
            return mode
    raise UsageError(f"unknown mode {name!r} (known: {', '.join(MODE_NAMES)})")


def plan(settings: ModeSettings, num_frames: int, geometry: ModeGeometry) -> TokenPlan:
    """The visual token layout of ``settings``' mode for ``num_frames`` frames of a family's ``geometry``."""
    return mode_for(settings.name).plan(settings, num_frames, geometry)


def image_plan(tokens: int) -> TokenPlan:
    """The layout of a still image through a family's AnyRes image path (its count known once encoded)."""
    return TokenPlan("anyres", 1, (Pathway("image", (0,), (tokens,), tokens),))


# ---- the former module-level API, kept for callers not yet on the registry -----------------


def default_frames(mode: str, family_default: int) -> int:
    return mode_for(mode).default_frames(family_default)


def resolve(settings: ModeSettings, grid: tuple[int, int], native_stride: int) -> ModeSettings:
    """``mode_for(settings.name).resolve`` at a bare grid and native stride."""
    return mode_for(settings.name).resolve(settings, GridGeometry(grid, native_stride))


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
    """``plan`` with the geometry spelled out: ``native_ceil``, ``suffix_tokens`` and ``frame_prefix_tokens``
    describe the family's own (anyres) path (see ``ModeGeometry``)."""
    return plan(settings, num_frames, GridGeometry(grid, native_stride, native_ceil, suffix_tokens,
                                                   frame_prefix_tokens))
