"""Datasets by name: each loader returns a ``Dataset`` of ragged point clouds in its ``Domain``."""

from __future__ import annotations

import os
from typing import Callable

import torch

from ..core.errors import UserError
from ..core.types import Clouds, Dataset, Domain, PointBatch, voxelize
from .mnist import load_mnist
from .modelnet import load_modelnet10, load_modelnet40

LOADERS: dict[str, Callable[..., Dataset]] = {
    "mnist": load_mnist, "modelnet10": load_modelnet10, "modelnet40": load_modelnet40,
}
# Datasets whose clouds are binary images on a grid: rendered, drawn and evaluated as images.
IMAGE_DATASETS = ("mnist",)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, **options) -> Dataset:
    """Load a registered dataset; ``options`` are the loader's own (e.g. MNIST's ``threshold``)."""
    if name not in LOADERS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](data_dir, **options)


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


__all__ = ["Clouds", "Dataset", "Domain", "IMAGE_DATASETS", "LOADERS", "PointBatch", "load_dataset",
           "hold_out", "kept_indices", "voxelize"]
