"""Training-free, query-agnostic video token reduction: pure functions on ``[T, h, w, D]`` token grids.

Each method is one paper's formula, applied after the projector (and the mode) and before the language model,
without the question, so one reduced video serves every question, chat turn and request (docs/reduction.md).
A method answers with a :class:`Reduced`: which grid places are kept (their original ``(t, row, col)``, so
rotary positions and layouts can be rebuilt from them) and the kept tokens' values in grid order.

- ``evs``: Efficient Video Sampling as vLLM ships it (``vllm/multimodal/evs.py``): every token of the first
  frame, then the tokens that changed most (cosine) from the same place in the previous frame.
- ``vidcom2``: VidCom2 (Liu et al., EMNLP 2025; xuyang-liu16/VidCom2 ``vidcom2.py``): a budget per frame from the
  frame's uniqueness against the whole video, then in each frame the tokens least like the video and the frame.

torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

METHODS: tuple[str, ...] = ("none", "evs", "vidcom2")

_FIRST_FRAME = 255.0  # EVS: the first frame's score, above any cosine dissimilarity (at most 2)
_COUNT_SLACK = 1e-9  # float noise in total * keep (0.29 * 100 = 28.999999999999996) is not a lost token
VIDCOM2_CHANNELS = 0.5  # VidCom2: the share of channels scored, those of least variance over the video
VIDCOM2_ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)  # VidCom2: the Gaussian kernels' bandwidths, 2**k for k in -3..1
VIDCOM2_TEMPERATURE = 0.01  # VidCom2: the softmax temperature of the frames' uniqueness


@dataclass(frozen=True)
class Reduced:
    """What a method keeps of a ``[T, h, w, D]`` grid."""

    mask: torch.Tensor  # bool [T, h, w]: the kept places
    values: torch.Tensor  # [mask.sum(), D]: the kept tokens in grid order (t, row, col); merged values if merging


def kept_count(total: int, keep: float, *, minimum: int = 1) -> int:
    """How many of ``total`` tokens a ratio keeps: ``floor(total * keep)``, at least ``minimum``, at most ``total``.

    The floor is vLLM's EVS rule (``int(total * (1 - q))`` for a pruning rate ``q = 1 - keep``), taken of the ratio
    as written: 0.29 of 100 tokens is 29, although ``100 * 0.29`` is 28.999999999999996 in floating point.
    """
    _check_keep(keep)
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"the token count must be a non-negative integer, not {total!r}")
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0:
        raise ValueError(f"the minimum must be a non-negative integer, not {minimum!r}")
    return min(total, max(minimum, math.floor(total * keep + _COUNT_SLACK)))


def kept_tokens(method: str, frames: int, h: int, w: int, keep: float) -> int:
    """How many tokens ``reduce_grid(method, grid, keep)`` keeps of a ``[frames, h, w, D]`` grid, without torch."""
    _check_method(method)
    _check_shape(frames, h, w)
    total = frames * h * w
    if method == "none" or keep == 1.0:
        _check_keep(keep)
        return total
    if method == "vidcom2":
        return kept_count(total, keep, minimum=frames)  # at least one token per frame
    return kept_count(total, keep, minimum=h * w)  # evs: never fewer than one frame's tokens


def reduce_grid(method: str, grid: torch.Tensor, keep: float) -> Reduced:
    """Reduce a ``[T, h, w, D]`` grid to about ``keep`` of its tokens; deterministic and blind to the question.

    ``keep == 1.0`` (or ``method == "none"``) keeps every token, bit for bit.
    """
    import torch

    _check_method(method)
    _check_keep(keep)
    if not isinstance(grid, torch.Tensor) or grid.dim() != 4:
        raise ValueError(f"the token grid must be a [T, h, w, D] tensor, not {_shape_text(grid)}")
    t, h, w, d = grid.shape
    _check_shape(t, h, w)
    if d < 1:
        raise ValueError("the token grid has no channels (D = 0)")
    if not (grid.is_floating_point() and bool(torch.isfinite(grid).all())):
        raise ValueError("the token grid must hold finite floating-point values")
    if method == "none" or keep == 1.0:
        mask = torch.ones((t, h, w), dtype=torch.bool, device=grid.device)
        return Reduced(mask=mask, values=grid.reshape(-1, d))
    mask = evs_mask(grid, keep) if method == "evs" else vidcom2_mask(grid, keep)
    return Reduced(mask=mask, values=grid[mask])


def evs_scores(grid: torch.Tensor) -> torch.Tensor:
    """EVS: ``[T, h, w]`` scores; ``1 - cos(x[t, i, j], x[t-1, i, j])`` for ``t >= 1``, 255 for the first frame.

    Computed in float32 at least (a bfloat16 cosine has too few values to rank); torch's cosine:
    ``a.b / (max(|a|, 1e-8) * max(|b|, 1e-8))``.
    """
    import torch
    import torch.nn.functional as F

    x = grid if grid.dtype == torch.float64 else grid.float()
    first = torch.full_like(x[:1, :, :, 0], _FIRST_FRAME)
    if x.shape[0] == 1:
        return first
    dissimilarity = 1.0 - F.cosine_similarity(x[1:], x[:-1], dim=-1)
    return torch.cat([first, dissimilarity], dim=0)


def evs_mask(grid: torch.Tensor, keep: float) -> torch.Tensor:
    """EVS: bool ``[T, h, w]``, the ``kept_tokens`` highest scores; equal scores keep the earlier place (t, row, col).

    vLLM: a stable descending argsort of the flattened scores, the first ``max(h*w, int(T*h*w*(1-q)))``.
    """
    import torch

    t, h, w, _ = grid.shape
    scores = evs_scores(grid).reshape(-1)
    order = torch.argsort(scores, descending=True, stable=True)
    mask = torch.zeros(t * h * w, dtype=torch.bool, device=grid.device)
    mask[order[: kept_tokens("evs", t, h, w, keep)]] = True
    return mask.reshape(t, h, w)


def vidcom2_scores(grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VidCom2: ``(video, frame)`` similarities, each ``[T, h*w]``, in float64 (the variances in float32 at least).

    Of the tokens' channels, the half with the least (population) variance over all tokens (equal variances: the
    lower channel); each token's selected channels are L2-normalized (``x / max(|x|, 1e-12)``); a similarity to a
    centre ``c`` (the mean normalized token of the video, or of the token's frame) is the multi-scale Gaussian
    kernel ``sum over a of exp(-|x - c|^2 / (2a))``, a in ``VIDCOM2_ALPHAS``.
    """
    import torch
    import torch.nn.functional as F

    t, h, w, d = grid.shape
    x = grid.reshape(t * h * w, d)
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    variance = x.var(dim=0, unbiased=False)
    channels = torch.argsort(variance, stable=True)[: max(1, int(d * VIDCOM2_CHANNELS))]
    frames = F.normalize(x[:, channels].double(), dim=-1).reshape(t, h * w, -1)
    video_centre = frames.mean(dim=(0, 1), keepdim=True)
    frame_centre = frames.mean(dim=1, keepdim=True)

    def kernel(centre: torch.Tensor) -> torch.Tensor:
        distance = ((frames - centre) ** 2).sum(dim=-1)
        return sum(torch.exp(-distance / (2 * a)) for a in VIDCOM2_ALPHAS)

    return kernel(video_centre), kernel(frame_centre)


