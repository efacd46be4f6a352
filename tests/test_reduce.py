"""Video token reduction (vqa_cli/model/reduce.py) against each method's reference formula, written here.

The oracles are plain loops over the grid in float64, written from the papers and their reference code
(EVS: vLLM's ``vllm/multimodal/evs.py``; VidCom2: xuyang-liu16/VidCom2 ``token_compressor/vidcom2/vidcom2.py``),
never by calling vqa.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from decimal import Decimal

import pytest
import torch

from vqa_cli.model import reduce

SHAPES = [(1, 3, 5, 8), (2, 4, 4, 16), (5, 3, 7, 12), (8, 6, 6, 32), (4, 1, 1, 3)]
KEEPS = [0.1, 0.25, 0.29, 0.5, 0.77]


def floor_of(total: int, keep: float) -> int:
    """floor(total * keep) of the ratio as written (exact decimal arithmetic)."""
    return int(Decimal(repr(keep)) * total)


def cosine(a: list[float], b: list[float]) -> float:
    """torch's cosine similarity: a.b / (max(|a|, 1e-8) * max(|b|, 1e-8))."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = max(math.sqrt(sum(x * x for x in a)), 1e-8)
    nb = max(math.sqrt(sum(y * y for y in b)), 1e-8)
    return dot / (na * nb)


def evs_reference(grid: torch.Tensor, keep: float) -> tuple[set[tuple[int, int, int]], list[float]]:
    """EVS (vLLM): the first frame scores 255, later places 1 - cos(to the same place one frame earlier); keep the
    max(h*w, floor(T*h*w*keep)) highest, equal scores in (t, row, col) order. Returns the kept places and the
    sorted scores (to check the cut is not a float near-tie)."""
    t, h, w, _ = grid.shape
    g = grid.double().tolist()
    scored = []
    for ti in range(t):
        for r in range(h):
            for c in range(w):
                score = 255.0 if ti == 0 else 1.0 - cosine(g[ti][r][c], g[ti - 1][r][c])
                scored.append((score, (ti, r, c)))
    count = max(h * w, floor_of(t * h * w, keep))
    ranked = sorted(scored, key=lambda item: -item[0])  # Python's sort is stable: ties keep grid order
    return {place for _, place in ranked[:count]}, [s for s, _ in ranked]


ALPHAS = [2.0**k for k in range(-3, 2)]


