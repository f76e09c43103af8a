"""Datasets by name: each loader returns a ``Dataset`` of ragged point clouds on a grid."""

from __future__ import annotations

import os
from typing import Callable

from ..errors import UserError
from .base import Clouds, Dataset, PointBatch, voxelize
from .mnist import load_mnist

LOADERS: dict[str, Callable[..., Dataset]] = {"mnist": load_mnist}


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, **options) -> Dataset:
    """Load a registered dataset; ``options`` are the loader's own (e.g. ``threshold``)."""
    if name not in LOADERS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](data_dir, **options)


__all__ = ["Clouds", "Dataset", "PointBatch", "load_dataset", "voxelize", "LOADERS"]