def vidcom2_frame_counts(video: torch.Tensor, keep: float) -> list[int]:
    """VidCom2: how many tokens each frame keeps, from its uniqueness ``u_t = -mean(video similarity of frame t)``.

    The reference's share of frame t is ``s_t = min(1, keep * (1 + p_t - mean(p)))`` with
    ``p = softmax((u - max u) / 0.01)``, so ``s_t * h*w`` tokens; it rounds each frame on its own
    (``max(1, round(s_t * h*w))``), which lets the total drift from the budget by up to half a token a frame. Here
    the same shares are apportioned so the total is exactly ``kept_tokens`` (a plan knows it before the video):
    each frame gets ``floor`` of its share (1 to h*w), then the tokens left go one at a time to the frame with the
    largest remainder (equal remainders: the earlier frame), or, over budget, come back from the smallest (the later
    frame). Each frame's count is within one of the reference's rounding while no share reaches ``h*w``; when one
    does (``keep`` above about 1/2) the reference keeps fewer than the budget, and here the other frames get the rest.
    """
    import torch

    t, m = video.shape
    uniqueness = -video.mean(dim=-1)
    p = torch.softmax((uniqueness - uniqueness.max()) / VIDCOM2_TEMPERATURE, dim=0)
    shares = (keep * (1 + p - p.mean())).clamp(max=1.0) * m
    quota = [float(q) for q in shares]
    counts = [min(m, max(1, math.floor(q))) for q in quota]
    budget = kept_tokens("vidcom2", t, m, 1, keep)
    while sum(counts) < budget:
        open_frames = [i for i in range(t) if counts[i] < m]
        best = max(open_frames, key=lambda i: (quota[i] - counts[i], -i))
        counts[best] += 1
    while sum(counts) > budget:
        open_frames = [i for i in range(t) if counts[i] > 1]
        worst = min(open_frames, key=lambda i: (quota[i] - counts[i], -i))
        counts[worst] -= 1
    return counts


def vidcom2_mask(grid: torch.Tensor, keep: float) -> torch.Tensor:
    """VidCom2: bool ``[T, h, w]``; in each frame its count of the tokens with the lowest ``video + frame``
    similarity (the most distinct; equal scores keep the earlier place)."""
    import torch

    t, h, w, _ = grid.shape
    video, frame = vidcom2_scores(grid)
    score = video + frame
    mask = torch.zeros((t, h * w), dtype=torch.bool, device=grid.device)
    for i, count in enumerate(vidcom2_frame_counts(video, keep)):
        mask[i, torch.argsort(score[i], stable=True)[:count]] = True
    return mask.reshape(t, h, w)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown reduction method {method!r}: choose one of {', '.join(METHODS)}")


def _check_keep(keep: float) -> None:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not (0.0 < keep <= 1.0):
        raise ValueError(f"the kept ratio must be a number in (0, 1], not {keep!r}")


def _check_shape(frames: int, h: int, w: int) -> None:
    for name, value in (("frames", frames), ("rows", h), ("columns", w)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"the token grid needs at least one of each dimension: {name} = {value!r}")


def _shape_text(grid: object) -> str:
    shape = getattr(grid, "shape", None)
    return f"shape {list(shape)}" if shape is not None else type(grid).__name__
