"""Clouds that are binary images: rendering them, and DC's image augmentation.

Shared by the image evaluator (which trains ConvNets on the rendered synthetic set) and by
trajectory matching (whose experts train on rendered real digits), so both see the very same
pixels and the same augmentation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core.types import PointBatch, voxelize


def render(batch: PointBatch, grid_shape: tuple[int, ...]) -> torch.Tensor:
    """Binary images (B, 1, H, W): a pixel is 1 where a point rounds into it.

    The grid must have exactly two axes of extent > 1 (an image grid such as MNIST's 1x28x28).
    """
    free = [g for g in grid_shape if g > 1]
    if len(free) != 2:
        raise ValueError(f"image evaluation needs a grid with two free axes, got {grid_shape}")
    return voxelize(batch, grid_shape).reshape(batch.size, 1, *free)


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
