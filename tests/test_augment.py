"""Differentiable point augmentation: one transform, applied identically to real and synthetic."""

from __future__ import annotations

import pytest
import torch

from tune_distill.methods.augment import sample_transform
from tune_distill.core.types import Domain, PointBatch


def test_same_transform_on_real_and_synthetic():
    g = torch.Generator().manual_seed(3)
    t = sample_transform(Domain(3, (1, 28, 28)), rotate=30, scale=0.2, translate=0.1, jitter=0.0, generator=g)
    cloud = torch.tensor([[0.0, 3.0, 4.0], [0.0, 20.0, 9.0], [0.0, 13.5, 13.5]])
    real = PointBatch(torch.cat([cloud, cloud + 1]), torch.tensor([0, 0, 0, 1, 1, 1]), 2)
    syn = PointBatch(cloud.clone().requires_grad_(True), torch.zeros(3, dtype=torch.long), 1)
    out_real, out_syn = t(real), t(syn)
    assert torch.allclose(out_real.points[:3], out_syn.points)
    assert not torch.allclose(out_syn.points, cloud)  # it did something
    assert (out_syn.points[:, 0] == 0).all()  # the pinned axis stays put
    # A rigid-ish map: distances scale by at most 1 + scale.
    d0 = (cloud[0] - cloud[1]).norm()
    d1 = (out_syn.points[0] - out_syn.points[1]).norm()
    assert 0.8 * d0 - 1e-4 <= d1 <= 1.2 * d0 + 1e-4
    out_syn.points.sum().backward()
    assert syn.points.grad.abs().sum() > 0


def test_jitter_perturbs_free_axes_only():
    g = torch.Generator().manual_seed(0)
    t = sample_transform(Domain(3, (1, 28, 28)), rotate=0, scale=0, translate=0, jitter=0.5, generator=g)
    pts = torch.full((100, 3), 10.0)
    pts[:, 0] = 0
    out = t(PointBatch(pts, torch.zeros(100, dtype=torch.long), 1)).points
    assert (out[:, 0] == 0).all()
    assert 0.3 < (out[:, 1:] - 10).std() < 0.7


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transform_follows_the_points_device_and_dtype(device, dtype):
    # The transform is drawn on the CPU in float32, so a seed gives one transform on any device;
    # it must be applied where the points are (a distillation on a GPU failed here once).
    g = torch.Generator().manual_seed(5)
    t = sample_transform(Domain(3, (1, 28, 28)), rotate=20, scale=0.1, translate=0.1, jitter=0.0, generator=g)
    pts = torch.tensor([[0.0, 3.0, 4.0], [0.0, 20.0, 9.0]])
    want = t(PointBatch(pts, torch.zeros(2, dtype=torch.long), 1)).points
    got = t(PointBatch(pts.to(device, dtype), torch.zeros(2, dtype=torch.long, device=device), 1)).points
    assert got.device.type == device and got.dtype == dtype
    assert torch.allclose(got.cpu().float(), want, atol=1e-4)
