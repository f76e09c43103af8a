"""The learnable synthetic set: IPC clouds per class of P points each, and how it starts.

Initialisation strategies:
- ``uniform``: uniform over the grid (the paper);
- ``gaussian``: a gaussian blob around the grid centre (std one sixth of each axis);
- ``real``: a random real cloud of the class, resampled to P points;
- ``real_noise``: the same plus gaussian jitter of ``init_noise`` cells;
- ``herding``: real clouds chosen greedily so that their mean image tracks the class mean
  (Welling's herding; with IPC 1, the cloud nearest the class mean);
- ``class_mean_topk``: the P most occupied cells of the class mean (with IPC > 1, of the means
  of IPC k-means clusters of the class).

``project`` is applied at the start of every iteration, as the paper does: axes of extent one
are pinned at 0, the others clamped to the grid.
"""

from __future__ import annotations

import torch

from .data.base import Clouds, voxelize

INITS = ("uniform", "gaussian", "real", "real_noise", "herding", "class_mean_topk")


def project(points: torch.Tensor, grid_shape: tuple[int, ...]) -> None:
    """Clamp (in place) every coordinate into the grid; pinned axes to 0."""
    with torch.no_grad():
        for axis, extent in enumerate(grid_shape):
            points[..., axis].clamp_(0, extent - 1)


def _occupancy(clouds: Clouds, indices: torch.Tensor, grid_shape: tuple[int, ...], cap: int | None) -> torch.Tensor:
    """Flattened occupancy grids (len(indices), cells) of the given clouds, in chunks."""
    rows = []
    for chunk in indices.split(4096):
        rows.append(voxelize(clouds.batch(chunk, cap), grid_shape).flatten(1))
    return torch.cat(rows)


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k rows chosen greedily so the running mean of the chosen tracks the overall mean."""
    mean = features.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mean)
    available = torch.ones(features.shape[0], dtype=torch.bool)
    for i in range(1, k + 1):
        dist = ((mean - (total + features) / i) ** 2).sum(1)
        dist[~available] = float("inf")
        j = int(dist.argmin())
        chosen.append(j)
        available[j] = False
        total += features[j]
    return torch.tensor(chosen, dtype=torch.long)


def _kmeans_means(features: torch.Tensor, k: int, steps: int = 20) -> torch.Tensor:
    """k cluster means of ``features``, started from herding picks (deterministic)."""
    centres = features[herding(features, k)].clone()
    for _ in range(steps):
        assign = torch.cdist(features, centres).argmin(1)
        for j in range(k):
            members = features[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres


def _top_cells(mean_grid: torch.Tensor, grid_shape: tuple[int, ...], points: int, generator: torch.Generator) -> torch.Tensor:
    """The ``points`` most occupied cells of a flattened mean grid as (points, D) coordinates.

    Ties are broken by a tiny random perturbation; if fewer cells are occupied than points, the
    most occupied cells repeat.
    """
    score = mean_grid + 1e-6 * torch.rand(mean_grid.shape, generator=generator)
    order = score.argsort(descending=True)
    occupied = max(1, int((mean_grid > 0).sum()))
    picks = order[torch.arange(points) % min(occupied, len(order))]
    return torch.stack(torch.unravel_index(picks, grid_shape), 1).float()


def init_synthetic(
    kind: str,
    clouds: Clouds,
    num_classes: int,
    grid_shape: tuple[int, ...],
    ipc: int,
    points: int,
    generator: torch.Generator,
    noise: float = 1.0,
    cap: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial synthetic points (num_classes * ipc, points, D) and labels, grouped by class."""
    if kind not in INITS:
        raise ValueError(f"unknown init {kind!r}; choose one of {INITS}")
    d = len(grid_shape)
    extent = torch.tensor(grid_shape, dtype=torch.float32)
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    n = num_classes * ipc
    if kind == "uniform":
        out = torch.rand(n, points, d, generator=generator) * extent
    elif kind == "gaussian":
        out = (extent - 1) / 2 + torch.randn(n, points, d, generator=generator) * extent / 6
    else:
        per_class = []
        for c in range(num_classes):
            members = torch.nonzero(clouds.labels == c).flatten()
            if kind in ("real", "real_noise"):
                pick = members[torch.randperm(len(members), generator=generator)[:ipc]]
                per_class.append(clouds.padded(pick, points, generator))
            elif kind == "herding":
                feats = _occupancy(clouds, members, grid_shape, cap)
                per_class.append(clouds.padded(members[herding(feats, ipc)], points, generator))
            else:  # class_mean_topk
                feats = _occupancy(clouds, members, grid_shape, cap)
                means = feats.mean(0, keepdim=True) if ipc == 1 else _kmeans_means(feats, ipc)
                per_class.append(torch.stack([_top_cells(m, grid_shape, points, generator) for m in means]))
        out = torch.cat(per_class)
        if kind == "real_noise":
            out = out + noise * torch.randn(out.shape, generator=generator)
    project(out, grid_shape)
    return out.contiguous(), labels


def snap(points: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    """Re-place each cloud's points on distinct cells: its k most occupied ones.

    ``occupancy`` (N, cells) is each cloud's soft occupancy on the flattened grid (a splat), and
    k is its total mass rounded, so the binary render keeps the mass where it is largest
    instead of losing every half-covered cell to rounding. Points beyond k repeat the top cells
    (they render nothing new and are free to move again).
    """
    n, p, _ = points.shape
    grid_shape = occupancy.shape[1:]
    flat = occupancy.reshape(n, -1)
    k = flat.sum(1).round().long().clamp(1, p)
    order = flat.argsort(1, descending=True)
    slot = torch.arange(p, device=points.device)[None, :] % k[:, None]
    cells = order.gather(1, slot)
    return torch.stack(torch.unravel_index(cells, grid_shape), -1).to(points.dtype)