def vidcom2_reference(grid: torch.Tensor, keep: float) -> tuple[list[list[float]], list[float], list[int]]:
    """VidCom2's scoring as its reference code does it: per frame the token scores (video + frame similarity),
    the frames' shares of h*w (``s_t * M``) and the reference's own per-frame counts ``max(1, round(s_t * M))``."""
    t, h, w, d = grid.shape
    m = h * w
    tokens = grid.double().reshape(t * m, d).tolist()
    n = len(tokens)
    variances = []
    for c in range(d):
        mean = sum(tok[c] for tok in tokens) / n
        variances.append(sum((tok[c] - mean) ** 2 for tok in tokens) / n)
    chosen = sorted(range(d), key=lambda c: variances[c])[: max(1, d // 2)]  # least variance, ties: lower channel
    unit = []
    for tok in tokens:
        sel = [tok[c] for c in chosen]
        norm = max(math.sqrt(sum(v * v for v in sel)), 1e-12)
        unit.append([v / norm for v in sel])
    k = len(chosen)
    video_centre = [sum(u[c] for u in unit) / n for c in range(k)]
    frame_centres = [[sum(unit[f * m + j][c] for j in range(m)) / m for c in range(k)] for f in range(t)]

    def gaussian(u: list[float], centre: list[float]) -> float:
        dist = sum((a - b) ** 2 for a, b in zip(u, centre, strict=True))
        return sum(math.exp(-dist / (2 * a)) for a in ALPHAS)

    video = [[gaussian(unit[f * m + j], video_centre) for j in range(m)] for f in range(t)]
    frame = [[gaussian(unit[f * m + j], frame_centres[f]) for j in range(m)] for f in range(t)]
    uniqueness = [-sum(row) / m for row in video]
    top = max(uniqueness)
    exps = [math.exp((u - top) / 0.01) for u in uniqueness]
    probs = [e / sum(exps) for e in exps]
    mean_p = sum(probs) / t
    shares = [min(1.0, keep * (1 + p - mean_p)) * m for p in probs]
    scores = [[video[f][j] + frame[f][j] for j in range(m)] for f in range(t)]
    return scores, shares, [max(1, round(q)) for q in shares]


def apportion(shares: list[float], budget: int, m: int) -> list[int]:
    """Floors (1..m), then one token at a time to the largest remainder (ties: earlier frame), or back from the
    smallest (ties: later frame)."""
    counts = [min(m, max(1, math.floor(q))) for q in shares]
    while sum(counts) < budget:
        best = None
        for i in range(len(counts)):
            if counts[i] < m and (best is None or shares[i] - counts[i] > shares[best] - counts[best]):
                best = i
        counts[best] += 1
    while sum(counts) > budget:
        worst = None
        for i in range(len(counts)):
            if counts[i] > 1 and (worst is None or shares[i] - counts[i] <= shares[worst] - counts[worst]):
                worst = i
        counts[worst] -= 1
    return counts


def vidcom2_places(scores: list[list[float]], counts: list[int], h: int, w: int) -> set[tuple[int, int, int]]:
    """In each frame its count of the lowest scores; equal scores keep the earlier place."""
    kept = set()
    for f, (row, count) in enumerate(zip(scores, counts, strict=True)):
        for j in sorted(range(len(row)), key=lambda j: row[j])[:count]:
            kept.add((f, j // w, j % w))
    return kept


def places(mask: torch.Tensor) -> set[tuple[int, int, int]]:
    return {tuple(int(i) for i in idx) for idx in mask.nonzero().tolist()}


def grid_order_values(grid: torch.Tensor, kept: set[tuple[int, int, int]]) -> torch.Tensor:
    rows = [grid[t, r, c] for t, r, c in sorted(kept)]
    return torch.stack(rows) if rows else grid.new_zeros((0, grid.shape[-1]))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("keep", KEEPS)
def test_evs_keeps_the_reference_places_and_values(shape: tuple[int, int, int, int], keep: float) -> None:
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, keep)).encode()))
    grid = torch.randn(shape, generator=gen)
    kept, ranked = evs_reference(grid, keep)
    count = len(kept)
    if 0 < count < len(ranked):
        assert ranked[count - 1] - ranked[count] > 1e-5, "the random cut is a float near-tie; pick another seed"
    out = reduce.reduce_grid("evs", grid, keep)
    assert out.mask.dtype == torch.bool and out.mask.shape == shape[:3]
    assert places(out.mask) == kept
    assert torch.equal(out.values, grid_order_values(grid, kept))
    assert out.mask[0].all()  # the first frame is always kept
    assert reduce.kept_tokens("evs", *shape[:3], keep) == count


def test_evs_ties_keep_the_earlier_place() -> None:
    """One-hot tokens give exact cosines (0 or 1): many equal scores, broken by grid order."""
    t, h, w, d = 4, 3, 3, 4
    gen = torch.Generator().manual_seed(7)
    hot = torch.randint(0, d, (t, h, w), generator=gen)
    hot[2] = hot[1]  # frame 2 repeats frame 1 exactly: all its scores are 0
    grid = torch.nn.functional.one_hot(hot, d).float() * 3.0
    for keep in (0.3, 0.5, 0.6, 0.9):
        kept, _ = evs_reference(grid, keep)
        out = reduce.reduce_grid("evs", grid, keep)
        assert places(out.mask) == kept, keep
        assert torch.equal(out.values, grid_order_values(grid, kept))


