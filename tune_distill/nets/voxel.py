"""The paper's two families of distillation network, parameterised by depth, width, pooling, norm.

``SparseNet``: [sparse conv k=3 -> instance norm (optional) -> ReLU -> max|avg pool k=2 s=2] x depth
over occupied cells only, then densified and a Linear to the classes (the paper's "Minkowski").
``DenseNet``: the same stack on a dense voxel grid with ``Conv3d`` (the paper's "pure PyTorch"
network), where pooling sees empty cells as zeros. Axes of extent one get kernel 1 in the dense
family (a 3x3x3 kernel on a depth-1 grid is a 1x3x3 kernel); the sparse family keeps the full
k^3 kernel of MinkowskiEngine, whose out-of-grid offsets simply find no neighbours.

Weights are Kaiming-normal with fan_out, as the paper's code initialises them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..sparse import SparseTensor
from ..sparse.backend import SparseBackend


def _kaiming_fan_out(weight: torch.Tensor, fan_out: int) -> None:
    with torch.no_grad():
        weight.normal_(0.0, math.sqrt(2.0 / fan_out))


class SparseNet(nn.Module):
    """Sparse convolutional classifier on a ``SparseTensor`` input."""

    def __init__(self, in_channels: int, num_classes: int, grid_shape: tuple[int, ...], depth: int = 2,
                 width: int = 128, pooling: str = "max", norm: str = "instance", backend: SparseBackend | None = None,
                 kernel_size: int = 3):
        super().__init__()
        d = len(grid_shape)
        self.kernel_size, self.pooling, self.norm = kernel_size, pooling, norm
        self.backend = backend or SparseBackend()
        volume = kernel_size**d
        self.kernels = nn.ParameterList()
        self.norm_weight, self.norm_bias = nn.ParameterList(), nn.ParameterList()
        channels = in_channels
        for _ in range(depth):
            kernel = nn.Parameter(torch.empty(volume, channels, width))
            # MinkowskiEngine's (K, C_in, C_out) kernel: torch's fan_out for it is K * C_out.
            _kaiming_fan_out(kernel, volume * width)
            self.kernels.append(kernel)
            if norm == "instance":
                self.norm_weight.append(nn.Parameter(torch.ones(width)))
                self.norm_bias.append(nn.Parameter(torch.zeros(width)))
            channels = width
        self.out_shape = tuple(-(-g // 2**depth) for g in grid_shape)
        self.fc = nn.Linear(width * math.prod(self.out_shape), num_classes)

    def embed(self, x: SparseTensor) -> torch.Tensor:
        """Features before the classifier (also distribution matching's embedding)."""
        ops = self.backend
        h = ops.prepare(x)
        for i, kernel in enumerate(self.kernels):
            h = ops.conv(h, kernel, self.kernel_size)
            if self.norm == "instance":
                h = ops.instance_norm(h, self.norm_weight[i], self.norm_bias[i])
            h = ops.relu(h)
            h = ops.max_pool(h, 2, 2) if self.pooling == "max" else ops.avg_pool(h, 2, 2)
        return ops.to_dense(h, self.out_shape).flatten(1)

    def forward(self, x: SparseTensor) -> torch.Tensor:
        return self.fc(self.embed(x))


class DenseNet(nn.Module):
    """Dense 3D convolutional classifier on a (B, C, *grid) voxel grid."""

    def __init__(self, in_channels: int, num_classes: int, grid_shape: tuple[int, ...], depth: int = 3,
                 width: int = 128, pooling: str = "max", norm: str = "none", kernel_size: int = 3):
        super().__init__()
        if len(grid_shape) != 3:
            raise ValueError("the dense family needs a 3D grid")
        layers: list[nn.Module] = []
        shape = list(grid_shape)
        channels = in_channels
        for _ in range(depth):
            kernel = tuple(kernel_size if g > 1 else 1 for g in shape)
            conv = nn.Conv3d(channels, width, kernel, padding=tuple(k // 2 for k in kernel))
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            layers.append(conv)
            if norm == "instance":
                layers.append(nn.GroupNorm(width, width, affine=True))
            layers.append(nn.ReLU())
            # An axis already down to one cell is not pooled further (PyTorch's floor mode would
            # make it zero); this is what lets the paper's depth-1 MNIST grid and depths > 4 work.
            window = tuple(2 if g > 1 else 1 for g in shape)
            layers.append(nn.MaxPool3d(window) if pooling == "max" else nn.AvgPool3d(window))
            shape = [g // w for g, w in zip(shape, window)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width * math.prod(shape), num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))
