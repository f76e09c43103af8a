"""The evaluator seam: fit K classifiers from scratch on a synthetic set and score them on named splits.

An evaluator is built once per run from the dataset's splits (``build_evaluator``), then called
on synthetic sets: ``evaluator(points, labels, seed, progress) -> {split: [accuracy per model]}``.
``draw_set`` draws a synthetic set as its classifiers see it. A dataset's spec names its
evaluator: ``image`` (render to binary images, DC's ConvNet) or ``point`` (PointNet on the
coordinates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from ..core.types import Clouds, Domain
from .settings import EvalSettings, Progress


class Evaluator(Protocol):
    def __call__(self, points: torch.Tensor, labels: torch.Tensor, seed: int,
                 progress: Progress | None = None) -> dict[str, list[float]]: ...


def build_evaluator(kind: str, domain: Domain, num_classes: int, splits: dict[str, Clouds], settings: EvalSettings,
                    device: torch.device | str = "cpu") -> Evaluator:
    """The ``kind`` evaluator (``image`` or ``point``, as the dataset's spec says) for data in
    ``domain``, scoring on ``splits`` (name -> clouds)."""
    device = torch.device(device)
    if kind == "image":
        from .image import ImageEvaluator

        return ImageEvaluator(domain.grid_shape, num_classes, splits, settings, device)
    from .point import PointEvaluator

    return PointEvaluator(domain, num_classes, splits, settings, device)


def draw_set(domain: Domain, points: torch.Tensor, labels: torch.Tensor, path: Path,
             class_names: tuple[str, ...] = ()) -> None:
    """A PNG of a synthetic set, one row per class: rendered images, or 3D views of the clouds."""
    if domain.grid_shape is not None:
        from .image import draw_images

        draw_images(domain.grid_shape, points, labels, path, class_names)
    else:
        from .point import draw_clouds

        draw_clouds(points, labels, path, class_names)


__all__ = ["EvalSettings", "Evaluator", "Progress", "build_evaluator", "draw_set"]
