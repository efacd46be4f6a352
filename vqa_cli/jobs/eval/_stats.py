"""Accuracy, its 95 % confidence interval clustered by video, and the summary of a run's records.

Cluster-robust standard error of a mean (questions about one video are correlated): with the
per-question scores y_i in {0, 1}, p = sum(y) / n and, per video g, e_g = sum over its questions of (y_i - p),

    var(p) = G / (G - 1) * sum_g e_g^2 / n^2,     ci95 = p -/+ 1.96 * sqrt(var(p)), clipped to [0, 1].

With fewer than two videos the interval is [0, 1] (nothing is known about the spread).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

Z95 = 1.959963984540054


def clustered_ci(scores: list[float], clusters: list[str]) -> tuple[float, float]:
    """The 95 % interval of the mean of ``scores`` (cluster-robust standard error, one cluster per video)."""
    n = len(scores)
    if n == 0:
        return (0.0, 0.0)
    p = sum(scores) / n
    residual: dict[str, float] = defaultdict(float)
    for y, g in zip(scores, clusters, strict=True):
        residual[g] += y - p
    groups = len(residual)
    if groups < 2:
        return (0.0, 1.0)
    var = groups / (groups - 1) * sum(e * e for e in residual.values()) / (n * n)
    half = Z95 * math.sqrt(var)
    return (max(0.0, p - half), min(1.0, p + half))


def _acc(recs: list[dict]) -> dict:
    scored = [r for r in recs if r.get("counted", True)]
    n = len(scored)
    return {"accuracy": round(sum(r["correct"] for r in scored) / n, 6) if n else 0.0, "n": n}


def _by(recs: list[dict], key: str) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        if r.get(key):
            groups[r[key]].append(r)
    return {name: _acc(rs) for name, rs in sorted(groups.items())}


def _mean_of(groups: dict) -> float | None:
    accs = [g["accuracy"] for g in groups.values() if g["n"]]
    return round(sum(accs) / len(accs), 6) if accs else None


def summarize(records: Iterable[dict]) -> dict:
    """One mode's summary from its question records (errors counted apart; excluded answers out of n)."""
    records = list(records)
    recs = [r for r in records if r.get("error") is None]
    errors = sum(1 for r in records if r.get("error") is not None)
    scored = [r for r in recs if r.get("counted", True)]
    overall = _acc(recs)
    low, high = clustered_ci([float(r["correct"]) for r in scored], [r["video"] for r in scored])
    unparsed = sum(1 for r in recs if r.get("unparsed"))
    by_category = _by(recs, "category")
    return {
        **overall,
        "unparsed": unparsed,
        "unparsed_rate": round(unparsed / len(recs), 6) if recs else 0.0,
        "excluded": len(recs) - len(scored),
        "questions": len(recs),
        "videos": len({r["video"] for r in recs}),
        "errors": errors,
        "ci95": [round(low, 6), round(high, 6)],
        # the unweighted mean over categories: what MLVU's M-Avg, lmms-eval's MLVU score and MVBench's average of
        # its tasks report (equal to `accuracy` when every category has as many questions)
        "category_mean": _mean_of(by_category),
        "by_category": by_category,
        "by_task": _by(recs, "task"),
        "by_duration": _by(recs, "duration"),
    }
