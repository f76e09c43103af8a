"""The search objective: from per-seed accuracies to the one number the search optimises.

A trial runs its config over several seeds; each seed's accuracy is the mean over that run's
evaluation models (``RunResult.acc_mean``). Across seeds we report the mean, the (population)
standard deviation and the minimum, and the objective is one of:

- ``acc_mean``: the mean accuracy over seeds;
- ``robust``: ``acc_mean - k * acc_std``, which prefers configs that work for every seed;
- ``acc_min``: the worst seed.

No Ray and no tensors here: the trainable, the results loader and the tests share it.
"""

from __future__ import annotations

import math

import numpy as np

OBJECTIVES = ("acc_mean", "robust", "acc_min")


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
