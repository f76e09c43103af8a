"""Neighbourhoods of points: farthest-point sampling, k nearest neighbours, ball query, gathering.

Plain PyTorch on (B, N, D) tensors, so they run wherever torch does (CPU, CUDA) and under
``torch.func.vmap`` (no in-place writes into tensors the batch axis runs through): DGCNN and
PointNet++ are built from them, and the synthetic-set code thins real shapes with
``farthest_points``. Distances are squared Euclidean.
"""

from __future__ import annotations

import torch


def gather(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``points`` (B, N, C) at ``index`` (B, ...) of integers in 0..N-1: (B, ..., C)."""
    b, _, c = points.shape
    flat = index.reshape(b, -1, 1).expand(-1, -1, c)
    return torch.gather(points, 1, flat).reshape(*index.shape, c)


def square_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, M, N): squared distance of each point of ``a`` (B, M, D) to each of ``b`` (B, N, D),
    as |a|² + |b|² - 2 a·b (one matrix product: the (B, M, N, D) differences of a feature space
    would not fit in memory), clamped at 0 against rounding."""
    square = (a * a).sum(-1)[:, :, None] + (b * b).sum(-1)[:, None, :]
    return (square - 2 * a @ b.transpose(1, 2)).clamp_min(0)


def farthest_point_indices(clouds: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) indices into each cloud of (B, N, D) by farthest-point sampling, started from each
    cloud's first point: every next point is the one farthest from all chosen ones (the first
    such on ties)."""
    chosen = [torch.zeros(clouds.shape[0], dtype=torch.long, device=clouds.device)]
    nearest = torch.full(clouds.shape[:2], float("inf"), device=clouds.device, dtype=clouds.dtype)
    for _ in range(1, k):
        last = gather(clouds, chosen[-1][:, None])  # (B, 1, D)
        nearest = torch.minimum(nearest, ((clouds - last) ** 2).sum(-1))
        chosen.append(nearest.argmax(1))
    return torch.stack(chosen, 1)


def farthest_points(clouds: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k, D): the points ``farthest_point_indices`` chooses."""
    return gather(clouds, farthest_point_indices(clouds, k))


def knn(queries: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """(B, M, k) indices of each query's k nearest points (itself included when it is one of
    them), nearest first."""
    return square_distances(queries, points).topk(k, dim=-1, largest=False).indices


def ball_query(centres: torch.Tensor, points: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """(B, M, k) indices of points within ``radius`` of each centre: the first k in index order,
    the list padded with its first entry when fewer lie in the ball (PointNet++'s grouping). A
    centre with no point in its ball gets its nearest point (a centre drawn from the cloud is
    always in its own ball)."""
    d = square_distances(centres, points)
    n = points.shape[1]
    order = torch.arange(n, device=points.device).expand_as(d)
    index = torch.where(d <= radius**2, order, torch.full_like(order, n)).sort(-1).values[..., :k]
    first = torch.where(index[..., :1] == n, d.argmin(-1, keepdim=True), index[..., :1])
    index = torch.where(index == n, first.expand_as(index), index)
    if index.shape[-1] < k:  # fewer points than k in the whole cloud
        index = torch.cat([index, first.expand(*index.shape[:-1], k - index.shape[-1])], -1)
    return index
