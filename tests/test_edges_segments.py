"""Edges of scene merging (docs/segments.md): a scene exactly ``--min-scene`` long is kept; a shorter one merges
with its shorter neighbour, the earlier one on a tie, again and again. Oracle: the same policy written in the
test over whole milliseconds (integers, no float noise)."""

from __future__ import annotations

import random

import pytest

from vqa_cli.video.scenes import Window, cut_windows, merge_short


def _model(bounds_ms: list[int], min_ms: int) -> list[tuple[int, int]]:
    """The documented policy on integer milliseconds: the shortest short window (the earliest of equals) merges
    with its shorter neighbour (the earlier on a tie), until none is short or one window is left."""
    out = [(a, b) for a, b in zip(bounds_ms, bounds_ms[1:], strict=False)]
    while len(out) > 1:
        lengths = [b - a for a, b in out]
        short = [k for k, n in enumerate(lengths) if n < min_ms]
        if not short:
            break
        i = min(short, key=lambda k: (lengths[k], k))
        if i == 0:
            j = 1
        elif i == len(out) - 1:
            j = i - 1
        else:
            j = i - 1 if lengths[i - 1] <= lengths[i + 1] else i + 1
        a, b = min(i, j), max(i, j)
        out[a:b + 1] = [(out[a][0], out[b][1])]
    return out


def _run(bounds_ms: list[int], min_ms: int) -> list[tuple[int, int]]:
    windows = [Window(a / 1000, b / 1000) for a, b in zip(bounds_ms, bounds_ms[1:], strict=False)]
    return [(round(w.start * 1000), round(w.end * 1000)) for w in merge_short(windows, min_ms / 1000)]


def test_random_dyadic_scenes_merge_like_the_documented_policy():
    # Boundaries on quarter seconds: every length and comparison is exact in binary floating point.
    rng = random.Random(3)
    for _ in range(400):
        n = rng.randint(1, 9)
        bounds = [0]
        for _ in range(n):
            bounds.append(bounds[-1] + 250 * rng.randint(1, 6))
        min_ms = 250 * rng.randint(0, 8)
        assert _run(bounds, min_ms) == _model(bounds, min_ms), (bounds, min_ms)


@pytest.mark.parametrize("bounds, min_ms, want", [
    ([0, 2000, 3000, 5000], 1000, [(0, 2000), (2000, 3000), (3000, 5000)]),  # exactly the minimum: kept
    ([0, 2000, 2750, 5000], 1000, [(0, 2750), (2750, 5000)]),  # tie between neighbours: the earlier
    ([0, 3000, 3500, 5000], 1000, [(0, 3000), (3000, 5000)]),  # the shorter neighbour is the later one
    ([0, 500, 5000], 1000, [(0, 5000)]),  # the first scene has one neighbour
    ([0, 4500, 5000], 1000, [(0, 5000)]),  # the last too
    ([0, 500, 1000, 1500], 10_000, [(0, 1500)]),  # until one is left
])
def test_documented_edges(bounds, min_ms, want):
    assert _run(bounds, min_ms) == _model(bounds, min_ms) == want


def test_a_scene_exactly_min_scene_long_between_millisecond_cuts_is_kept():
    # every scene at least --min-scene long in milliseconds, the middle one exactly: nothing merges
    for offset in range(0, 5000, 7):
        for length in (100, 300, 700, 1100, 2300):
            bounds = [0, length + offset, 2 * length + offset, 3 * length + offset + 1000]
            windows = cut_windows([b / 1000 for b in bounds[1:-1]], bounds[-1] / 1000)
            assert _model(bounds, length) == list(zip(bounds, bounds[1:], strict=False))
            assert merge_short(windows, length / 1000) == windows, bounds


def test_a_tie_between_millisecond_neighbours_goes_to_the_earlier():
    # a 50 ms scene between two scenes equally long in milliseconds (both well over --min-scene 0.1)
    for left in range(100, 3000, 13):
        bounds = [0, left, left + 50, 2 * left + 50, 2 * left + 5050]
        windows = cut_windows([b / 1000 for b in bounds[1:-1]], bounds[-1] / 1000)
        got = [(round(w.start * 1000), round(w.end * 1000)) for w in merge_short(windows, 0.1)]
        assert got == _model(bounds, 100) == [(0, left + 50), (left + 50, 2 * left + 50), (2 * left + 50,
                                                                                         2 * left + 5050)], bounds