def test_evs_zero_tokens_follow_torch_cosine() -> None:
    """A zero token has cosine 0 to anything (the 1e-8 norm floor), so it scores 1."""
    grid = torch.randn(3, 2, 2, 5, generator=torch.Generator().manual_seed(3))
    grid[1, 0, 0] = 0.0
    grid[2, 1, 1] = 0.0
    kept, _ = evs_reference(grid, 0.5)
    assert places(reduce.reduce_grid("evs", grid, 0.5).mask) == kept


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("keep", KEEPS)
def test_vidcom2_keeps_the_reference_places_and_values(shape: tuple[int, int, int, int], keep: float) -> None:
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, keep, "vidcom2")).encode()))
    grid = torch.randn(shape, generator=gen) * torch.rand(shape[0], 1, 1, 1, generator=gen) * 3
    t, h, w, _ = shape
    scores, shares, reference_counts = vidcom2_reference(grid, keep)
    budget = min(t * h * w, max(t, floor_of(t * h * w, keep)))
    counts = apportion(shares, budget, h * w)
    if max(shares) < h * w:  # no frame keeps all its tokens: within one of the reference's own rounding
        assert all(abs(a - b) <= 1 for a, b in zip(counts, reference_counts, strict=True))
    kept = vidcom2_places(scores, counts, h, w)
    out = reduce.reduce_grid("vidcom2", grid, keep)
    assert places(out.mask) == kept
    assert torch.equal(out.values, grid_order_values(grid, kept))
    assert int(out.mask.sum()) == budget == reduce.kept_tokens("vidcom2", t, h, w, keep)
    assert [int(c) for c in out.mask.reshape(t, -1).sum(dim=1)] == counts


def test_vidcom2_is_the_reference_where_its_rounding_meets_the_budget() -> None:
    """Where the reference's own per-frame rounding sums to the budget, the kept places are exactly its places."""
    met = 0
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        t, h, w = 2 + seed % 5, 3 + seed % 3, 4
        grid = torch.randn(t, h, w, 6, generator=gen) * torch.rand(t, 1, 1, 1, generator=gen) * 3
        keep = (0.15, 0.25, 0.4)[seed % 3]
        scores, _, reference_counts = vidcom2_reference(grid, keep)
        if sum(reference_counts) != reduce.kept_tokens("vidcom2", t, h, w, keep):
            continue
        met += 1
        assert places(reduce.reduce_grid("vidcom2", grid, keep).mask) == vidcom2_places(scores, reference_counts, h, w)
    assert met >= 10


def test_vidcom2_ties_keep_the_earlier_place() -> None:
    """Repeated one-hot tokens, 16 of them so every mean is exact: equal variances and equal scores, so the lower
    channel, the earlier frame and the earlier place win; frames 0 and 2 are the same frame."""
    t, h, w, d = 4, 2, 2, 4
    hot = torch.tensor([[[0, 1], [0, 2]], [[2, 2], [3, 3]], [[0, 1], [0, 2]], [[1, 1], [1, 0]]])
    grid = torch.nn.functional.one_hot(hot, d).double()
    for keep in (0.2, 0.25, 0.4, 0.5, 0.7):
        scores, shares, _ = vidcom2_reference(grid, keep)
        counts = apportion(shares, reduce.kept_tokens("vidcom2", t, h, w, keep), h * w)
        assert places(reduce.reduce_grid("vidcom2", grid, keep).mask) == vidcom2_places(scores, counts, h, w), keep


def test_vidcom2_gives_a_unique_frame_more_tokens() -> None:
    """Seven near-identical frames and one unlike them: the unique frame gets about twice the average budget."""
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(1, 4, 4, 16, generator=gen)
    grid = base.repeat(8, 1, 1, 1) + 0.01 * torch.randn(8, 4, 4, 16, generator=gen)
    grid[5] = torch.randn(4, 4, 16, generator=gen)
    counts = reduce.reduce_grid("vidcom2", grid, 0.25).mask.reshape(8, -1).sum(dim=1).tolist()
    assert counts[5] == max(counts) and counts[5] >= 7 and sum(counts) == 32


