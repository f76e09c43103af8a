"""How a synthetic set is evaluated: the settings every evaluator takes (the ``eval_*`` config keys),
and the K classifiers that every evaluator trains, one by one or at once, and scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

Progress = Callable[[int, int], None]  # (models trained so far, models in all)
Metric = Literal["accuracy", "balanced"]
Net = Literal["pointnet", "dgcnn", "pointnet2"]


@dataclass(frozen=True)
class EvalSettings:
    """K classifiers trained from scratch: how many, how long, how wide, how.

    ``lr`` is SGD's for the image ConvNet and Adam's for PointNet; ``rotate`` (point clouds only)
    adds a random rotation about the up axis to the training augmentation. ``batched`` trains the K
    models as one computation (``evaluate.stack``): the same random streams and, up to float
    rounding, the same results; on a GPU each kernel launch does K models' work. ``metric`` is how
    a split is scored: ``accuracy`` (top-1 over its shapes) or ``balanced`` (top-1 per class,
    averaged over the classes), which weighs a split as if every class had as many shapes: the
    score to select on when the held-out split is imbalanced and the test split is not.

    Point clouds only (the image ConvNet ignores them): ``net`` is the architecture
    (``evaluate.point.build_net``); ``channels``, ``head``, ``dropout``, ``last_relu`` and
    ``tnet`` shape PointNet (``nets.pointnet``); ``optimizer`` (adam | sgd, with ``momentum``) and
    ``weight_decay`` train it under ``schedule`` (cosine to 0, or step: lr x 0.1 from half of the
    epochs on); ``normalize`` re-centres each training cloud on its mean and scales it into the
    unit sphere before training. ``protocol`` only records the named preset the values came from.
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
    metric: Metric = "accuracy"
    net: Net = "pointnet"
    channels: tuple[int, ...] = ()
    head: tuple[int, ...] = (256,)
    dropout: float = 0.0
    last_relu: bool = True
    tnet: bool = False
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "step"] = "cosine"
    normalize: bool = False
    protocol: str | None = None


def train_models(settings: EvalSettings, seed: int, fit: Callable[[int], dict[str, float]],
                 fit_all: Callable[[Sequence[int]], list[dict[str, float]]],
                 progress: Progress | None = None) -> dict[str, list[float]]:
    """Per split, the accuracies of ``settings.models`` classifiers (seeds seed, seed+1, ...):
    one by one through ``fit``, or with ``settings.batched`` all at once through ``fit_all`` (then
    ``progress`` hears of the K models only when all are done)."""
    if progress is not None:
        progress(0, settings.models)
    if settings.batched:
        runs = fit_all([seed + k for k in range(settings.models)])
        if progress is not None:
            progress(settings.models, settings.models)
    else:
        runs = []
        for k in range(settings.models):
            runs.append(fit(seed + k))
            if progress is not None:
                progress(k + 1, settings.models)
    return {name: [r[name] for r in runs] for name in runs[0]} if runs else {}


def predictions(predict: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch: int) -> torch.Tensor:
    """The class ``predict`` (inputs (b, ...) -> logits (b, classes)) gives each input, ``batch``
    at a time, without gradients, on the CPU."""
    with torch.no_grad():
        return torch.cat([predict(x).argmax(1).cpu() for x in inputs.split(batch)])


def class_accuracies(predicted: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Each class present in ``labels``: the fraction of its inputs predicted as it."""
    labels = labels.cpu()
    return {int(c): float((predicted[labels == c] == c).double().mean()) for c in labels.unique()}


def top1(predict: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor,
         batch: int, metric: Metric = "accuracy") -> float:
    """Top-1 accuracy of ``predict`` on a stack of inputs (``predictions``); with
    ``metric="balanced"`` the mean of ``class_accuracies``."""
    if not len(labels):
        return 0.0
    predicted = predictions(predict, inputs, batch)
    if metric == "balanced":
        per_class = class_accuracies(predicted, labels)
        return sum(per_class.values()) / len(per_class)
    return int((predicted == labels.cpu()).sum()) / len(labels)


def accuracy(net: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int,
             metric: Metric = "accuracy") -> float:
    """``top1`` of ``net`` in eval mode on a stack of inputs (images, or padded point clouds)."""
    net.eval()
    acc = top1(net, inputs, labels, batch, metric)
    net.train()
    return acc
