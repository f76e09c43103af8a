"""Initialisation strategies and bounds projection of the synthetic set."""

from __future__ import annotations

import pytest
import torch

from tune_distill.core.types import PointBatch, voxelize
from tune_distill.core.types import Domain
from tune_distill.methods.synthetic import INITS, herding, init_synthetic

MNIST = Domain(3, (1, 28, 28))


@pytest.fixture(scope="module")
def small(mnist):
    """A 2,000-digit slice of the training set keeps the strategies quick to test."""
    return mnist.train.subset(torch.arange(2000))


@pytest.mark.parametrize("kind", [k for k in INITS if k != "full"])
def test_every_init_has_the_right_shape_and_bounds(small, kind):
    g = torch.Generator().manual_seed(0)
    pts, labels, _ = init_synthetic(kind, small, 10, MNIST, clouds_per_class=2, points=80, generator=g)
    assert pts.shape == (20, 80, 3) and labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert (pts[..., 0] == 0).all()  # pinned depth
    assert pts[..., 1:].min() >= 0 and pts[..., 1:].max() <= 27
    g2 = torch.Generator().manual_seed(0)
    again, _, _ = init_synthetic(kind, small, 10, MNIST, clouds_per_class=2, points=80, generator=g2)
    assert torch.equal(pts, again)  # same generator seed, same set


def test_real_init_points_come_from_one_real_cloud_of_the_class(small):
    pts, labels, _ = init_synthetic("real", small, 10, MNIST, clouds_per_class=1, points=300, generator=torch.Generator().manual_seed(1))
    occupancy = voxelize(small.batch(torch.arange(len(small))), (1, 28, 28)).flatten(1).bool()
    for c in (0, 7):
        mine = voxelize(PointBatch.from_padded(pts[c : c + 1]), (1, 28, 28)).flatten(1).bool()[0]
        same_class = torch.nonzero(small.labels == c).flatten()
        # Some real cloud of class c has exactly these pixels (300 >= its size, so all are kept).
        assert any(torch.equal(occupancy[i], mine) for i in same_class)


def test_herding_with_one_pick_is_the_nearest_to_the_mean():
    feats = torch.tensor([[0.0, 0.0], [10.0, 10.0], [4.0, 6.0], [6.0, 4.0]])
    assert herding(feats, 1).tolist() == [2] or herding(feats, 1).tolist() == [3]
    picks = herding(feats, 4)
    assert sorted(picks.tolist()) == [0, 1, 2, 3]  # without repetition


def test_class_mean_topk_takes_the_most_occupied_cells(small):
    pts, _, _ = init_synthetic("class_mean_topk", small, 10, MNIST, clouds_per_class=1, points=50, generator=torch.Generator().manual_seed(0))
    members = torch.nonzero(small.labels == 3).flatten()
    mean = voxelize(small.batch(members), (1, 28, 28)).mean(0).flatten()
    cells = (pts[3, :, 1] * 28 + pts[3, :, 2]).long()
    assert len(set(cells.tolist())) == 50
    assert mean[cells].min() >= mean.sort(descending=True).values[49] - 1e-6


def test_project_pins_and_clamps():
    pts = torch.tensor([[[3.0, -2.0, 40.0], [0.5, 12.5, 27.4]]])
    MNIST.project(pts)
    assert pts.tolist() == [[[0.0, 0.0, 27.0], [0.0, 12.5, 27.0]]]


def test_snap_keeps_the_heaviest_cells_as_distinct_points():
    from tune_distill.core.types import PointBatch
    from tune_distill.methods.encoding import Encoding
    from tune_distill.methods.synthetic import snap

    # Two points half-way between cells: the splat has 4 half cells; rounding would render 2 pixels.
    pts = torch.tensor([[[0.0, 5.5, 5.0], [0.0, 9.0, 9.5], [0.0, 9.0, 9.5]]])
    occupancy = Encoding("splat")(PointBatch.from_padded(pts), (1, 28, 28), sparse=False)[:, 0]
    snapped = snap(pts, occupancy)
    assert snapped.shape == pts.shape and torch.equal(snapped, snapped.round())
    cells = {tuple(p) for p in snapped[0, :, 1:].int().tolist()}
    # Mass 0.5 + 0.5 (first point) + 1 + 1 (the doubled point) = 3 -> k = 3: both full cells and
    # one of the half cells; every point sits on a cell and the render has 3 pixels, not 2.
    assert len(cells) == 3 and {(9, 9), (9, 10)} < cells and cells & {(5, 5), (6, 5)}


def test_full_is_every_training_cloud_with_its_label(small):
    pts, labels, _ = init_synthetic("full", small, 10, MNIST, clouds_per_class=2, points=80, generator=torch.Generator().manual_seed(0))
    assert pts.shape == (2000, 80, 3) and torch.equal(labels, small.labels)
    first = small.batch(torch.arange(1)).points
    assert {tuple(p) for p in pts[0].tolist()} <= {tuple(p) for p in first.tolist()}  # cloud 0's own points
