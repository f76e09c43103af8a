"""Evaluation: render synthetic clouds to binary images and train DC's ConvNet on them from scratch.

The protocol is DC's: K fresh ConvNets (width 128, depth 3, instance norm, average pooling),
SGD with lr 0.01, momentum 0.9, weight decay 5e-4, E epochs in batches of 256 with the learning
rate divided by 10 after half of them, DC's crop/scale/rotate augmentation (one of the three per
image) on the *training* images only, and the test accuracy on binarised test digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data.base import PointBatch, voxelize
from .nets.convnet import ConvNet


def render(batch: PointBatch, grid_shape: tuple[int, ...]) -> torch.Tensor:
    """Binary images (B, 1, H, W): a pixel is 1 where a point rounds into it.

    The grid must have exactly two axes of extent > 1 (an image grid such as MNIST's 1x28x28).
    """
    free = [g for g in grid_shape if g > 1]
    if len(free) != 2:
        raise ValueError(f"image evaluation needs a grid with two free axes, got {grid_shape}")
    return voxelize(batch, grid_shape).reshape(batch.size, 1, *free)


@dataclass(frozen=True)
class EvalSettings:
    """How a synthetic set is evaluated (the ``eval_*`` keys of the config)."""

    models: int = 5
    epochs: int = 1000
    width: int = 128
    depth: int = 3
    lr: float = 0.01
    batch: int = 256
    augment: bool = True


def dc_augment(images: torch.Tensor, generator: torch.Generator, crop: int = 4, scale: float = 0.2,
               rotate: float = 45.0) -> torch.Tensor:
    """DC's crop/scale/rotate augmentation for MNIST: each image gets one of the three at random.

    crop: a shift of up to ``crop`` pixels, the border filled with the batch mean; scale: height
    and width resized independently by a factor in [1-scale, 1+scale] about the centre (nearest
    neighbour, zero border); rotate: an angle in [-rotate, rotate) degrees (bilinear, mean border).
    All three are one ``grid_sample`` per interpolation mode.
    """
    n, _, h, w = images.shape
    device = images.device
    choice = torch.randint(0, 3, (n,), generator=generator)
    r = torch.rand(n, 4, generator=generator)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    # crop: an integer shift in [-crop, crop - 1] pixels; normalised coordinates span 2 / size per pixel.
    dy = torch.floor(r[:, 0] * 2 * crop) - crop
    dx = torch.floor(r[:, 1] * 2 * crop) - crop
    is_crop = choice == 0
    theta[is_crop, 0, 2] = -dx[is_crop] * 2 / w
    theta[is_crop, 1, 2] = -dy[is_crop] * 2 / h
    # scale: sampling grid divided by the scale factor (output pixel -> source pixel).
    sy = torch.floor((1 - scale + 2 * scale * r[:, 2]) * h) / h
    sx = torch.floor((1 - scale + 2 * scale * r[:, 3]) * h) / w
    is_scale = choice == 1
    theta[is_scale, 0, 0] = 1 / sx[is_scale]
    theta[is_scale, 1, 1] = 1 / sy[is_scale]
    # rotate: integer degrees in [-rotate, rotate).
    angle = torch.floor(-rotate + 2 * rotate * r[:, 0]) * math.pi / 180
    is_rot = choice == 2
    theta[is_rot, 0, 0] = torch.cos(angle[is_rot])
    theta[is_rot, 0, 1] = -torch.sin(angle[is_rot])
    theta[is_rot, 1, 0] = torch.sin(angle[is_rot])
    theta[is_rot, 1, 1] = torch.cos(angle[is_rot])

    mean = images.mean()
    fill = torch.where(is_scale, torch.zeros(()), mean.cpu()).to(device).view(n, 1, 1, 1)
    grid = F.affine_grid(theta.to(device), list(images.shape), align_corners=False)
    shifted = images - fill
    out = torch.empty_like(images)
    nearest = ~is_rot.to(device)
    if bool(nearest.any()):
        out[nearest] = F.grid_sample(shifted[nearest], grid[nearest], mode="nearest", align_corners=False)
    if bool((~nearest).any()):
        out[~nearest] = F.grid_sample(shifted[~nearest], grid[~nearest], mode="bilinear", align_corners=False)
    return out + fill


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
                    num_classes: int, settings: EvalSettings, seed: int) -> dict[str, list[float]]:
    """Per evaluation set, the accuracies of ``settings.models`` ConvNets trained from scratch
    (seeds seed, seed+1, ...); every set is scored by the same trained networks."""
    runs = [train_and_test(train_x, train_y, eval_sets, num_classes, settings, seed + k) for k in range(settings.models)]
    return {name: [r[name] for r in runs] for name in eval_sets}
