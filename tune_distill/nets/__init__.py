"""Networks: the distillation families (sparse voxel, dense voxel, PointNet) and the evaluation classifiers
(DC's ConvNet; PointNet, DGCNN and PointNet++ for point clouds)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.seeding import seeded
from ..sparse.backend import get_backend
from .convnet import ConvNet
from .dgcnn import DGCNN
from .pointnet import PointNet
from .pointnet2 import PointNet2
from .voxel import DenseNet, SparseNet


@dataclass(frozen=True)
class NetSettings:
    """A distillation network: its family and shape (the config keys of the same names)."""

    family: str = "sparse"  # sparse | dense (voxel grids) | pointnet (coordinates)
    depth: int = 2
    width: int = 128
    pooling: str = "max"
    norm: str = "instance"
    backend: str = "torch"  # sparse family: torch | minkowski | auto
    second_order: str = "full"  # sparse family: full | truncated


def build_distill_net(settings: NetSettings, in_channels: int, grid_shape: tuple[int, ...] | None, num_classes: int,
                      seed: int) -> torch.nn.Module:
    """The distillation network ``settings`` name, initialised reproducibly from ``seed``.

    ``grid_shape`` is the voxel grid a sparse or dense network sees (unused by PointNet). The
    global RNG is forked, so building a network never disturbs anyone else's random stream.
    """
    s = settings
    if s.family == "pointnet":
        return seeded(seed, lambda: PointNet(in_channels, num_classes, s.width, s.depth, s.norm, s.pooling))
    if s.family == "sparse":
        backend = get_backend(s.backend, truncated=s.second_order == "truncated")
        return seeded(seed, lambda: SparseNet(in_channels, num_classes, grid_shape, s.depth, s.width, s.pooling, s.norm,
                                              backend))
    return seeded(seed, lambda: DenseNet(in_channels, num_classes, grid_shape, s.depth, s.width, s.pooling, s.norm))


def build_point_classifier(net: str, in_channels: int, num_classes: int, width: int, depth: int = 4,
                           head: tuple[int, ...] = (256,), **pointnet: object) -> torch.nn.Module:
    """A point-cloud classifier by name (``pointnet``, ``dgcnn`` or ``pointnet2``) at ``width``,
    freshly initialised from the global generator: the evaluators' networks and the trajectory
    experts'. ``depth``, ``head`` and ``pointnet`` (channels, dropout, last_relu, tnet) shape
    PointNet only (BatchNorm)."""
    if net == "dgcnn":
        return DGCNN(in_channels, num_classes, width)
    if net == "pointnet2":
        return PointNet2(in_channels, num_classes, width)
    return PointNet(in_channels, num_classes, width, depth, norm="batch", head=head, **pointnet)


__all__ = ["ConvNet", "DGCNN", "DenseNet", "NetSettings", "PointNet", "PointNet2", "SparseNet", "build_distill_net", "build_point_classifier"]
