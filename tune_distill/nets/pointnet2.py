"""PointNet++ with single-scale grouping (Qi et al., NeurIPS 2017, the "SSG" classifier) on (B, P, 3) clouds.

Two set-abstraction levels, then one over the whole cloud. A level picks centres by farthest-point
sampling (``pointops``), groups the points within ``radius`` of each centre (ball query, at most
``neighbours`` of them), runs a shared MLP (Linear -> BatchNorm -> ReLU) on each member's position
relative to its centre and its features, and keeps the maximum per centre. The paper's levels on
1,024 points: 512 centres, radius 0.2, 32 neighbours, MLP 64-64-128; 128 centres, radius 0.4,
64 neighbours, 128-128-256; then all points, 256-512-1024; head 512-256 with dropout 0.4. Here
the MLP widths scale with ``width`` (64: the paper's) and the centre counts with the cloud (half
of its points, then a quarter of those: 512 and 128 at 1,024 points), so a small synthetic cloud
is abstracted as a full one is. Input: xyz only (no normals), in the unit ball.
"""

from __future__ import annotations

import torch
from torch import nn

from .pointnet import Norm, classifier_head
from .pointops import ball_query, farthest_point_indices, gather


def _mlp(channels: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(channels, w), Norm("batch", w), nn.ReLU()]
        channels = w
    return nn.Sequential(*layers)


class SetAbstraction(nn.Module):
    """One level: (xyz (B, N, 3), features (B, N, C) or None) -> (centres (B, S, 3), features (B, S, out)).

    ``fraction`` None groups the whole cloud around the origin (the last level)."""

    def __init__(self, channels: int, widths: list[int], fraction: float | None = None, radius: float = 0.0,
                 neighbours: int = 0):
        super().__init__()
        self.fraction, self.radius, self.neighbours = fraction, radius, neighbours
        self.mlp = _mlp(channels + 3, widths)

    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fraction is None:
            grouped = xyz[:, None]  # (B, 1, N, 3): every point, relative to the origin
            if features is not None:
                grouped = torch.cat([grouped, features[:, None]], -1)
            return xyz.new_zeros(xyz.shape[0], 1, 3), self.mlp(grouped).amax(2)
        centres = gather(xyz, farthest_point_indices(xyz, max(1, round(xyz.shape[1] * self.fraction))))
        index = ball_query(centres, xyz, self.radius, self.neighbours)  # (B, S, K)
        grouped = gather(xyz, index) - centres[:, :, None, :]
        if features is not None:
            grouped = torch.cat([grouped, gather(features, index)], -1)
        return centres, self.mlp(grouped).amax(2)


class PointNet2(nn.Module):
    """PointNet++ (SSG) classifier on (B, P, 3) clouds."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64, dropout: float = 0.4):
        super().__init__()
        if in_channels != 3:
            raise ValueError(f"PointNet2 groups xyz points; got {in_channels} input channels")
        w = width
        self.levels = nn.ModuleList([
            SetAbstraction(0, [w, w, 2 * w], 1 / 2, 0.2, 32),
            SetAbstraction(2 * w, [2 * w, 2 * w, 4 * w], 1 / 4, 0.4, 64),
            SetAbstraction(4 * w, [4 * w, 8 * w, 16 * w]),
        ])
        self.head = classifier_head(16 * w, [8 * w, 4 * w], num_classes, "batch", dropout, dropout_each=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xyz, features = x, None
        for level in self.levels:
            xyz, features = level(xyz, features)
        return self.head(features[:, 0])
