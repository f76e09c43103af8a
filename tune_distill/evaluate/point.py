"""The point-cloud evaluator: K classifiers trained from scratch on the synthetic clouds, scored on every split.

Default protocol (docs/protocol-3d.md says where it comes from): PointNet (per-point MLP of
``depth`` layers from ``width`` channels, BatchNorm, max pooling, a 256-unit head), Adam with
``lr`` and weight decay 1e-4, a cosine schedule over ``epochs`` epochs, mini-batches of ``batch``
clouds, and on the training clouds only the standard augmentation: a random scale in [0.8, 1.25],
a shift in [-0.1, 0.1] per axis and jitter of std 0.01 clipped at 0.05 (plus, with ``rotate``, a
random rotation about the up axis). ``EvalSettings`` names the other choices (SGD with a step
schedule, unit-sphere normalisation of the training clouds, the reference PointNet with its input
T-Net, DGCNN, PointNet++); the named protocols that combine them are in ``recipe/config.py``.
Each split is scored once after the last epoch, every shape, in eval mode; test is never used to
choose anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.seeding import seeded
from ..core.types import Clouds, Domain
from ..data.points import augment_clouds
from ..nets import build_point_classifier
from .pictures import draw_grid
from .settings import EvalSettings, Progress, accuracy, train_models
from .stack import ModelStack, epoch_batches

EVAL_BATCH = 256  # test clouds per forward pass (one model)
# DGCNN and PointNet++ hold a (clouds, points, neighbours, channels) tensor: fewer clouds at once.
NET_EVAL_BATCH = {"pointnet": EVAL_BATCH, "dgcnn": 16, "pointnet2": 32}
MAX_DRAWN = 16  # clouds of a class in a picture (a split set has hundreds)


def _train(train_x: torch.Tensor, train_y: torch.Tensor, generators: Sequence[torch.Generator], settings: EvalSettings,
           up: int, params: Iterable[torch.Tensor], loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """The protocol's optimizer, schedule and data stream (``stack.epoch_batches``) for K models at
    once, shared by both paths. ``loss`` maps the stacked batches (K, b, P, 3) and labels (K, b)
    to the sum of the K models' losses.

    Dropout draws from torch's global generator, forked here and seeded from the first model's
    seed, so a run is reproducible; K models trained at once then draw their masks in another
    order than one by one (the only difference between the two paths)."""
    opt = make_optimizer(params, settings)
    schedule = make_schedule(opt, settings)
    augment = (lambda x, g: augment_clouds(x, g, up, settings.rotate)) if settings.augment else None
    if settings.normalize:
        train_x = unit_sphere(train_x)
    devices = [train_x.device] if train_x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(generators[0].initial_seed())
        for _ in range(settings.epochs):
            # BatchNorm needs two clouds: a last batch of one is skipped.
            for x, y in epoch_batches(train_x, train_y, generators, settings.batch, augment, min_size=2):
                value = loss(x, y)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
            schedule.step()


def make_optimizer(params: Iterable[torch.Tensor], settings: EvalSettings) -> torch.optim.Optimizer:
    """Adam, or SGD with ``settings.momentum``, at ``settings.lr`` with ``settings.weight_decay``."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, settings: EvalSettings) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing to 0 over the epochs, or (``step``) lr x 0.1 from half of them on."""
    if settings.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, [settings.epochs // 2], gamma=0.1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)


def unit_sphere(x: torch.Tensor) -> torch.Tensor:
    """Each cloud of (B, P, D) centred on its mean and scaled so that its farthest point has norm 1
    (a cloud of one repeated point is only centred)."""
    x = x - x.mean(1, keepdim=True)
    radius = x.norm(dim=-1).amax(1).clamp_min(1e-12)
    return x / radius[:, None, None]


def build_net(in_channels: int, num_classes: int, settings: EvalSettings) -> torch.nn.Module:
    """The evaluation network ``settings.net`` names, freshly initialised from the global generator."""
    s = settings
    return build_point_classifier(s.net, in_channels, num_classes, s.width, s.depth, s.head, channels=s.channels,
                                  dropout=s.dropout, last_relu=s.last_relu, tnet=s.tnet)


def _fresh_net(train_x: torch.Tensor, num_classes: int, settings: EvalSettings, seed: int) -> torch.nn.Module:
    return seeded(seed, lambda: build_net(train_x.shape[-1], num_classes, settings)).to(train_x.device)


def train_one(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, settings: EvalSettings, seed: int,
              up: int = 2) -> torch.nn.Module:
    """One fresh network (``settings.net``) trained on (train_x, train_y), random streams seeded ``seed``."""
    net = _fresh_net(train_x, num_classes, settings, seed)
    _train(train_x, train_y, [torch.Generator().manual_seed(seed)], settings, up, net.parameters(),
           lambda x, y: F.cross_entropy(net(x[0]), y[0]))
    return net


def train_and_test(train_x: torch.Tensor, train_y: torch.Tensor, eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   num_classes: int, settings: EvalSettings, seed: int, up: int = 2) -> dict[str, float]:
    """Train one fresh network on (train_x, train_y); its accuracy on each named evaluation set."""
    net = train_one(train_x, train_y, num_classes, settings, seed, up)
    return {name: accuracy(net, x, y, NET_EVAL_BATCH[settings.net], settings.metric) for name, (x, y) in eval_sets.items()}


def train_batched(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, settings: EvalSettings,
                  seeds: Sequence[int], up: int = 2, vectorise: bool | None = None) -> ModelStack:
    """``train_and_test``'s training for every seed as one computation (``evaluate.stack``): the
    same models up to float rounding, each with its own random streams and BatchNorm statistics."""
    stack = ModelStack([_fresh_net(train_x, num_classes, settings, s) for s in seeds], vectorise)
    _train(train_x, train_y, [torch.Generator().manual_seed(s) for s in seeds], settings, up,
           stack.params.values(), stack.loss)
    return stack


class PointEvaluator:
    """The evaluator for 3D point clouds: pads the splits once, then judges synthetic sets."""

    def __init__(self, domain: Domain, num_classes: int, splits: dict[str, Clouds], settings: EvalSettings,
                 device: torch.device):
        self.domain, self.num_classes, self.settings, self.device = domain, num_classes, settings, device
        self.sets = {name: (c.batch(torch.arange(len(c))).padded().to(device), c.labels.to(device))
                     for name, c in splits.items()}

    def __call__(self, points: torch.Tensor, labels: torch.Tensor, seed: int,
                 progress: Progress | None = None) -> dict[str, list[float]]:
        x, y = points.detach().to(self.device), labels.to(self.device)
        settings, up = self.settings, self.domain.up
        batch = NET_EVAL_BATCH[settings.net]

        def fit_all(seeds: Sequence[int]) -> list[dict[str, float]]:
            return train_batched(x, y, self.num_classes, settings, seeds, up).scores(self.sets, batch, settings.metric)

        return train_models(settings, seed, lambda s: train_and_test(x, y, self.sets, self.num_classes, settings, s, up),
                            fit_all, progress)


def draw_clouds(points: torch.Tensor, labels: torch.Tensor, path: Path, class_names: tuple[str, ...] = ()) -> None:
    """Each cloud as a 3D scatter (z up), one row per class, at most ``MAX_DRAWN`` clouds of a
    class; with one cloud per class, three views of it (from the front-left, the front-right and
    above)."""
    pts, labs = points.cpu().numpy(), labels.numpy()
    keep = np.concatenate([np.flatnonzero(labs == c)[:MAX_DRAWN] for c in np.unique(labs)])
    pts, labs = pts[keep], labs[keep]
    views = [(20, -60), (20, 30), (75, -90)] if len(labs) == len(set(labs.tolist())) else [(20, -60)]
    index = [(i, v) for i in range(len(labs)) for v in views]

    def paint(ax, k: int) -> None:
        i, (elev, azim) = index[k]
        p = pts[i]
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=0.4, c=p[:, 2], cmap="viridis", depthshade=False)
        ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
        ax.view_init(elev=elev, azim=azim)

    draw_grid(path, labs[[i for i, _ in index]], class_names, paint, projection="3d", size=1.3)
