"""The standard training augmentation of 3D point clouds, in one place: the point evaluator trains
its classifiers under it, and matching can draw it too (``aug_kind=evaluator``), so a set is
learned for the way it will be trained on."""

from __future__ import annotations

import math

import torch


def augment_clouds(x: torch.Tensor, generator: torch.Generator, up: int, rotate: bool) -> torch.Tensor:
    """Scale, shift and jitter (and optionally rotate about ``up``) each cloud of (B, P, 3)."""
    b, p, d = x.shape
    scale = 0.8 + 0.45 * torch.rand(b, 1, 1, generator=generator)
    shift = 0.2 * torch.rand(b, 1, d, generator=generator) - 0.1
    jitter = (0.01 * torch.randn(b, p, d, generator=generator)).clamp(-0.05, 0.05)
    x = x * scale.to(x) + shift.to(x) + jitter.to(x)
    if rotate:
        angle = 2 * math.pi * torch.rand(b, generator=generator)
        a, c = (i for i in range(d) if i != up)
        rot = torch.eye(d).repeat(b, 1, 1)
        rot[:, a, a], rot[:, a, c], rot[:, c, a], rot[:, c, c] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
        x = x @ rot.transpose(1, 2).to(x)
    return x
