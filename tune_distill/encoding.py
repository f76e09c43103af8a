"""Encodings: how a batch of point clouds becomes a network input.

``features`` is the paper's "coordinates as features": points are quantised to cells (the
sparse structure) and each cell's features are its points' coordinates, so gradients reach the
coordinates through the feature values only. ``splat`` spreads each point onto its neighbouring
cells with weights that are smooth in the point's position (linear interpolation or a gaussian)
and combines them into an occupancy in [0, 1], so moving a point moves mass between cells and the
gradient says where a point should go.

Both produce either a ``SparseTensor`` (sparse family) or a dense (B, C, *grid) tensor (dense
family). Axes of extent one are pinned: nothing is spread along them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .data.base import PointBatch
from .sparse import CoordinateManager, SparseTensor, to_dense, unique_cells


@dataclass(frozen=True)
class Encoding:
    """A configured encoding; call it on a batch to get the network input."""

    kind: str = "features"  # features | splat
    kernel: str = "linear"  # splat: linear | gaussian
    sigma: float = 0.5  # splat: gaussian std in cells
    combine: str = "clamp"  # splat: clamp | soft_or

    def in_channels(self, dims: int) -> int:
        return dims if self.kind == "features" else 1

    def __call__(self, batch: PointBatch, grid_shape: tuple[int, ...], sparse: bool):
        if self.kind == "features":
            x = SparseTensor.from_points(batch.points, batch.batch, batch.points, batch.size, grid_shape)
            return x if sparse else to_dense(x)
        cells, weights = self.splat_weights(batch, grid_shape, keep_zero=not sparse)
        return _combine(cells, weights, batch.size, grid_shape, self.combine, sparse)

    def splat_weights(self, batch: PointBatch, grid_shape: tuple[int, ...], keep_zero: bool = True):
        """Every (point, neighbouring cell) pair: cells (M*K, 1+D) with batch index, weights (M*K,).

        ``keep_zero`` keeps pairs of weight zero (a point exactly on a cell still has a
        gradient towards its neighbour); a sparse structure drops them, so that empty cells
        never become occupied.
        """
        p = batch.points
        free = [g > 1 for g in grid_shape]
        if self.kernel == "linear":
            base = torch.floor(p.detach())
            steps = [(0, 1) if f else (0,) for f in free]
        else:
            base = torch.round(p.detach())
            r = max(1, math.ceil(2 * self.sigma))
            steps = [tuple(range(-r, r + 1)) if f else (0,) for f in free]
        offsets = torch.tensor(list(itertools.product(*steps)), device=p.device, dtype=p.dtype)
        pinned = torch.tensor([0.0 if f else 1.0 for f in free], device=p.device, dtype=p.dtype)
        # Pinned axes sit at cell 0 whatever the point's value there.
        cells = (base[:, None, :] + offsets[None]) * (1 - pinned)  # (M, K, D)
        delta = (p[:, None, :] - cells) * (1 - pinned)
        if self.kernel == "linear":
            weights = torch.clamp(1 - delta.abs(), min=0).prod(-1)
        else:
            weights = torch.exp(-(delta * delta).sum(-1) / (2 * self.sigma**2))
        hi = torch.tensor(grid_shape, device=p.device, dtype=p.dtype) - 1
        inside = ((cells >= 0) & (cells <= hi)).all(-1)
        if not keep_zero:
            inside &= weights > 0
        b = batch.batch[:, None].expand_as(weights)
        index = torch.cat([b[inside][:, None], cells[inside].long()], 1)
        return index, weights[inside]


def _combine(cells: torch.Tensor, weights: torch.Tensor, batch_size: int, grid_shape: tuple[int, ...],
             combine: str, sparse: bool):
    coords, inverse = unique_cells(cells)
    n = coords.shape[0]
    if combine == "clamp":
        value = weights.new_zeros(n).index_add(0, inverse, weights).clamp(max=1.0)
    else:  # soft-or: 1 - prod(1 - w), via a sum of logs
        log_empty = torch.log1p(-weights.clamp(max=1 - 1e-6))
        value = 1 - torch.exp(weights.new_zeros(n).index_add(0, inverse, log_empty))
    if sparse:
        manager = CoordinateManager(coords, tuple(grid_shape), batch_size)
        return SparseTensor(value[:, None], (1,) * len(grid_shape), manager)
    grid = weights.new_zeros((batch_size, *grid_shape))
    grid = grid.index_put(tuple(coords.unbind(1)), value)
    return grid[:, None]
