"""Which frames (vqa_cli.video._sampling): pure functions over timestamps and keyframes, no file needed."""

from __future__ import annotations

import math

import pytest

from vqa_cli.video import uniform_indices
from vqa_cli.video._sampling import nearest_keys, repair_timestamps

# ------------------------------------------------------------------ uniform_indices


def test_uniform_indices_properties() -> None:
    for total in range(1, 60):
        for n in range(1, 70):
            got = uniform_indices(total, n)
            assert len(got) == min(n, total)
            assert got == sorted(set(got))
            assert all(0 <= i < total for i in got)
            if n >= total:
                assert got == list(range(total))
            else:
                assert got == [math.floor((k + 0.5) * total / n) for k in range(n)]


def test_uniform_indices_examples_and_errors() -> None:
    assert uniform_indices(100, 1) == [50]
    assert uniform_indices(10, 2) == [2, 7]
    assert uniform_indices(5, 10) == [0, 1, 2, 3, 4]
    assert uniform_indices(0, 3) == []
    big = uniform_indices(10**12, 4)
    assert big == [125_000_000_000, 375_000_000_000, 625_000_000_000, 875_000_000_000]
    for bad in (0, -1):
        with pytest.raises(ValueError):
            uniform_indices(10, bad)


# ------------------------------------------------------------------ timestamps


def test_broken_timestamps_are_repaired() -> None:
    seconds, interval = repair_timestamps([0.0, 40.0, 80.0, 80.0, 160.0, 200.0], fps_from_header=999.0)
    assert interval == pytest.approx(0.04)
    assert seconds == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16, 0.2])
    shifted, _ = repair_timestamps([-80.0, -40.0, 0.0], fps_from_header=0.0)
    assert shifted == pytest.approx([0.0, 0.04, 0.08])
    single, interval = repair_timestamps([0.0], fps_from_header=0.0)
    assert single == [0.0] and interval > 0


# ------------------------------------------------------------------ nearest keyframes


def test_each_target_snaps_to_its_nearest_keyframe_inside_the_window_ties_to_the_earlier() -> None:
    keys = [0, 10, 20, 40]
    # 5 and 15 are halfway: the earlier keyframe; 12 -> 10, 31 -> 40 (9 away vs 11), 30 -> 20 (a tie).
    assert nearest_keys(keys, [5, 15, 12, 31, 30], range(0, 50)) == [0, 10, 10, 40, 20]
    # Keyframes outside the window are never chosen, however near.
    assert nearest_keys(keys, [3, 25, 45], range(10, 35)) == [10, 20, 20]
