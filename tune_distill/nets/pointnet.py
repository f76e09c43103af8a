"""PointNet: a shared per-point MLP, a symmetric pooling over points, and a small classifier head.

The network SADM, PCC, DD3D and 3DDP distil and evaluate with (Qi et al., CVPR 2017). By default
layer ``i`` of the per-point MLP has ``width * 2**i`` channels (``channels`` names them instead),
and the head is Linear -> norm -> ReLU -> Linear. Input is (B, P, 3): clouds of one size (pad a
ragged batch by repeating points, which max pooling does not see).

The PointNet of SADM's, 3DDP's and PCC's evaluation code (docs/protocol-3d-sources.md) is this
network with ``channels=(64, 128, 1024)``, ``head=(512, 256)``, ``dropout=0.3`` (before the last
hidden layer's norm), ``last_relu=False`` (the last per-point layer is pooled straight after its
BatchNorm) and ``tnet=True``: an input transform predicted from the cloud by a second PointNet
of the same shape (always with ReLUs, no dropout, 9 outputs added to the identity) and applied to
every point before the per-point MLP. No feature transform: none of those papers turns it on.

``norm``: ``batch`` (PointNet's BatchNorm, over every point of the batch), ``instance`` (each
cloud's channels normalised over its own points, so a cloud's features never depend on the rest
of the batch: what a distillation network wants when real and synthetic batches differ in size),
or ``none``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


class Norm(nn.Module):
    """``kind`` (batch | instance | none) normalisation of the last axis of (B, ..., C) features."""

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


def classifier_head(channels: int, hidden: Sequence[int], num_classes: int, norm: str = "batch",
                    dropout: float = 0.0, dropout_each: bool = False,
                    activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """A global feature (B, channels) to logits: [Linear -> norm -> activation] per hidden width,
    then a Linear. ``dropout`` (if > 0) acts on the last hidden layer before its norm, as in
    PointNet's reference PyTorch code, or (``dropout_each``) after every hidden layer's
    activation, as in DGCNN's and PointNet++'s."""
    layers: list[nn.Module] = []
    for i, h in enumerate(hidden):
        layers.append(nn.Linear(channels, h))
        if dropout and not dropout_each and i == len(hidden) - 1:
            layers.append(nn.Dropout(dropout))
        layers += [Norm(norm, h), activation()] + ([nn.Dropout(dropout)] if dropout and dropout_each else [])
        channels = h
    return nn.Sequential(*layers, nn.Linear(channels, num_classes))


class PointNet(nn.Module):
    """PointNet classifier on (B, P, in_channels) clouds."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64, depth: int = 4,
                 norm: str = "batch", pooling: str = "max", head: int | Sequence[int] = 256,
                 channels: Sequence[int] = (), dropout: float = 0.0, last_relu: bool = True, tnet: bool = False):
        super().__init__()
        if norm not in ("batch", "instance", "none") or pooling not in ("max", "avg"):
            raise ValueError(f"PointNet: norm {norm!r} / pooling {pooling!r} not supported")
        self.pooling = pooling
        widths = list(channels) or [width * 2**i for i in range(depth)]
        hidden = [head] if isinstance(head, int) else list(head)
        self.tnet = (PointNet(in_channels, in_channels**2, norm=norm, head=hidden, channels=widths)
                     if tnet else None)
        layers: list[nn.Module] = []
        c = in_channels
        for i, out in enumerate(widths):
            layers += [nn.Linear(c, out), Norm(norm, out)] + ([nn.ReLU()] if last_relu or i < len(widths) - 1 else [])
            c = out
        self.point_mlp = nn.Sequential(*layers)
        self.head = classifier_head(c, hidden, num_classes, "batch" if norm == "batch" else "none", dropout)
        self.embed_dim = c

    def transformed(self, x: torch.Tensor) -> torch.Tensor:
        """The points after the input transform (with ``tnet``), else as given."""
        if self.tnet is None:
            return x
        d = x.shape[-1]
        transform = self.tnet(x).view(-1, d, d) + torch.eye(d, dtype=x.dtype, device=x.device)
        return x @ transform

    def point_features(self, x: torch.Tensor) -> torch.Tensor:
        """Each point's features (B, P, C), before pooling."""
        return self.point_mlp(self.transformed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The global feature (B, C): the pooled per-point features (distribution matching's embedding)."""
        h = self.point_features(x)
        return h.amax(1) if self.pooling == "max" else h.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
