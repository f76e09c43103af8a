"""The image evaluator: render synthetic clouds to binary images and train DC's ConvNet on them from scratch.

The protocol is DC's: K fresh ConvNets (width 128, depth 3, instance norm, average pooling),
SGD with lr 0.01, momentum 0.9, weight decay 5e-4, E epochs in batches of 256 with the learning
rate divided by 10 after half of them, DC's crop/scale/rotate augmentation (one of the three per
image) on the *training* images only, and the test accuracy on binarised test digits.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.types import Clouds, PointBatch
from ..data.image import dc_augment, render
from ..nets.convnet import ConvNet
from .pictures import draw_grid
from .settings import EvalSettings, Progress


def accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 2000) -> float:
    """Top-1 accuracy of ``net`` on images, in batches, without gradients."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in zip(images.split(batch), labels.split(batch)):
            correct += int((net(x).argmax(1) == y).sum())
    net.train()
    return correct / max(1, len(labels))


def train_and_test(train_x: torch.Tensor, train_y: torch.Tensor, eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   num_classes: int, settings: EvalSettings, seed: int) -> dict[str, float]:
    """Train one fresh ConvNet on (train_x, train_y); its accuracy on each named evaluation set."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ConvNet(train_x.shape[1], num_classes, train_x.shape[-1], settings.width, settings.depth)
    net = net.to(train_x.device)
    opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=0.9, weight_decay=5e-4)
    n = train_x.shape[0]
    for epoch in range(settings.epochs):
        if epoch == settings.epochs // 2:
            for group in opt.param_groups:
                group["lr"] = settings.lr * 0.1
        order = torch.randperm(n, generator=generator).to(train_x.device)
        for start in range(0, n, settings.batch):
            idx = order[start : start + settings.batch]
            x, y = train_x[idx], train_y[idx]
            if settings.augment:
                x = dc_augment(x, generator)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {name: accuracy(net, x, y) for name, (x, y) in eval_sets.items()}


def evaluate_images(train_x: torch.Tensor, train_y: torch.Tensor, eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    num_classes: int, settings: EvalSettings, seed: int,
                    progress: Progress | None = None) -> dict[str, list[float]]:
    """Per evaluation set, the accuracies of ``settings.models`` ConvNets trained from scratch
    (seeds seed, seed+1, ...); every set is scored by the same trained networks."""
    runs = []
    for k in range(settings.models):
        runs.append(train_and_test(train_x, train_y, eval_sets, num_classes, settings, seed + k))
        if progress is not None:
            progress(k + 1, settings.models)
    return {name: [r[name] for r in runs] for name in eval_sets}


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
