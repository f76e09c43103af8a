"""PointNet: a shared per-point MLP, a symmetric pooling over points, and a small classifier head.

The network SADM, PCC, DD3D and 3DDP distil and evaluate with (Qi et al., CVPR 2017, without the
input and feature transform nets, as those papers use it). Layer ``i`` of the per-point MLP has
``width * 2**i`` channels, so width 64 and depth 5 is close to PointNet's 64-128-256-512-1024;
the head is Linear -> norm -> ReLU -> Linear. Input is (B, P, 3): clouds of one size (pad a ragged
batch by repeating points, which max pooling does not see).

``norm``: ``batch`` (PointNet's BatchNorm, over every point of the batch), ``instance`` (each
cloud's channels normalised over its own points, so a cloud's features never depend on the rest
of the batch: what a distillation network wants when real and synthetic batches differ in size),
or ``none``.
"""

from __future__ import annotations

import torch
from torch import nn


class _Norm(nn.Module):
    def __init__(self, kind: str, channels: int):
        super().__init__()
        self.kind = kind
        self.bn = nn.BatchNorm1d(channels) if kind == "batch" else None
        if kind == "instance":
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, P, C) or (B, C)
        if self.kind == "batch":
            return self.bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        if self.kind == "instance" and x.ndim == 3:
            mean = x.mean(1, keepdim=True)
            var = x.var(1, keepdim=True, unbiased=False)
            return (x - mean) / torch.sqrt(var + 1e-5) * self.weight + self.bias
        return x


class PointNet(nn.Module):
    """PointNet classifier on (B, P, in_channels) clouds."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64, depth: int = 4,
                 norm: str = "batch", pooling: str = "max", head: int = 256):
        super().__init__()
        if norm not in ("batch", "instance", "none") or pooling not in ("max", "avg"):
            raise ValueError(f"PointNet: norm {norm!r} / pooling {pooling!r} not supported")
        self.pooling = pooling
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(depth):
            out = width * 2**i
            layers += [nn.Linear(channels, out), _Norm(norm, out), nn.ReLU()]
            channels = out
        self.point_mlp = nn.Sequential(*layers)
        head_norm = "batch" if norm == "batch" else "none"
        self.head = nn.Sequential(nn.Linear(channels, head), _Norm(head_norm, head), nn.ReLU(), nn.Linear(head, num_classes))
        self.embed_dim = channels

    def point_features(self, x: torch.Tensor) -> torch.Tensor:
        """Each point's features (B, P, C), before pooling."""
        return self.point_mlp(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The global feature (B, C): the pooled per-point features (distribution matching's embedding)."""
        h = self.point_mlp(x)
        return h.amax(1) if self.pooling == "max" else h.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
