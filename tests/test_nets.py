"""Distillation networks: shapes at every depth, and gradients that reach the synthetic coordinates."""

from __future__ import annotations

import pytest
import torch

from tune_distill.recipe.config import make_config
from tune_distill.core.types import PointBatch
from tune_distill.nets import NetSettings
from tune_distill.recipe.run import encoding_of, settings
from tune_distill.methods.matching import gradient_match
from tune_distill.nets import ConvNet, build_distill_net

GRID = (1, 28, 28)


def _cfg(**kw):
    return make_config(dict(width=8, **kw))


@pytest.mark.parametrize("family", ["sparse", "dense"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_every_depth_classifies(mnist, family, depth):
    cfg = _cfg(family=family, depth=depth, pooling="avg")
    enc = encoding_of(cfg)
    net = build_distill_net(settings(NetSettings, cfg), enc.in_channels(3), GRID, 10, seed=0)
    out = net(enc(mnist.train.batch(torch.arange(4)), GRID, family == "sparse"))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("family,encoding,second_order", [
    ("sparse", "features", "full"), ("sparse", "features", "truncated"), ("dense", "features", "full"),
    ("sparse", "splat", "full"), ("dense", "splat", "full"),
])
def test_matching_gradient_reaches_synthetic_coordinates(mnist, family, encoding, second_order):
    cfg = _cfg(family=family, encoding=encoding, second_order=second_order)
    enc = encoding_of(cfg)
    net = build_distill_net(settings(NetSettings, cfg), enc.in_channels(3), GRID, 10, seed=0)
    real = mnist.train.batch(torch.nonzero(mnist.train.labels == 3).flatten()[:16])
    syn = (torch.rand(1, 100, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.0, 27, 27])).requires_grad_(True)
    loss = gradient_match(net, enc(real, GRID, family == "sparse"), torch.full((16,), 3),
                          enc(PointBatch.from_padded(syn), GRID, family == "sparse"), torch.full((1,), 3), "sum_of_squares")
    loss.backward()
    grad = syn.grad[0]
    assert grad[:, 1:].abs().sum() > 0
    assert torch.isfinite(grad).all()


def test_truncated_second_order_is_smaller_than_full(mnist):
    """MinkowskiEngine-style truncation keeps only the torch-native part of the second-order path."""
    grads = {}
    for mode in ("full", "truncated"):
        cfg = _cfg(family="sparse", second_order=mode)
        enc = encoding_of(cfg)
        net = build_distill_net(settings(NetSettings, cfg), 3, GRID, 10, seed=0)
        real = mnist.train.batch(torch.nonzero(mnist.train.labels == 1).flatten()[:16])
        syn = mnist.train.resampled(torch.tensor([3]), 120, torch.Generator().manual_seed(0)).requires_grad_(True)
        loss = gradient_match(net, enc(real, GRID, True), torch.full((16,), 1),
                              enc(PointBatch.from_padded(syn), GRID, True), torch.full((1,), 1), "sum_of_squares")
        loss.backward()
        grads[mode] = syn.grad.clone()
    assert not torch.allclose(grads["full"], grads["truncated"])


def test_networks_are_reproducible_from_their_seed():
    cfg = _cfg(family="dense")
    a, b, c = (build_distill_net(settings(NetSettings, cfg), 3, GRID, 10, seed=s) for s in (5, 5, 6))
    pa, pb, pc = (torch.cat([p.flatten() for p in n.parameters()]) for n in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_kaiming_fan_out_scale():
    cfg = make_config(dict(family="sparse", width=64, depth=1))
    net = build_distill_net(settings(NetSettings, cfg), 3, GRID, 10, seed=0)
    kernel = net.kernels[0]  # (27, 3, 64): fan_out = 27 * 64
    assert abs(kernel.std().item() - (2 / (27 * 64)) ** 0.5) < 0.1 * (2 / (27 * 64)) ** 0.5


def test_convnet_pads_28_to_32():
    net = ConvNet(1, 10, 28, width=16, depth=3)
    assert net.classifier.in_features == 16 * 4 * 4
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
