"""Point-cloud datasets as the engine sees them: ragged clouds on a declared integer grid.

A dataset declares its grid shape (e.g. ``(1, 28, 28)`` for MNIST, depth first) and its number
of classes; nothing downstream assumes a particular size or that an axis has extent one. Clouds
are stored ragged (all points concatenated plus offsets) because real clouds have a variable
number of points, and a ragged gather is exactly what a sparse batch needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PointBatch:
    """A batch of clouds flattened to one list of points.

    ``points`` is (M, D) float in grid coordinates, ``batch`` (M,) the cloud each point belongs
    to, ``size`` the number of clouds (a cloud may have no points).
    """

    points: torch.Tensor
    batch: torch.Tensor
    size: int

    @staticmethod
    def from_padded(points: torch.Tensor) -> "PointBatch":
        """Clouds of equal size, (B, P, D), as a batch (the synthetic set's layout)."""
        b, p, _ = points.shape
        batch = torch.arange(b, device=points.device).repeat_interleave(p)
        return PointBatch(points.reshape(b * p, -1), batch, b)

    def to(self, device: torch.device | str) -> "PointBatch":
        return PointBatch(self.points.to(device), self.batch.to(device), self.size)


@dataclass(frozen=True)
class Clouds:
    """Ragged integer point clouds with labels.

    ``points`` (total, D) int16, ``offsets`` (N + 1,) int64 so that cloud i is
    ``points[offsets[i]:offsets[i + 1]]``; points within a cloud keep the dataset's natural order
    (raster order for images), so "the first P points" is well defined.
    """

    points: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def subset(self, indices: torch.Tensor | np.ndarray) -> "Clouds":
        """The clouds at ``indices``, as a new ragged set (used for splits)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        flat, _, lengths = self._gather(idx, cap=None)
        offsets = torch.zeros(len(idx) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        return Clouds(self.points[flat], offsets, self.labels[idx])

    def batch(self, indices: torch.Tensor, cap: int | None = None) -> PointBatch:
        """Clouds at ``indices`` as float points; ``cap`` keeps each cloud's first points."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        flat, batch, _ = self._gather(idx, cap)
        return PointBatch(self.points[flat].float(), batch, len(idx))

    def padded(self, indices: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
        """Clouds at ``indices`` resampled to exactly ``size`` points each, (B, size, D) float.

        Clouds with at least ``size`` points keep a random subset of them; smaller clouds repeat
        random points. An empty cloud is an error: it has no shape to resample.
        """
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.offsets.device)
        counts = self.counts[idx]
        if bool((counts == 0).any()):
            raise ValueError("cannot resample an empty cloud")
        keys = torch.rand(len(idx), int(counts.max()), generator=generator).to(counts.device)
        # Positions past a cloud's end sort last, so the first `count` sorted keys are a random
        # permutation of the cloud; cycling through it repeats points only when count < size.
        keys[torch.arange(keys.shape[1], device=counts.device)[None, :] >= counts[:, None]] = 2.0
        perm = keys.argsort(dim=1)
        pos = torch.arange(size, device=counts.device)[None, :] % counts[:, None]
        chosen = perm.gather(1, pos)
        return self.points[self.offsets[idx][:, None] + chosen].float()

    def to(self, device: torch.device | str) -> "Clouds":
        return Clouds(self.points.to(device), self.offsets.to(device), self.labels.to(device))

    def _gather(self, idx: torch.Tensor, cap: int | None):
        idx = idx.to(self.offsets.device)
        lengths = self.counts[idx]
        if cap is not None:
            lengths = lengths.clamp(max=cap)
        starts = self.offsets[idx]
        total = int(lengths.sum())
        device = self.offsets.device
        batch = torch.repeat_interleave(torch.arange(len(idx), device=device), lengths)
        first = torch.cumsum(lengths, 0) - lengths
        flat = starts[batch] + torch.arange(total, device=device) - first[batch]
        return flat, batch, lengths

    @staticmethod
    def from_occupancy(grids: np.ndarray, labels: np.ndarray) -> "Clouds":
        """Every occupied cell of each boolean grid (N, *grid) becomes a point, in C order."""
        n = grids.shape[0]
        flat = grids.reshape(n, -1)
        which, cell = np.nonzero(flat)  # C order: sorted by cloud, then raster order
        coords = np.stack(np.unravel_index(cell, grids.shape[1:]), axis=1).astype(np.int16)
        offsets = np.zeros(n + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(np.bincount(which, minlength=n))
        return Clouds(
            torch.from_numpy(coords), torch.from_numpy(offsets), torch.from_numpy(labels.astype(np.int64))
        )


@dataclass(frozen=True)
class Dataset:
    """A classification dataset of point clouds on an integer grid.

    ``grid_shape`` is the extent of each axis; coordinates lie in ``[0, extent - 1]``. Axes of
    extent one (MNIST's depth) are pinned: synthetic points are kept at 0 on them.
    """

    name: str
    grid_shape: tuple[int, ...]
    num_classes: int
    train: Clouds
    test: Clouds
    options: dict

    @property
    def dims(self) -> int:
        return len(self.grid_shape)

    def class_indices(self, clouds: Clouds) -> list[torch.Tensor]:
        """Indices of each class's clouds in ``clouds``."""
        return [torch.nonzero(clouds.labels == c).flatten() for c in range(self.num_classes)]


def voxelize(batch: PointBatch, grid_shape: tuple[int, ...]) -> torch.Tensor:
    """Binary occupancy (B, *grid_shape): a cell is 1 where any point rounds into it.

    Points are rounded and clamped to the grid, as the evaluation protocol renders them.
    """
    grid = torch.zeros((batch.size, *grid_shape), device=batch.points.device)
    if batch.points.shape[0] == 0:
        return grid
    hi = torch.tensor(grid_shape, device=batch.points.device) - 1
    cells = torch.minimum(batch.points.detach().round().clamp(min=0), hi).long()
    grid[(batch.batch, *cells.unbind(1))] = 1.0
    return grid
