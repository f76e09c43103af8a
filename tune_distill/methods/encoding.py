"""Encodings: how a batch of point clouds becomes a network input.

``features`` is the paper's "coordinates as features": points are quantised to cells (the
sparse structure) and each cell's features are its points' coordinates, so gradients reach the
coordinates through the feature values only. ``splat`` spreads each point onto its neighbouring
cells with weights that are smooth in the point's position (linear interpolation or a gaussian)
and combines them into an occupancy in [0, 1], so moving a point moves mass between cells and the
gradient says where a point should go. With ``straight_through`` the forward value is the binary
image the evaluator renders (rounded points) while the gradient is the splat's, so the
distillation optimises exactly what will be evaluated.

Both produce either a ``SparseTensor`` (sparse family) or a dense (B, C, *grid) tensor (dense
family). Axes of extent one are pinned: nothing is spread along them. ``points`` is what a
point network reads: the coordinates themselves, (B, P, D), a ragged batch padded by repeating
each cloud's points.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ..core.types import PointBatch
from ..sparse import CoordinateManager, SparseTensor, to_dense, unique_cells


@dataclass(frozen=True)
class Encoding:
    """A configured encoding; call it on a batch to get the network input."""

    kind: str = "features"  # features | splat | points
    kernel: str = "linear"  # splat: linear | gaussian
    sigma: float = 0.5  # splat: gaussian std in cells
    combine: str = "clamp"  # splat: clamp | soft_or
    straight_through: bool = False  # splat: forward the binary render, backward the splat

    def in_channels(self, dims: int) -> int:
        return 1 if self.kind == "splat" else dims

    def __call__(self, batch: PointBatch, grid_shape: tuple[int, ...], sparse: bool) -> SparseTensor | torch.Tensor:
        if self.kind == "points":
            return batch.padded()
        if self.kind == "features":
            x = SparseTensor.from_points(batch.points, batch.cloud, batch.points, batch.size, grid_shape)
            return x if sparse else to_dense(x)
        cells, weights = self.splat_weights(batch, grid_shape, keep_zero=not sparse)
        coords, inverse = unique_cells(cells)
        value = _combine(weights, inverse, coords.shape[0], self.combine)
        if self.straight_through:
            hard = _occupied(coords, _rounded_cells(batch, grid_shape))
            value = hard.to(value.dtype) + (value - value.detach())  # exactly 0 or 1 forward
            if sparse:  # the structure is the rendered image's: occupied cells only
                coords, value = coords[hard], value[hard]
        if sparse:
            manager = CoordinateManager(coords, tuple(grid_shape), batch.size)
            return SparseTensor(value[:, None], (1,) * len(grid_shape), manager)
        grid = value.new_zeros((batch.size, *grid_shape))
        return grid.index_put(tuple(coords.unbind(1)), value)[:, None]

    def splat_weights(
        self, batch: PointBatch, grid_shape: tuple[int, ...], keep_zero: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
        keep = torch.tensor([1.0 if f else 0.0 for f in free], device=p.device, dtype=p.dtype)
        # Pinned axes sit at cell 0 whatever the point's value there.
        cells = (base[:, None, :] + offsets[None]) * keep  # (M, K, D)
        delta = (p[:, None, :] - cells) * keep
        if self.kernel == "linear":
            weights = torch.clamp(1 - delta.abs(), min=0).prod(-1)
        else:
            weights = torch.exp(-(delta * delta).sum(-1) / (2 * self.sigma**2))
        hi = torch.tensor(grid_shape, device=p.device, dtype=p.dtype) - 1
        inside = ((cells >= 0) & (cells <= hi)).all(-1)
        if not keep_zero:
            inside &= weights > 0
        b = batch.cloud[:, None].expand_as(weights)
        index = torch.cat([b[inside][:, None], cells[inside].long()], 1)
        return index, weights[inside]


def _combine(weights: torch.Tensor, inverse: torch.Tensor, n: int, combine: str) -> torch.Tensor:
    """Per-cell occupancy from the weights of the pairs that land in each cell."""
    if combine == "clamp":
        return weights.new_zeros(n).index_add(0, inverse, weights).clamp(max=1.0)
    # soft-or: 1 - prod(1 - w), via a sum of logs
    log_empty = torch.log1p(-weights.clamp(max=1 - 1e-6))
    return 1 - torch.exp(weights.new_zeros(n).index_add(0, inverse, log_empty))


def _rounded_cells(batch: PointBatch, grid_shape: tuple[int, ...]) -> torch.Tensor:
    """(batch, cell) rows of the rounded points inside the grid: the rendered image's pixels."""
    rounded = batch.points.detach().round()
    hi = torch.tensor(grid_shape, device=rounded.device) - 1
    inside = ((rounded >= 0) & (rounded <= hi)).all(1)
    return torch.cat([batch.cloud[inside, None], rounded[inside].long()], 1)


def _occupied(coords: torch.Tensor, occupied: torch.Tensor) -> torch.Tensor:
    """Which rows of ``coords`` (unique) appear among the ``occupied`` rows."""
    _, inverse = unique_cells(torch.cat([occupied, coords]))
    marked = torch.zeros(int(inverse.max()) + 1, dtype=torch.bool, device=coords.device)
    marked[inverse[: occupied.shape[0]]] = True
    return marked[inverse[occupied.shape[0] :]]
