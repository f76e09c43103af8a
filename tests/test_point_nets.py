"""Point neighbourhood ops against brute-force references, and the DGCNN and PointNet++ evaluators
learning real ModelNet10 shapes (tiny widths and few points: seconds)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tune_distill.evaluate import EvalSettings, build_evaluator
from tune_distill.evaluate.point import train_batched
from tune_distill.methods.synthetic import init_synthetic, thinned_clouds
from tune_distill.nets.dgcnn import neighbours
from tune_distill.nets.pointops import ball_query, farthest_point_indices, knn


def _clouds(device: str, b: int = 3, n: int = 200, seed: int = 0) -> torch.Tensor:
    return (torch.rand(b, n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1).to(device)


def _d2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)


def test_farthest_point_sampling_matches_a_brute_force_reference(device):
    clouds = _clouds(device)
    got = farthest_point_indices(clouds, 40).cpu().numpy()
    for cloud, indices in zip(clouds.cpu().numpy(), got):
        chosen = [0]
        for _ in range(39):
            chosen.append(int(_d2(cloud, cloud[chosen]).min(1).argmax()))
        assert indices.tolist() == chosen


def test_knn_matches_a_brute_force_reference(device):
    points, queries = _clouds(device), _clouds(device, n=50, seed=1)
    got = knn(queries, points, 20).cpu().numpy()
    for q, p, idx in zip(queries.cpu().numpy(), points.cpu().numpy(), got):
        d = _d2(q, p)
        expected = np.argsort(d, axis=1, kind="stable")[:, :20]
        # The same neighbours, nearest first (up to rounding between equally distant points).
        assert np.allclose(np.take_along_axis(d, idx, 1), np.take_along_axis(d, expected, 1), atol=1e-6)
        assert np.mean([set(a) == set(b) for a, b in zip(idx.tolist(), expected.tolist())]) > 0.99
    self_first = knn(points, points, 1)[..., 0].cpu()
    assert (self_first == torch.arange(points.shape[1])).all()  # a point is its own nearest neighbour


def test_ball_query_matches_a_brute_force_reference(device):
    points = _clouds(device)
    centres = torch.cat([points[:, :30], torch.full_like(points[:, :1], 5.0)], 1)  # the last: no point in its ball
    got = ball_query(centres, points, 0.3, 16).cpu().numpy()
    for c, p, idx in zip(centres.cpu().numpy(), points.cpu().numpy(), got):
        d = _d2(c, p)
        for row, found in zip(d, idx.tolist()):
            inside = [j for j in range(len(row)) if row[j] <= 0.09][:16]
            inside = inside or [int(row.argmin())]
            assert found == inside + [inside[0]] * (16 - len(inside))
    assert ball_query(points[:, :5], points[:, :5], 0.1, 8).shape == (3, 5, 8)  # fewer points than k


@pytest.fixture(scope="module")
def shapes(modelnet10):
    """10 real training shapes per class at 64 and 128 farthest points, and 100 test shapes, whole
    (1,024 points) and thinned as the training ones."""
    data = modelnet10
    test = data.test.subset(torch.randperm(len(data.test), generator=torch.Generator().manual_seed(0))[:100])
    out = {}
    for p in (64, 128):
        points, labels, _ = init_synthetic("real", data.train, data.num_classes, data.domain, 10, p,
                                        torch.Generator().manual_seed(0), sampling="fps")
        out[p] = points, labels, thinned_clouds(test, p, torch.Generator().manual_seed(1)), test
    return out, data


# Tiny and short, yet well above chance (1 / 10) on 100 test shapes: DGCNN trained on 64-point
# clouds and tested on whole 1,024-point shapes (its neighbourhoods scale with the cloud: with
# k = 20 at 64 points this scores chance), PointNet++ at the training clouds' density.
LEARNS = {"dgcnn": (64, True, EvalSettings(models=1, epochs=10, width=8, lr=0.003, batch=16, augment=False,
                                           net="dgcnn")),
          "pointnet2": (128, False, EvalSettings(models=1, epochs=15, width=16, lr=0.003, batch=16, augment=False,
                                                 net="pointnet2"))}


def test_dgcnn_neighbours_scale_with_a_cloud_below_1024_points():
    assert [neighbours(20, p) for p in (16, 64, 128, 512, 1000, 1024, 2048)] == [2, 2, 2, 10, 20, 20, 20]
    assert neighbours(20, 1) == 1  # never more than the cloud holds


@pytest.mark.parametrize("net", ["dgcnn", "pointnet2"])
def test_dgcnn_and_pointnet2_learn_real_shapes(shapes, net):
    by_points, data = shapes
    points_per_cloud, whole, settings = LEARNS[net]
    points, labels, thinned, test = by_points[points_per_cloud]
    test = test if whole else thinned
    evaluator = build_evaluator("point", data.domain, data.num_classes, {"test": test}, settings)
    [acc] = evaluator(points, labels, seed=0)["test"]
    assert acc >= 0.25, acc


@pytest.mark.parametrize("net", ["dgcnn", "pointnet2"])
def test_dgcnn_and_pointnet2_train_as_a_vmapped_stack(shapes, net):
    """The GPU's path (K models vmapped through the neighbourhood ops), run on the CPU: every
    parameter of every model trains, and the models stay distinct. (Their dropout masks come in
    another order than one by one, so they are not the one-by-one models bit for bit.)"""
    by_points, data = shapes
    points, labels, _, _ = by_points[64]
    settings = EvalSettings(models=2, epochs=1, width=4, lr=0.003, batch=32, augment=True, net=net)
    stack = train_batched(points, labels, data.num_classes, settings, [5, 6], vectorise=True)
    fresh = train_batched(points, labels, data.num_classes, replace(settings, epochs=0), [5, 6], vectorise=True)
    for name, p in stack.params.items():
        assert torch.isfinite(p).all() and not torch.equal(p, fresh.params[name]), name
        assert not torch.equal(p[0], p[1]), name
