"""What the rest of the house knows about a dataset, declared once beside its loader.

A ``DatasetSpec`` says how to load the dataset, whether its clouds are binary images on a grid
or point clouds, which evaluator scores sets of it, which config keys are loader options (they
identify the data, e.g. MNIST's ``threshold``) and which named presets it brings. Everything
that used to ask "is this MNIST?" asks the spec instead, so a new dataset is one module that
defines a loader and a spec, plus one ``register(SPEC)`` line in ``data/__init__.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from ..core.errors import UserError
from ..core.types import Dataset


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset.

    ``kind``: ``image`` clouds are occupied pixels of a grid (rendered, drawn and exported as
    images; grid-only settings such as snapping apply), ``points`` clouds are float xyz.
    ``evaluator``: the evaluator family that scores its sets (``image``: render -> ConvNets,
    ``point``: PointNets). ``options``: config keys passed to ``load`` as keyword arguments.
    ``presets``: named config values (``--preset NAME``). ``protocol``: the preset a bare set
    (no config beside it) is scored with, None for the config's defaults. ``whole_cloud``: the
    points that keep every real cloud whole, which a baseline uses (None: the config's).
    """

    name: str
    load: Callable[..., Dataset]
    kind: Literal["image", "points"]
    evaluator: Literal["image", "point"]
    options: tuple[str, ...] = ()
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    protocol: str | None = None
    whole_cloud: int | None = None


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry under its name (a name or preset already taken is an error)."""
    taken = {p for s in DATASETS.values() for p in s.presets} & set(spec.presets)
    if spec.name in DATASETS or taken:
        raise ValueError(f"dataset {spec.name!r} or its presets {sorted(taken)} are registered already")
    DATASETS[spec.name] = spec
    return spec


def dataset_spec(name: str) -> DatasetSpec:
    """The registered spec of ``name``, or a one-line ``UserError`` listing the datasets."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, **options) -> Dataset:
    """Load a registered dataset; ``options`` are the loader's own (e.g. MNIST's ``threshold``)."""
    return dataset_spec(name).load(data_dir, **options)
