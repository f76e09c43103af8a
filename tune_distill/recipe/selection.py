"""A selection of real shapes, stored as what it is: which training shapes, thinned how.

A set whose clouds are real training shapes, picked (random, herding, k-center) and thinned (a
random subset or farthest points) and never moved, is stored as ``selection.json``: the dataset
and its options, the validation hold-out the picks were made beside, the index of each picked
shape in the dataset's training split, and the thinning recipe and seed. ``rebuild`` makes the
clouds again from those, checked against the SHA-256 of the clouds recorded when they were
first made, so a shipped selection costs a few kilobytes instead of copies of shapes that the
dataset already holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
import numpy as np
import torch

from ..core.errors import UserError
from ..data import Dataset
from ..methods.synthetic import SELECTIONS, SAMPLINGS, init_synthetic
from .run import RunResult, dataset_options, init_generator, split_train, train_indices

SELECTION_FILE = "selection.json"


@dataclass(frozen=True)
class Selection:
    """Real shapes picked and thinned: everything needed to make the clouds again."""

    dataset: str
    options: dict  # the loader's options that identify the data (MNIST's threshold)
    val_size: int  # the validation hold-out the shapes were picked beside (never picked from)
    init: str  # how the shapes were picked: real (at random), herding, kcenter
    sampling: str  # how each was thinned: random (a random subset) or fps (farthest points)
    clouds_per_class: int
    points: int  # per cloud
    seed: int  # the run's seed: the thinning draws from its "init" stream
    indices: tuple[int, ...]  # per cloud, grouped by class: its shape's index in the training split
    sha256: str  # of the clouds as made (float32 points, then int64 labels)


def digest(points: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of a set's float32 points and int64 labels: what a rebuilt selection must match."""
    h = hashlib.sha256(np.ascontiguousarray(points, np.float32).tobytes())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return h.hexdigest()


def selection_of(result: RunResult) -> Selection | None:
    """The selection a run evaluated, or None when its points were learned (or not real shapes)."""
    cfg = result.config
    if result.picks is None:
        return None
    return Selection(cfg.dataset, dataset_options(cfg), cfg.val_size, cfg.init, cfg.init_sampling,
                     cfg.clouds_per_class, cfg.cloud_points, cfg.seed, tuple(int(i) for i in result.picks),
                     digest(result.points, result.labels))


def write_selection(selection: Selection, folder: Path) -> Path:
    path = folder / SELECTION_FILE
    path.write_text(json.dumps({**asdict(selection), "indices": list(selection.indices)}, indent=1) + "\n")
    return path


def read_selection(path: str | Path) -> Selection:
    """A ``selection.json`` (or the folder holding one); a malformed file is a one-line ``UserError``."""
    p = Path(path)
    p = p / SELECTION_FILE if p.is_dir() else p
    try:
        raw = json.loads(p.read_text())
        sel = Selection(**{**raw, "indices": tuple(raw["indices"])})
    except FileNotFoundError:
        raise UserError(f"no {SELECTION_FILE} in {p.parent}") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{p} is not a readable selection ({exc.__class__.__name__}: {exc}); "
                        "restore it from git (git checkout -- PATH)") from None
    if sel.init not in SELECTIONS or sel.sampling not in SAMPLINGS or not all(isinstance(i, int) for i in sel.indices):
        raise UserError(f"{p}: init must be one of {SELECTIONS}, sampling one of {SAMPLINGS}, indices whole numbers")
    return sel


def rebuild(selection: Selection, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The selection's clouds ``(points (N, P, D) float32, labels (N,) int64)``, made again from
    ``data`` exactly as the run that picked them made them; a ``UserError`` when they differ from
    the recorded ones (other data files, or a CPU that rounds the thinning differently)."""
    if data.name != selection.dataset or data.options != selection.options:
        raise UserError(f"this selection picks from {selection.dataset} {selection.options}, "
                        f"not {data.name} {data.options}; load that dataset")
    train, _ = split_train(data, selection.val_size)
    position = torch.full((len(data.train),), -1, dtype=torch.long)
    position[train_indices(data, selection.val_size)] = torch.arange(len(train))
    indices = torch.tensor(selection.indices, dtype=torch.long)
    if len(indices) != selection.clouds_per_class * data.num_classes or bool(
            ((indices < 0) | (indices >= len(data.train))).any()) or bool((position[indices] < 0).any()):
        raise UserError(f"the selection's {len(indices)} indices are not {selection.clouds_per_class} training "
                        f"shapes per class of {data.name} outside its validation hold-out")
    try:
        points, labels, _ = init_synthetic(selection.init, train, data.num_classes, data.domain,
                                           selection.clouds_per_class, selection.points, init_generator(selection.seed),
                                           sampling=selection.sampling, picks=position[indices])
    except ValueError as exc:  # real: the seed draws other shapes than the ones stored
        raise UserError(f"the selection does not match its seed ({exc})") from None
    points_np, labels_np = points.numpy().astype(np.float32), labels.numpy().astype(np.int64)
    if digest(points_np, labels_np) != selection.sha256:
        raise UserError(f"the rebuilt {selection.dataset} selection differs from the clouds it recorded "
                        "(sha256): check the data files against SHA256SUMS")
    return points_np, labels_np
