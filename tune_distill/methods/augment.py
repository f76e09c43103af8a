"""Differentiable augmentation of point clouds, applied identically to real and synthetic sets.

As in DSA, one random transform is drawn per matching step and applied to both the real batch
and the synthetic clouds of a class, so matching compares like with like; the transform is a
smooth function of the coordinates, so gradients pass through it. Rotation is in the domain's
rotation plane (the image plane for MNIST, about the up axis for 3D shapes), about its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.types import Domain, PointBatch


@dataclass(frozen=True)
class PointTransform:
    """An affine map of the free axes about the grid centre, plus per-point jitter."""

    matrix: torch.Tensor  # (D, D)
    shift: torch.Tensor  # (D,)
    centre: torch.Tensor  # (D,)
    jitter: float
    seed: int

    def __call__(self, batch: PointBatch) -> PointBatch:
        # Drawn on the CPU so a seed gives the same transform on any device; applied where the points are.
        matrix, shift, centre = (t.to(batch.points) for t in (self.matrix, self.shift, self.centre))
        p = (batch.points - centre) @ matrix.T + centre + shift
        if self.jitter > 0:
            g = torch.Generator(device=p.device).manual_seed(self.seed)
            noise = torch.randn(p.shape, generator=g, device=p.device) * self.jitter
            p = p + noise * (matrix.diagonal() != 0)  # no jitter along pinned axes
        return PointBatch(p, batch.cloud, batch.size)


def sample_transform(domain: Domain, rotate: float, scale: float, translate: float, jitter: float,
                     generator: torch.Generator) -> PointTransform:
    """Draw one transform: rotation in [-rotate, rotate] degrees, per-axis scale in [1-scale, 1+scale],
    shift up to ``translate`` of each axis's extent (the grid's size, the ball's diameter), jitter
    of std ``jitter`` (cells, or units of the ball's frame)."""
    d = domain.dims
    free = domain.free
    u = torch.rand(3 + 2 * d, generator=generator) * 2 - 1  # uniform in [-1, 1]
    matrix = torch.zeros(d, d)
    for i in free:
        matrix[i, i] = 1 + scale * float(u[3 + i])
    plane = domain.rotation_plane
    if plane is not None:
        a, b = plane
        t = math.radians(rotate) * float(u[0])
        rot = torch.eye(d)
        rot[a, a], rot[a, b], rot[b, a], rot[b, b] = math.cos(t), -math.sin(t), math.sin(t), math.cos(t)
        matrix = rot @ matrix
    extent = domain.high - domain.low
    shift = torch.zeros(d)
    for i in free:
        shift[i] = translate * float(u[3 + d + i]) * extent[i]
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return PointTransform(matrix, shift, domain.centre, jitter, seed)
