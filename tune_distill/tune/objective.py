"""The search objectives: from per-seed runs to the numbers the search optimises.

A trial runs its config over several seeds; each seed's accuracy is the mean over that run's
evaluation models (``RunResult.acc_mean``). Across seeds we report the mean, the (population)
standard deviation and the minimum, and the accuracy objective is one of:

- ``acc_mean``: the mean accuracy over seeds;
- ``robust``: ``acc_mean - k * acc_std``, which prefers configs that work for every seed;
- ``acc_min``: the worst seed.

Every trial also reports what its set costs (``COSTS``): ``stored_points`` and ``stored_floats``
per class (what the synthetic set stores, the same for every seed) and ``distill_seconds``, the
mean distillation time of a seed. A multi-objective search weighs one accuracy objective against
costs; ``pareto_mask`` finds its non-dominated trials.

No Ray and no tensors here: the trainable, the results loader and the tests share it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

OBJECTIVES = ("acc_mean", "robust", "acc_min")
COSTS = ("stored_points", "stored_floats", "distill_seconds")


def summarize(accuracies: list[float], objective: str, robust_k: float = 1.0) -> dict[str, float]:
    """``acc_mean``, ``acc_std``, ``acc_min`` and ``objective`` of per-seed accuracies.

    With no accuracies every value is NaN (a trial that finished no seed has no objective).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    if not accuracies:
        return {"acc_mean": math.nan, "acc_std": math.nan, "acc_min": math.nan, "objective": math.nan}
    acc = np.asarray(accuracies, dtype=np.float64)
    mean, std, low = float(acc.mean()), float(acc.std()), float(acc.min())
    value = {"acc_mean": mean, "robust": mean - robust_k * std, "acc_min": low}[objective]
    return {"acc_mean": mean, "acc_std": std, "acc_min": low, "objective": value}


def costs(finished: list[dict]) -> dict[str, float]:
    """``COSTS`` of a trial's finished seeds (NaN before any, and for seeds recorded without them)."""
    if not finished:
        return dict.fromkeys(COSTS, math.nan)
    first = finished[0]  # every seed stores a set of the same shape
    seconds = [f.get("distill_seconds", math.nan) for f in finished]
    return {"stored_points": float(first.get("stored_points", math.nan)),
            "stored_floats": float(first.get("stored_floats", math.nan)),
            "distill_seconds": float(np.mean(seconds))}


def metric_name(objective: str) -> str:
    """The reported metric (and results column) that holds ``objective``: accuracy objectives are
    reported as ``objective``, costs under their own names."""
    return "objective" if objective in OBJECTIVES else objective


def pareto_mask(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """True for the rows of ``values`` (trials x objectives) that no other row dominates.

    A row dominates another when it is at least as good in every objective (``modes``: ``max``
    or ``min`` per column) and better in one. Rows with a NaN are never on the front and dominate
    nothing. Equal rows do not dominate each other: both stay on the front.
    """
    v = np.asarray(values, dtype=np.float64).reshape(len(values), len(modes))
    v = v * np.where(np.asarray(modes) == "max", 1.0, -1.0)  # now every column is maximised
    ok = ~np.isnan(v).any(axis=1)
    at_least = (v[:, None, :] >= v[None, :, :]).all(axis=2)  # [j, i]: j is at least as good as i everywhere
    better = (v[:, None, :] > v[None, :, :]).any(axis=2)
    dominated = (at_least & better & ok[:, None]).any(axis=0)
    return ok & ~dominated
