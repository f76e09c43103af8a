"""Networks: the distillation families (sparse, dense) and the evaluation ConvNet, built from config."""

from __future__ import annotations

import torch

from ..config import Config
from ..sparse.backend import get_backend
from .convnet import ConvNet
from .distill import DenseNet, SparseNet


def build_distill_net(cfg: Config, in_channels: int, grid_shape: tuple[int, ...], num_classes: int,
                      seed: int) -> torch.nn.Module:
    """The distillation network named by ``cfg``, initialised reproducibly from ``seed``.

    The global RNG is forked, so building a network never disturbs anyone else's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.family == "sparse":
            backend = get_backend(cfg.backend, truncated=cfg.second_order == "truncated")
            return SparseNet(in_channels, num_classes, grid_shape, cfg.depth, cfg.width, cfg.pooling, cfg.norm, backend)
        return DenseNet(in_channels, num_classes, grid_shape, cfg.depth, cfg.width, cfg.pooling, cfg.norm)


__all__ = ["ConvNet", "DenseNet", "SparseNet", "build_distill_net"]
