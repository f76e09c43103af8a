"""The learnable synthetic set: a number of clouds per class (ipc x cloud_split) of P points each, and how it starts.

Initialisation strategies:
- ``uniform``: uniform over the grid (the paper) or the unit ball's bounding cube, then projected;
- ``gaussian``: a gaussian blob around the domain's centre (std one sixth of each axis);
- ``real``: a random real cloud of the class, resampled to P points;
- ``real_noise``: the same plus gaussian jitter of ``init_noise`` cells;
- ``herding``: real clouds chosen greedily so that their mean occupancy tracks the class mean
  (Welling's herding; with one cloud per class, the cloud nearest the class mean);
- ``kcenter``: real clouds chosen greedily to cover the class (k-center greedy: the cloud
  nearest the class mean, then each time the cloud farthest from every chosen one);
- ``full``: every training cloud, resampled to P points (the full-data ceiling, evaluated
  without distillation; ``clouds_per_class`` is ignored);
- ``class_mean_topk``: the P most occupied cells of the class mean (with several clouds per
  class, of the means of that many k-means clusters of the class).

``sampling`` says how a real shape is thinned to a synthetic cloud's P points: a random subset,
or ``fps``, farthest-point sampling from a random first point, which covers the surface evenly
(what matters when a 1,024-point shape is stored in 64 points).

The feature space of herding and k-center is the ``features`` given (e.g. a trained network's
embedding of every real cloud); without them, and always for class-mean top-k, it is occupancy:
of the image grid (MNIST's pixels), or of a ``feature_res``-cubed voxel grid over the unit ball
for 3D shapes.
Points are kept in their domain (``Domain.project``) at the start of every iteration, as the
paper does.
"""

from __future__ import annotations

import torch

from ..core.types import Clouds, Domain, voxelize
from ..nets.pointops import farthest_points

INITS = ("uniform", "gaussian", "real", "real_noise", "herding", "kcenter", "class_mean_topk", "full")
SAMPLINGS = ("random", "fps")


def _occupancy(clouds: Clouds, indices: torch.Tensor, grid: tuple[tuple[int, ...], float, float],
               cap: int | None) -> torch.Tensor:
    """Flattened occupancy grids (len(indices), cells) of the given clouds, in chunks; ``grid`` is
    ``(grid_shape, scale, offset)`` as ``Domain.voxels`` gives it."""
    shape, scale, offset = grid
    rows = []
    for chunk in indices.split(4096):
        rows.append(voxelize(clouds.batch(chunk, cap).affine(scale, offset), shape).flatten(1))
    return torch.cat(rows)


def kcenter(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k rows by k-center greedy: the row nearest the mean, then each time the row
    farthest from all chosen ones."""
    first = int(((features - features.mean(0)) ** 2).sum(1).argmin())
    chosen = [first]
    nearest = torch.cdist(features, features[first : first + 1]).flatten()
    for _ in range(1, k):
        j = int(nearest.argmax())
        chosen.append(j)
        nearest = torch.minimum(nearest, torch.cdist(features, features[j : j + 1]).flatten())
    return torch.tensor(chosen, dtype=torch.long)


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k rows chosen greedily so the running mean of the chosen tracks the overall mean."""
    mean = features.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mean)
    available = torch.ones(features.shape[0], dtype=torch.bool)
    for i in range(1, k + 1):
        dist = ((mean - (total + features) / i) ** 2).sum(1)
        dist[~available] = float("inf")
        j = int(dist.argmin())
        chosen.append(j)
        available[j] = False
        total += features[j]
    return torch.tensor(chosen, dtype=torch.long)


def _thinned(clouds: Clouds, indices: torch.Tensor, points: int, generator: torch.Generator, sampling: str) -> torch.Tensor:
    """The clouds at ``indices`` as (B, points, D): a random subset, or farthest points from a
    random start (each copy of a repeated pick starts elsewhere, so covers the shape differently)."""
    if sampling == "random":
        return clouds.resampled(indices, points, generator)
    whole = clouds.resampled(indices, max(points, int(clouds.counts[indices].max())), generator)
    return farthest_points(whole, points)


def _thinned_all(clouds: Clouds, points: int, generator: torch.Generator, sampling: str) -> torch.Tensor:
    """Every cloud as (N, points, D), thinned in chunks (the draws do not depend on the chunking)."""
    return torch.cat([_thinned(clouds, torch.arange(i, min(i + 4096, len(clouds))), points, generator, sampling)
                      for i in range(0, len(clouds), 4096)])


def thinned_clouds(clouds: Clouds, points: int, generator: torch.Generator, sampling: str = "fps") -> Clouds:
    """Every cloud thinned to ``points`` points as an init would thin it: the real clouds that
    synthetic clouds made by ``sampling`` are to be compared with."""
    flat = _thinned_all(clouds, points, generator, sampling).reshape(-1, clouds.points.shape[1])
    return Clouds(flat.to(clouds.points.dtype), torch.arange(len(clouds) + 1, dtype=torch.long) * points,
                  clouds.labels.clone())


