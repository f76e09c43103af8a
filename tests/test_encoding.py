"""Encodings: coordinates as features, and the differentiable splat."""

from __future__ import annotations

import torch

from tune_distill.core.types import PointBatch
from tune_distill.methods.encoding import Encoding
from tune_distill.sparse import SparseTensor

GRID = (1, 28, 28)


def _one_point(h: float, w: float) -> PointBatch:
    return PointBatch(torch.tensor([[0.0, h, w]], requires_grad=True), torch.zeros(1, dtype=torch.long), 1)


def test_features_average_points_sharing_a_cell():
    pts = torch.tensor([[0.0, 3.2, 4.1], [0.0, 2.8, 3.9], [0.0, 10.0, 10.0]])
    x = Encoding("features")(PointBatch(pts, torch.zeros(3, dtype=torch.long), 1), GRID, sparse=True)
    assert isinstance(x, SparseTensor)
    assert x.coords.tolist() == [[0, 0, 3, 4], [0, 0, 10, 10]]
    assert torch.allclose(x.feats[0], torch.tensor([0.0, 3.0, 4.0]))


def test_linear_splat_mass_and_position():
    for sparse in (False, True):
        x = Encoding("splat")(_one_point(5.25, 7.5), GRID, sparse=sparse)
        grid = x[0, 0, 0] if not sparse else None
        if sparse:
            from tune_distill.sparse import to_dense

            grid = to_dense(x)[0, 0, 0]
        assert torch.isclose(grid.sum(), torch.tensor(1.0))
        assert torch.isclose(grid[5, 7], torch.tensor(0.75 * 0.5))
        assert torch.isclose(grid[6, 8], torch.tensor(0.25 * 0.5))
        # The splat's centre of mass is the point.
        hh, ww = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        assert torch.isclose((grid * hh).sum(), torch.tensor(5.25)) and torch.isclose((grid * ww).sum(), torch.tensor(7.5))


def test_splat_gradients_reach_the_coordinates():
    for kernel in ("linear", "gaussian"):
        for combine in ("clamp", "soft_or"):
            batch = _one_point(5.3, 7.6)
            x = Encoding("splat", kernel=kernel, combine=combine)(batch, GRID, sparse=False)
            weights = torch.arange(28.0 * 28).reshape(28, 28)  # any non-constant readout
            (x[0, 0, 0] * weights).sum().backward()
            g = batch.points.grad[0]
            assert g[0] == 0  # the pinned depth axis gets nothing
            assert g[1].abs() > 0 and g[2].abs() > 0, (kernel, combine, g)


def test_splat_moves_continuously():
    enc = Encoding("splat", kernel="gaussian", sigma=0.7)
    base = enc(_one_point(9.0, 9.0), GRID, sparse=False)
    prev = None
    for step in (1e-1, 1e-2, 1e-3):
        moved = enc(_one_point(9.0 + step, 9.0 - step), GRID, sparse=False)
        change = (moved - base).abs().sum().item()
        assert change < 10 * step
        if prev is not None:
            assert change < prev
        prev = change
    # Crossing a cell boundary is continuous too for the linear kernel.
    lin = Encoding("splat")
    a, b = lin(_one_point(4.999, 4.0), GRID, sparse=False), lin(_one_point(5.001, 4.0), GRID, sparse=False)
    assert (a - b).abs().sum().item() < 0.01


def test_splat_on_integer_points_is_the_binary_image():
    pts = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 3.0], [0.0, 3.0, 3.0]])
    x = Encoding("splat")(PointBatch(pts, torch.zeros(3, dtype=torch.long), 1), GRID, sparse=False)
    assert x.sum().item() == 2.0 and x[0, 0, 0, 1, 2] == 1 and x[0, 0, 0, 3, 3] == 1  # clamped at 1


def test_straight_through_forwards_the_rendered_image_and_backwards_the_splat():
    from tune_distill.core.types import voxelize
    from tune_distill.sparse import to_dense

    g = torch.Generator().manual_seed(0)
    pts = torch.rand(2, 40, 3, generator=g) * torch.tensor([0.0, 27.0, 27.0])
    for sparse in (False, True):
        leaf = pts.clone().requires_grad_(True)
        batch = PointBatch.from_padded(leaf)
        x = Encoding("splat", straight_through=True)(batch, GRID, sparse=sparse)
        dense = to_dense(x) if sparse else x
        assert torch.equal(dense[:, 0].detach(), voxelize(batch, GRID))  # exactly the evaluator's render
        (dense[:, 0] * torch.arange(28.0 * 28).reshape(1, 1, 28, 28)).sum().backward()
        assert leaf.grad[..., 1:].abs().sum() > 0
