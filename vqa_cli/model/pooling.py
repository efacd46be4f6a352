"""The modes' tensor maths: pure functions on ``[T, h, w, D]`` token grids, each one paper's formula.

``vqa_cli/model/modes.py`` decides which of them runs, with which parameters, and plans their token counts
without torch; here each formula stands alone so it can be checked on random tensors against the paper
(tests/test_modes.py, tests/test_guide.py). torch is imported inside the functions, so importing this module
stays cheap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GUIDE_TEMPERATURE = 0.01  # PPLLaVA: the softmax temperature of the relevance inside each window


def slow_positions(num_frames: int, slow_frames: int) -> list[int]:
    """``linspace(0, T, slow + 1)`` without the last, as integer positions (SlowFast-LLaVA)."""
    slow = min(slow_frames, num_frames)
    return [int(math.floor(i * num_frames / slow)) for i in range(slow)]


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