def _kmeans_means(features: torch.Tensor, k: int, steps: int = 20) -> torch.Tensor:
    """k cluster means of ``features``, started from herding picks (deterministic)."""
    centres = features[herding(features, k)].clone()
    for _ in range(steps):
        assign = torch.cdist(features, centres).argmin(1)
        for j in range(k):
            members = features[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres


def _top_cells(mean_grid: torch.Tensor, grid_shape: tuple[int, ...], points: int, generator: torch.Generator) -> torch.Tensor:
    """The ``points`` most occupied cells of a flattened mean grid as (points, D) coordinates.

    Ties are broken by a tiny random perturbation; if fewer cells are occupied than points, the
    most occupied cells repeat.
    """
    score = mean_grid + 1e-6 * torch.rand(mean_grid.shape, generator=generator)
    order = score.argsort(descending=True)
    occupied = max(1, int((mean_grid > 0).sum()))
    picks = order[torch.arange(points) % min(occupied, len(order))]
    return torch.stack(torch.unravel_index(picks, grid_shape), 1).float()


# The inits whose clouds are real shapes, picked and thinned: a set of theirs is stored as the
# picks (``init_synthetic``'s third value) and rebuilt from them.
SELECTIONS = ("real", "herding", "kcenter")


def init_synthetic(
    kind: str,
    clouds: Clouds,
    num_classes: int,
    domain: Domain,
    clouds_per_class: int,
    points: int,
    generator: torch.Generator,
    noise: float = 1.0,
    cap: int | None = None,
    feature_res: int = 16,
    sampling: str = "random",
    features: torch.Tensor | None = None,
    picks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Initial synthetic points (num_classes * clouds_per_class, points, D), labels, and for a
    selection (``SELECTIONS``) the index in ``clouds`` of the shape each cloud was thinned from
    (None for other inits), grouped by class: ``clouds_per_class`` is the clouds per class as
    stored (the config's ipc x cloud_split).

    ``noise`` is ``real_noise``'s jitter (cells, or units of the ball); ``feature_res`` the
    voxel grid of the occupancy features on the unit ball; ``sampling`` (random | fps) how a
    real shape is thinned to ``points``; ``features`` (len(clouds), F), if given, the space
    herding and k-center choose in. Given ``picks`` (a stored selection), herding and k-center take them instead of choosing
    again, and ``real`` draws its picks as always and checks them: the thinning draws the same
    numbers from ``generator`` either way, so the set is rebuilt bit for bit.
    """
    if kind not in INITS:
        raise ValueError(f"unknown init {kind!r}; choose one of {INITS}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; choose one of {SAMPLINGS}")
    d = domain.dims
    low, high = domain.low, domain.high
    labels = torch.arange(num_classes).repeat_interleave(clouds_per_class)
    n = num_classes * clouds_per_class
    grid = domain.voxels(feature_res)
    if kind == "full":
        out = _thinned_all(clouds, points, generator, sampling)
        domain.project(out)
        return out, clouds.labels.clone(), None
    if kind == "uniform":
        out = low + torch.rand(n, points, d, generator=generator) * (high - low)
    elif kind == "gaussian":
        out = domain.centre + torch.randn(n, points, d, generator=generator) * (high - low) / 6
    else:
        per_class, chosen = [], []
        for c in range(num_classes):
            members = clouds.members(c)
            # A class with fewer clouds than clouds_per_class repeats its picks in order; each copy is
            # its own random subset of the shape's points (many small clouds per class can outnumber shapes).
            cycle = torch.arange(clouds_per_class) % len(members)
            if kind == "class_mean_topk":
                feats = _occupancy(clouds, members, grid, cap)
                means = feats.mean(0, keepdim=True) if clouds_per_class == 1 else _kmeans_means(feats, clouds_per_class)
                cells = torch.stack([_top_cells(m, grid[0], points, generator) for m in means])
                per_class.append((cells - grid[2]) / grid[1])
                continue
            given = None if picks is None else picks[c * clouds_per_class : (c + 1) * clouds_per_class]
            if kind in ("real", "real_noise"):
                pick = members[torch.randperm(len(members), generator=generator)[:clouds_per_class][cycle]]
                if given is not None and not torch.equal(pick, given):
                    raise ValueError(f"class {c}: the stored picks are not the shapes this seed draws")
            elif given is not None:  # herding, kcenter
                pick = given
            else:
                feats = _occupancy(clouds, members, grid, cap) if features is None else features[members]
                choose = herding if kind == "herding" else kcenter
                pick = members[choose(feats, min(clouds_per_class, len(members)))[cycle]]
            chosen.append(pick)
            per_class.append(_thinned(clouds, pick, points, generator, sampling))
        out = torch.cat(per_class)
        if kind == "real_noise":
            out = out + noise * torch.randn(out.shape, generator=generator)
    domain.project(out)
    return out.contiguous(), labels, torch.cat(chosen) if kind in SELECTIONS else None


def snap(points: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    """Re-place each cloud's points on distinct cells: its k most occupied ones.

    ``occupancy`` (N, cells) is each cloud's soft occupancy on the flattened grid (a splat), and
    k is its total mass rounded, so the binary render keeps the mass where it is largest
    instead of losing every half-covered cell to rounding. Points beyond k repeat the top cells
    (they render nothing new and are free to move again).
    """
    n, p, _ = points.shape
    grid_shape = occupancy.shape[1:]
    flat = occupancy.reshape(n, -1)
    k = flat.sum(1).round().long().clamp(1, p)
    order = flat.argsort(1, descending=True)
    slot = torch.arange(p, device=points.device)[None, :] % k[:, None]
    cells = order.gather(1, slot)
    return torch.stack(torch.unravel_index(cells, grid_shape), -1).to(points.dtype)
