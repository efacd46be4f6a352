"""Where a reduction (``--reduce``, the methods in ``vqa_cli.model.reduce``) applies: the mode's visual tokens.

After the mode (its pathways, projected) and before the language model, blind to the question, so a clip's reduced
tokens are what the feature cache keeps and every question, chat turn and request reuses. Each pathway of the mode's
``TokenPlan`` is reduced on its own grid: a pathway of ``(h, w)`` tokens per frame as a ``[frames, h, w, D]`` grid,
a 3-D pool ``(T', h, w)`` as ``[T', h, w, D]``. Layout tokens are never reduced and stay where the model expects
them: a 1-D pathway (LLaVA-OneVision's newline after the video) and the tokens a family's own path puts before each
frame's grid (Video-LLaVA's CLS; ``Geometry.frame_prefix_tokens``).

The ratio is ``--keep``, or the one ``--max-visual-tokens N`` picks from the layout (``keep_ratio``: the grid
tokens' share of N once the layout tokens are counted, at most 1). ``reduced_plan`` counts the tokens a reduction
leaves without any tensor (``reduce.kept_tokens``), for ``--plan``, budgets and ``--fit``; ``reduce_tokens``
applies it and says where each kept token stood (its index in the unreduced sequence), which a family with rotary
positions per patch needs (Qwen-VL keeps every kept token's original position: ``with_index``/``split_index``
carry the indices on the tokens' channels, so the cache keeps them too).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from vqa_cli.errors import UsageError
from vqa_cli.model import reduce as methods

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from vqa_cli.model.modes import Pathway, TokenPlan
    from vqa_cli.settings import ModeSettings

INDEX_DIGITS = 3  # channels that carry a kept token's index: base-256 digits, exact in bfloat16 (up to 2**24 tokens)
_BASE = 256


def active(settings: ModeSettings) -> bool:
    """Whether ``settings`` reduce the visual tokens (``--reduce`` other than none)."""
    return settings.reduce not in (None, "none")


def grid_shape(pathway: Pathway) -> tuple[int, int, int, int] | None:
    """(steps, h, w, layout tokens before each step's grid) of an unreduced pathway's grid tokens, or None for a
    1-D pathway (layout tokens only, never reduced)."""
    grid = tuple(pathway.grid)
    if len(grid) == 3:
        return grid[0], grid[1], grid[2], 0
    if len(grid) == 2 and pathway.frame_positions:
        steps = len(pathway.frame_positions)
        return steps, grid[0], grid[1], pathway.tokens // steps - grid[0] * grid[1]
    return None


def keep_ratio(settings: ModeSettings, pathways: Sequence[Pathway]) -> float:
    """The ratio of the grid tokens kept: ``--keep``, or for ``--max-visual-tokens N`` the share that leaves N
    visual tokens with the layout tokens (at most 1: a clip already under N is not reduced)."""
    if settings.keep is not None or settings.max_visual_tokens is None:
        return float(settings.keep if settings.keep is not None else 1.0)
    shapes = [grid_shape(p) for p in pathways]
    grids = sum(s[0] * s[1] * s[2] for s in shapes if s is not None)
    layout = sum(p.tokens for p in pathways) - grids
    if not grids or settings.max_visual_tokens >= grids + layout:
        return 1.0
    return max(settings.max_visual_tokens - layout, 1) / grids


def reduced_plan(plan: TokenPlan, settings: ModeSettings) -> TokenPlan:
    """``plan`` with each pathway's tokens after ``settings``' reduction (``Pathway.before``: the count before);
    ``plan`` itself when nothing is reduced."""
    if not active(settings):
        return plan
    keep = keep_ratio(settings, plan.pathways)
    pathways = []
    for p in plan.pathways:
        shape = grid_shape(p)
        if shape is None:
            pathways.append(p)
            continue
        steps, h, w, prefix = shape
        kept = methods.kept_tokens(settings.reduce, steps, h, w, keep) + steps * prefix
        pathways.append(replace(p, tokens=kept, before=p.tokens))
    reduced = replace(plan, pathways=tuple(pathways), reduce=settings.reduce, keep=keep)
    if settings.max_visual_tokens is not None and reduced.total > settings.max_visual_tokens:
        raise UsageError(f"--reduce {settings.reduce} keeps at least {reduced.total} of {plan.total} visual tokens "
                         f"here (its least), over --max-visual-tokens {settings.max_visual_tokens}")
    return reduced


def reduce_tokens(tokens: torch.Tensor, pathways: Sequence[Pathway], settings: ModeSettings,
                  scored: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A mode's visual tokens [N, D] laid out as ``pathways`` (unreduced) -> (the kept tokens [M, D] in sequence
    order, their indices [M] in the unreduced sequence). Each grid goes through ``reduce.reduce_grid`` once.

    ``scored``: the leading channels the method reads (the tokens themselves, where a family packs more on the
    channels: Qwen3-VL's DeepStack features); the kept places then select every channel alike (the methods select,
    they do not merge). None: all of them."""
    import torch

    if tokens.shape[0] != sum(p.tokens for p in pathways):
        raise ValueError(f"{tokens.shape[0]} visual tokens for a layout of {sum(p.tokens for p in pathways)}")
    keep = keep_ratio(settings, pathways)
    values: list[torch.Tensor] = []
    index: list[torch.Tensor] = []
    start = 0
    for p in pathways:
        shape = grid_shape(p)
        part = tokens[start:start + p.tokens]
        positions = torch.arange(start, start + p.tokens, device=tokens.device)
        start += p.tokens
        if shape is None:
            values.append(part)
            index.append(positions)
            continue
        steps, h, w, prefix = shape
        per_step = part.reshape(steps, prefix + h * w, -1)
        at = positions.reshape(steps, prefix + h * w)
        grid = per_step[:, prefix:].reshape(steps, h, w, -1)
        got = methods.reduce_grid(settings.reduce, grid if scored is None else grid[..., :scored], keep)
        expected = methods.kept_tokens(settings.reduce, steps, h, w, keep)
        if int(got.mask.sum()) != expected or got.values.shape[0] != expected:
            raise ValueError(f"{settings.reduce} kept {int(got.mask.sum())} of a {steps}x{h}x{w} grid, "
                             f"planned {expected}")
        if scored is not None:
            got = methods.Reduced(got.mask, grid[got.mask])
        if not prefix:
            values.append(got.values)
            index.append(at[got.mask.reshape(steps, h * w)])
            continue
        counts = got.mask.reshape(steps, -1).sum(dim=1).tolist()
        for step, kept in enumerate(got.values.split(counts)):  # each step's layout tokens, then its kept grid
            values += [per_step[step, :prefix], kept]
            index += [at[step, :prefix], at[step, prefix:][got.mask[step].reshape(-1)]]
    return torch.cat(values), torch.cat(index)


def with_index(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Kept tokens [M, D] and their indices [M] -> [M, D + INDEX_DIGITS]: the indices as base-256 digits on the
    last channels (exact in every floating-point dtype vqa computes in)."""
    import torch

    if index.numel() and int(index.max()) >= _BASE ** INDEX_DIGITS:
        raise ValueError(f"a token index of {int(index.max())} does not fit {INDEX_DIGITS} digits")
    digits = torch.stack([(index // _BASE ** k) % _BASE for k in range(INDEX_DIGITS)], dim=-1)
    return torch.cat([values, digits.to(values.device, values.dtype)], dim=-1)


def split_index(features: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``with_index``'s inverse for tokens whose channels are a multiple of ``width`` without an index: (the tokens,
    their indices [M] in the unreduced sequence), or (``features``, None) when they carry none (not reduced)."""
    import torch

    if features.shape[-1] % width != INDEX_DIGITS:
        return features, None
    digits = features[:, -INDEX_DIGITS:].to(torch.float64).round().long()
    scale = torch.tensor([_BASE ** k for k in range(INDEX_DIGITS)], device=digits.device)
    return features[:, :-INDEX_DIGITS], (digits * scale).sum(dim=-1)


def described(settings: ModeSettings) -> dict | None:
    """What records and eval summaries say of ``settings``' reduction: the method and its ratio (``keep``, or the
    ``max_visual_tokens`` that picks it per clip); None without one."""
    if not active(settings):
        return None
    ratio = {"keep": settings.keep} if settings.keep is not None else {"max_visual_tokens": settings.max_visual_tokens}
    return {"reduce": settings.reduce, **ratio}


def label(settings: ModeSettings) -> str:
    """A setting's name in eval's side-by-side table: the mode, then its reduction (``anyres evs 0.25``,
    ``anyres evs <=500``)."""
    what = described(settings)
    if what is None:
        return settings.name
    ratio = f"{what['keep']:g}" if "keep" in what else f"<={what['max_visual_tokens']}"
    return f"{settings.name} {what['reduce']} {ratio}"
