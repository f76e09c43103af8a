"""The shared types: point batches, ragged clouds, the domain points live in, and datasets.

A dataset declares its ``Domain``: an integer grid (e.g. ``(1, 28, 28)`` for MNIST, depth
first; coordinates are cell indices) or the unit ball (float coordinates, ModelNet's frame).
Nothing downstream assumes a particular size or that an axis has extent one. Clouds are stored
ragged (all points concatenated plus offsets) because real clouds have a variable number of
points, and a ragged gather is exactly what a sparse batch needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PointBatch:
    """A batch of clouds flattened to one list of points.

    ``points`` is (M, D) float (grid cells, or the unit ball's xyz), ``cloud`` (M,) the index of
    the cloud each point belongs to, ``size`` the number of clouds (a cloud may have no points).
    """

    points: torch.Tensor
    cloud: torch.Tensor
    size: int

    @staticmethod
    def from_padded(points: torch.Tensor) -> "PointBatch":
        """Clouds of equal size, (B, P, D), as a batch (the synthetic set's layout)."""
        b, p, _ = points.shape
        batch = torch.arange(b, device=points.device).repeat_interleave(p)
        return PointBatch(points.reshape(b * p, -1), batch, b)

    def to(self, device: torch.device | str) -> "PointBatch":
        return PointBatch(self.points.to(device), self.cloud.to(device), self.size)

    def padded(self) -> torch.Tensor:
        """(size, P, D) with P the largest cloud's count; smaller clouds repeat their points
        cyclically, which leaves a max (or mean over a whole cycle) over points unchanged.
        Differentiable in the points; the batch must list its clouds in order (as built here)."""
        counts = torch.bincount(self.cloud, minlength=self.size)
        if bool((counts == 0).any()):
            raise ValueError("cannot pad an empty cloud")
        first = torch.cumsum(counts, 0) - counts
        width = int(counts.max())
        pos = torch.arange(width, device=counts.device)[None, :] % counts[:, None]
        return self.points[first[:, None] + pos]

    def affine(self, scale: float, offset: float) -> "PointBatch":
        """The same clouds with every coordinate mapped to ``p * scale + offset``."""
        if scale == 1 and offset == 0:
            return self
        return PointBatch(self.points * scale + offset, self.cloud, self.size)


@dataclass(frozen=True)
class Clouds:
    """Ragged point clouds with labels.

    ``points`` (total, D): int16 cell indices on a grid domain, float32 in the unit ball; ``offsets`` (N + 1,) int64 so that cloud i is
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

    def members(self, label: int) -> torch.Tensor:
        """Indices of the clouds of class ``label``, in order."""
        return torch.nonzero(self.labels == label).flatten()

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

    def resampled(self, indices: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
        """Clouds at ``indices`` resampled at random to exactly ``size`` points each, (B, size, D) float
        (``PointBatch.padded``, by contrast, repeats points in order and draws nothing).

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
class Domain:
    """Where a dataset's points live, and how synthetic points are kept there.

    A grid domain (``grid_shape`` set, e.g. MNIST's ``(1, 28, 28)``): coordinates are cell
    indices in ``[0, extent - 1]`` and axes of extent one are pinned at 0. The unit ball
    (``grid_shape`` None): float coordinates with norm at most 1, ``up`` the vertical axis
    (ModelNet is z-up); voxel networks see it through a grid of their own resolution.
    """

    dims: int = 3
    grid_shape: tuple[int, ...] | None = None
    up: int = 2

    @property
    def free(self) -> list[int]:
        """Axes points may move along."""
        if self.grid_shape is None:
            return list(range(self.dims))
        return [i for i, g in enumerate(self.grid_shape) if g > 1]

    @property
    def low(self) -> torch.Tensor:
        return torch.zeros(self.dims) if self.grid_shape is not None else -torch.ones(self.dims)

    @property
    def high(self) -> torch.Tensor:
        """The upper corner of the box a uniform initialisation fills."""
        return torch.tensor(self.grid_shape, dtype=torch.float32) if self.grid_shape is not None else torch.ones(self.dims)

    @property
    def centre(self) -> torch.Tensor:
        if self.grid_shape is None:
            return torch.zeros(self.dims)
        return (torch.tensor(self.grid_shape, dtype=torch.float32) - 1) / 2

    @property
    def rotation_plane(self) -> tuple[int, int] | None:
        """The two axes a rotation mixes: the image plane, or the plane about the up axis."""
        if self.grid_shape is None:
            a, b = (i for i in range(self.dims) if i != self.up)
            return a, b
        free = self.free
        return (free[-2], free[-1]) if len(free) >= 2 else None

    def voxels(self, resolution: int) -> tuple[tuple[int, ...], float, float]:
        """``(grid_shape, scale, offset)``: a voxel network's grid and the map ``p * scale + offset``
        from this domain's coordinates to its cells (the identity on a grid domain)."""
        if self.grid_shape is not None:
            return self.grid_shape, 1.0, 0.0
        half = (resolution - 1) / 2
        return (resolution,) * self.dims, half, half

    def project(self, points: torch.Tensor) -> None:
        """Keep (in place) every point inside the domain: clamped to the grid (pinned axes to 0),
        or pulled back onto the unit sphere when outside the ball."""
        with torch.no_grad():
            if self.grid_shape is not None:
                for axis, extent in enumerate(self.grid_shape):
                    points[..., axis].clamp_(0, extent - 1)
            else:
                points.div_(points.norm(dim=-1, keepdim=True).clamp(min=1.0))


@dataclass(frozen=True)
class Dataset:
    """A classification dataset of point clouds in a ``Domain``.

    ``options`` are the loader's own settings that identify the data (MNIST's threshold); a
    run checks them against its config before reusing a loaded dataset.
    """

    name: str
    domain: Domain
    num_classes: int
    train: Clouds
    test: Clouds
    options: dict
    class_names: tuple[str, ...] = ()
    # Whether the validation hold-out is stratified by class (MNIST keeps the plain random
    # hold-out that all its searches selected on).
    stratified_val: bool = True


def voxelize(batch: PointBatch, grid_shape: tuple[int, ...]) -> torch.Tensor:
    """Binary occupancy (B, *grid_shape): a cell is 1 where any point rounds into it.

    Points are rounded and clamped to the grid, as the evaluation protocol renders them.
    """
    grid = torch.zeros((batch.size, *grid_shape), device=batch.points.device)
    if batch.points.shape[0] == 0:
        return grid
    hi = torch.tensor(grid_shape, device=batch.points.device) - 1
    cells = torch.minimum(batch.points.detach().round().clamp(min=0), hi).long()
    grid[(batch.cloud, *cells.unbind(1))] = 1.0
    return grid