@pytest.mark.parametrize("method", ["evs", "vidcom2"])
def test_half_precision_grids_rank_as_their_float32_values(method: str) -> None:
    """A bfloat16 grid is scored on its own values (upcast), so it keeps what its float32 copy keeps, in bfloat16."""
    grid = torch.randn(6, 5, 4, 24, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    half, full = reduce.reduce_grid(method, grid, 0.3), reduce.reduce_grid(method, grid.float(), 0.3)
    assert torch.equal(half.mask, full.mask)
    assert half.values.dtype == torch.bfloat16 and torch.equal(half.values, grid[half.mask])


@pytest.mark.parametrize("method", reduce.METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_keep_one_is_the_identity(method: str, dtype: torch.dtype) -> None:
    grid = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = reduce.reduce_grid(method, grid, 1.0)
    assert out.mask.all() and out.mask.shape == (3, 5, 4)
    assert out.values.dtype == dtype
    assert torch.equal(out.values, grid.reshape(-1, 6))
    assert reduce.kept_tokens(method, 3, 5, 4, 1.0) == 60


def test_none_keeps_everything_at_any_ratio() -> None:
    grid = torch.randn(2, 3, 3, 4)
    out = reduce.reduce_grid("none", grid, 0.1)
    assert out.mask.all() and torch.equal(out.values, grid.reshape(-1, 4))


@pytest.mark.parametrize("method", [m for m in reduce.METHODS if m != "none"])
def test_deterministic_and_input_untouched(method: str) -> None:
    grid = torch.randn(6, 5, 5, 8, generator=torch.Generator().manual_seed(11))
    before = grid.clone()
    a = reduce.reduce_grid(method, grid, 0.3)
    b = reduce.reduce_grid(method, grid.clone(), 0.3)
    assert torch.equal(grid, before)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.values, b.values)
    assert a.values.shape == (int(a.mask.sum()), 8)


@pytest.mark.parametrize("total", [0, 1, 7, 100, 196, 4608])
@pytest.mark.parametrize("keep", [0.01, 0.1, 0.25, 0.29, 0.3, 0.57, 0.7, 0.999, 1.0])
def test_kept_count_floors_the_ratio_as_written(total: int, keep: float) -> None:
    assert reduce.kept_count(total, keep, minimum=0) == floor_of(total, keep)
    assert reduce.kept_count(total, keep) == min(total, max(1, floor_of(total, keep)))
    assert reduce.kept_count(total, keep, minimum=50) == min(total, max(50, floor_of(total, keep)))


def test_kept_count_examples() -> None:
    assert reduce.kept_count(100, 0.29) == 29  # 100 * 0.29 == 28.999999999999996 in floating point
    assert reduce.kept_count(4608, 1000 / 4608) == 1000  # a budget turned into a ratio gives the budget back
    assert reduce.kept_count(10, 0.05) == 1  # at least the minimum
    assert reduce.kept_tokens("evs", 8, 12, 12, 0.05) == 144  # EVS: never fewer than one frame
    assert reduce.kept_tokens("vidcom2", 8, 12, 12, 0.001) == 8  # VidCom2: at least one token a frame
    assert reduce.kept_tokens("vidcom2", 32, 14, 14, 0.25) == 1568  # LLaVA-OV's 32 x 196 at 25 %


@pytest.mark.parametrize(
    "call",
    [
        lambda: reduce.reduce_grid("fastest", torch.zeros(1, 2, 2, 3), 0.5),
        lambda: reduce.reduce_grid("evs", torch.zeros(1, 2, 2, 3), 0.0),
        lambda: reduce.reduce_grid("evs", torch.zeros(1, 2, 2, 3), 1.5),
        lambda: reduce.reduce_grid("evs", torch.zeros(1, 2, 2, 3), float("nan")),
        lambda: reduce.reduce_grid("evs", torch.zeros(4, 3), 0.5),
        lambda: reduce.reduce_grid("evs", torch.zeros(0, 2, 2, 3), 0.5),
        lambda: reduce.reduce_grid("evs", torch.zeros(2, 2, 2, 3, dtype=torch.long), 0.5),
        lambda: reduce.reduce_grid("evs", torch.full((2, 2, 2, 3), float("inf")), 0.5),
        lambda: reduce.kept_count(-1, 0.5),
        lambda: reduce.kept_count(10, 0.5, minimum=-1),
        lambda: reduce.kept_tokens("evs", 0, 2, 2, 0.5),
    ],
)
def test_bad_inputs_are_value_errors(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()
