"""How a synthetic set is evaluated: the settings every evaluator takes (the ``eval_*`` config keys),
and the loop over the K classifiers that every evaluator runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

Progress = Callable[[int, int], None]  # (models trained so far, models in all)


@dataclass(frozen=True)
class EvalSettings:
    """K classifiers trained from scratch: how many, how long, how wide, how.

    ``lr`` is SGD's for the image ConvNet and Adam's for PointNet; ``rotate`` (point clouds only)
    adds a random rotation about the up axis to the training augmentation. ``batched`` (image
    ConvNets only) trains the K models as one vmapped computation: the same random streams and,
    up to float rounding, the same results; meant for GPUs (on a CPU it is slower).
    """

    models: int = 5
    epochs: int = 1000
    width: int = 128
    depth: int = 3
    lr: float = 0.01
    batch: int = 256
    augment: bool = True
    rotate: bool = False
    batched: bool = False


def each_model(models: int, seed: int, fit: Callable[[int], dict[str, float]],
               progress: Progress | None = None) -> dict[str, list[float]]:
    """Per split, the accuracies of ``models`` classifiers, ``fit(seed + k)`` training and scoring
    the k-th one; ``progress`` hears of each as it ends (and of none done, first)."""
    if progress is not None:
        progress(0, models)
    runs = []
    for k in range(models):
        runs.append(fit(seed + k))
        if progress is not None:
            progress(k + 1, models)
    return {name: [r[name] for r in runs] for name in runs[0]} if runs else {}
