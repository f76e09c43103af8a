"""Datasets by name: each registered ``DatasetSpec`` (see ``spec.py``) loads a ``Dataset`` of ragged
point clouds in its ``Domain``. A new dataset is a module with a loader and a spec, and one
``register`` line below."""

from __future__ import annotations

import torch

from ..core.errors import UserError
from ..core.types import Clouds, Dataset, Domain, PointBatch, voxelize
from . import mnist, modelnet
from .spec import DATASETS, DatasetSpec, dataset_spec, load_dataset, register

register(mnist.SPEC)
register(modelnet.MODELNET10)
register(modelnet.MODELNET40)


def hold_out(clouds: Clouds, size: int, num_classes: int, seed: int, stratified: bool) -> tuple[Clouds, Clouds | None]:
    """(clouds kept, ``size`` held-out clouds) by a fixed permutation of ``seed``.

    Stratified, each class gives its share of ``size`` (largest remainders first) and keeps at
    least one cloud; a size that would empty a class is a one-line ``UserError``. Otherwise the
    hold-out is a plain random subset.
    """
    if size == 0:
        return clouds, None
    kept = kept_indices(clouds, size, num_classes, seed, stratified)
    held = torch.ones(len(clouds), dtype=torch.bool)
    held[kept] = False
    return clouds.subset(kept), clouds.subset(torch.nonzero(held).flatten())


def kept_indices(clouds: Clouds, size: int, num_classes: int, seed: int, stratified: bool) -> torch.Tensor:
    """The indices, in order, of the clouds ``hold_out`` keeps: where a kept cloud came from."""
    if size == 0:
        return torch.arange(len(clouds))
    if size >= len(clouds):
        raise UserError(f"val_size={size} holds out every one of the {len(clouds)} training clouds; choose fewer")
    generator = torch.Generator().manual_seed(seed)
    if not stratified:
        held = torch.randperm(len(clouds), generator=generator)[:size]
    else:
        counts = torch.bincount(clouds.labels, minlength=num_classes).tolist()
        if size > len(clouds) - num_classes or min(counts) < 2:
            raise UserError(f"val_size={size} leaves a class without training clouds (smallest class: "
                            f"{min(counts)} clouds); choose at most {len(clouds) - num_classes} and fewer than "
                            f"each class has")
        exact = [size * n / len(clouds) for n in counts]
        take = [int(x) for x in exact]
        for c in sorted(range(num_classes), key=lambda c: exact[c] - take[c], reverse=True)[: size - sum(take)]:
            take[c] += 1
        over = [c for c in range(num_classes) if take[c] >= counts[c]]
        if over:
            raise UserError(f"val_size={size} would take every cloud of class {over[0]} ({counts[over[0]]} clouds); "
                            f"choose a smaller val_size")
        held = torch.cat([clouds.members(c)[torch.randperm(int(counts[c]), generator=generator)[: take[c]]]
                          for c in range(num_classes)])
    keep = torch.ones(len(clouds), dtype=torch.bool)
    keep[held] = False
    return torch.nonzero(keep).flatten()


__all__ = ["Clouds", "DATASETS", "Dataset", "DatasetSpec", "Domain", "PointBatch", "dataset_spec", "hold_out",
           "kept_indices", "load_dataset", "register", "voxelize"]
