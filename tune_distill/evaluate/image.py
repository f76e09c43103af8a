"""The image evaluator: render synthetic clouds to binary images and train DC's ConvNet on them from scratch.

The protocol is DC's: K fresh ConvNets (width 128, depth 3, instance norm, average pooling),
SGD with lr 0.01, momentum 0.9, weight decay 5e-4, E epochs in batches of 256 with the learning
rate divided by 10 after half of them, DC's crop/scale/rotate augmentation (one of the three per
image) on the *training* images only, and the test accuracy on binarised test digits.

The K models train one after another (``train_one``), or with ``EvalSettings.batched`` as one
computation (``train_batched``, ``evaluate.stack``), where on a GPU each kernel launch does K
models' work. Each model keeps its own random streams, so both give the same models up to float
rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..core.seeding import seeded
from ..core.types import Clouds, PointBatch
from ..data.image import dc_augment, render
from ..nets.convnet import ConvNet
from .pictures import draw_grid
from .settings import EvalSettings, Progress, accuracy, train_models
from .stack import ModelStack, epoch_batches

MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4  # DC's SGD
EVAL_BATCH = 2000  # test images per forward pass (one model)


def _fresh_net(train_x: torch.Tensor, num_classes: int, settings: EvalSettings, seed: int) -> ConvNet:
    """Model ``seed``'s untrained ConvNet: its init draws from the global stream seeded ``seed``,
    forked so the caller's stream is left as it was."""
    net = seeded(seed, lambda: ConvNet(train_x.shape[1], num_classes, train_x.shape[-1], settings.width, settings.depth))
    return net.to(train_x.device)


Step = Callable[[torch.Tensor, torch.Tensor, float], None]  # (images (K, b, C, H, W), labels (K, b), lr)


def _train(train_x: torch.Tensor, train_y: torch.Tensor, generators: Sequence[torch.Generator],
           settings: EvalSettings, step: Step) -> None:
    """The protocol's schedule and data stream (``stack.epoch_batches``) for K models at once,
    shared by both paths; ``step`` trains all K on their (stacked) batches."""
    # One augmentation call per model: each draws from its own generator, and DC's fill value is
    # the mean of that model's batch.
    augment = dc_augment if settings.augment else None
    for epoch in range(settings.epochs):
        lr = settings.lr * (0.1 if epoch >= settings.epochs // 2 else 1.0)
        for x, y in epoch_batches(train_x, train_y, generators, settings.batch, augment):
            step(x, y, lr)


def train_one(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, settings: EvalSettings,
              seed: int) -> ConvNet:
    """One fresh ConvNet trained on (train_x, train_y) with ``torch.optim.SGD``, random streams seeded ``seed``."""
    net = _fresh_net(train_x, num_classes, settings, seed)
    opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(net(x[0]), y[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    _train(train_x, train_y, [torch.Generator().manual_seed(seed)], settings, step)
    return net


def train_and_test(train_x: torch.Tensor, train_y: torch.Tensor, eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   num_classes: int, settings: EvalSettings, seed: int) -> dict[str, float]:
    """Train one fresh ConvNet on (train_x, train_y); its accuracy on each named evaluation set."""
    net = train_one(train_x, train_y, num_classes, settings, seed)
    return {name: accuracy(net, x, y, EVAL_BATCH, settings.metric) for name, (x, y) in eval_sets.items()}


def train_batched(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, settings: EvalSettings,
                  seeds: Sequence[int], vectorise: bool | None = None) -> ModelStack:
    """``train_one`` for every seed as one computation (``evaluate.stack``): the K ConvNets'
    parameters stacked and stepped by one ``torch.optim.SGD``.

    Each model keeps its own random streams (init, permutations, augmentation), so they are
    ``train_one``'s up to float rounding (on CUDA a vmapped convolution is a grouped one, which
    sums in another order).
    """
    stack = ModelStack([_fresh_net(train_x, num_classes, settings, s) for s in seeds], vectorise)
    opt = torch.optim.SGD(list(stack.params.values()), lr=settings.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        for group in opt.param_groups:
            group["lr"] = lr
        loss = stack.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    _train(train_x, train_y, [torch.Generator().manual_seed(s) for s in seeds], settings, step)
    return stack


def train_and_test_batched(train_x: torch.Tensor, train_y: torch.Tensor,
                           eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                           settings: EvalSettings, seeds: Sequence[int]) -> list[dict[str, float]]:
    """``train_and_test`` for every seed, all models trained at once."""
    return train_batched(train_x, train_y, num_classes, settings, seeds).scores(eval_sets, EVAL_BATCH, settings.metric)


def evaluate_images(train_x: torch.Tensor, train_y: torch.Tensor, eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    num_classes: int, settings: EvalSettings, seed: int,
                    progress: Progress | None = None) -> dict[str, list[float]]:
    """Per evaluation set, the accuracies of ``settings.models`` ConvNets trained from scratch
    (seeds seed, seed+1, ...); every set is scored by the same trained networks.

    ``settings.batched`` trains them all at once (``train_and_test_batched``).
    """
    return train_models(settings, seed, lambda s: train_and_test(train_x, train_y, eval_sets, num_classes, settings, s),
                        lambda seeds: train_and_test_batched(train_x, train_y, eval_sets, num_classes, settings, seeds),
                        progress)


class ImageEvaluator:
    """The evaluator for image datasets: renders the splits once, then judges synthetic sets."""

    def __init__(self, grid_shape: tuple[int, ...], num_classes: int, splits: dict[str, Clouds],
                 settings: EvalSettings, device: torch.device):
        self.grid_shape, self.num_classes, self.settings, self.device = grid_shape, num_classes, settings, device
        self.sets = {name: (render(c.batch(torch.arange(len(c))), grid_shape).to(device), c.labels.to(device))
                     for name, c in splits.items()}

    def __call__(self, points: torch.Tensor, labels: torch.Tensor, seed: int,
                 progress: Progress | None = None) -> dict[str, list[float]]:
        images = render(PointBatch.from_padded(points.detach().cpu()), self.grid_shape).to(self.device)
        return evaluate_images(images, labels.to(self.device), self.sets, self.num_classes, self.settings, seed, progress)



def draw_images(grid_shape: tuple[int, ...], points: torch.Tensor, labels: torch.Tensor, path: Path,
                class_names: tuple[str, ...] = ()) -> None:
    """The rendered set as a PNG: one row per class, one column per cloud."""
    images = render(PointBatch.from_padded(points.cpu()), grid_shape)[:, 0].numpy()
    draw_grid(path, labels.numpy(), class_names, lambda ax, i: ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=1))
