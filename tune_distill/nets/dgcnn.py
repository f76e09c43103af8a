"""DGCNN (Wang et al., "Dynamic Graph CNN for Learning on Point Clouds", TOG 2019): a classifier
of (B, P, 3) clouds built from EdgeConv layers.

An EdgeConv layer links every point to its ``k`` nearest neighbours in the current feature space
(``pointops.knn``, the point itself included, as the reference code does), maps each edge
feature [x_j - x_i, x_i] through a shared Linear -> BatchNorm -> LeakyReLU(0.2) and keeps the
maximum over the neighbours. Four such layers of ``width`` x (1, 1, 2, 4) channels (64-64-128-256
at width 64), their outputs concatenated and embedded to ``16 * width`` channels (1,024), max-
and mean-pooled over the points, then a head of 8w and 4w units with dropout 0.5 (512-256): the
paper's classification network.

The paper's k = 20 is for clouds of 1,024 points. A smaller cloud (a synthetic set stored as many
small clouds) gets k scaled with its size, ``k * P / 1024`` neighbours (at least 2), so that a
neighbourhood spans the same part of the surface at training as on the 1,024-point test shapes:
with k = 20 fixed, 20 of a 64-point cloud's points span a patch ~4x wider, BatchNorm learns
those statistics, and the network meets other ones at test (measured in docs/results.md: a
16 x 64 ModelNet10 set trains it to chance with k fixed). At 1,024 points and more, k is the
paper's.
"""

from __future__ import annotations

import torch
from torch import nn

from .pointnet import Norm, classifier_head
from .pointops import gather, knn

LEAK = 0.2


REFERENCE_POINTS = 1024  # the cloud size k is given for


def neighbours(k: int, points: int) -> int:
    """The neighbours (the point itself included) an EdgeConv takes in a cloud of ``points``:
    ``k`` from ``REFERENCE_POINTS`` points up, scaled down with the cloud below, at least 2."""
    if points >= REFERENCE_POINTS:
        return k
    return min(points, max(2, round(k * points / REFERENCE_POINTS)))


class EdgeConv(nn.Module):
    """One EdgeConv layer: (B, P, C) -> (B, P, out) over each point's k-nearest-neighbour graph
    (``neighbours(k, P)`` of them)."""

    def __init__(self, channels: int, out: int, k: int):
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(nn.Linear(2 * channels, out, bias=False), Norm("batch", out), nn.LeakyReLU(LEAK))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        near = gather(x, knn(x, x, neighbours(self.k, x.shape[1])))  # (B, P, k, C)
        centre = x[:, :, None, :].expand_as(near)
        return self.mlp(torch.cat([near - centre, centre], -1)).amax(2)


class DGCNN(nn.Module):
    """DGCNN classifier on (B, P, in_channels) clouds."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64, k: int = 20,
                 dropout: float = 0.5):
        super().__init__()
        widths = [width, width, 2 * width, 4 * width]
        self.edges = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.edges.append(EdgeConv(c, w, k))
            c = w
        self.embed_layer = nn.Sequential(nn.Linear(sum(widths), 16 * width, bias=False), Norm("batch", 16 * width),
                                         nn.LeakyReLU(LEAK))
        self.head = classifier_head(32 * width, [8 * width, 4 * width], num_classes, "batch", dropout, dropout_each=True,
                                    activation=lambda: nn.LeakyReLU(LEAK))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for edge in self.edges:
            x = edge(x)
            features.append(x)
        h = self.embed_layer(torch.cat(features, -1))
        return self.head(torch.cat([h.amax(1), h.mean(1)], -1))
